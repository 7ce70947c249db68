"""Every call the operator makes to the Kubernetes API, in one place: plain dicts over REST.

The synchronous `kubernetes` client runs in thread pools so that a replica's pods are created
concurrently, in lanes: pod creates and deletes, writes of the InferenceDeployments (status,
the gang annotation), and everything else (Services, ConfigMaps, Events, reads). While
thousands of pods and hundreds of deployments start, a status write never waits behind their
creates, and within the deployments' lane the most urgent write goes first (a phase change
before a gang annotation before a progress count). Each call is counted in the operator's
metrics by verb, resource and status.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from paraserve.api import GROUP, PLURAL, VERSION
from paraserve.controller.api_writes import (
    LaneBusy,
    NamespaceTerminating,
    NameTaken,
    NotLeader,
    Urgency,
)
from paraserve.controller.running.priority_gate import PriorityGate

MERGE_PATCH: Final = "application/merge-patch+json"
COMPONENT: Final = "paraserve-operator"

#: (verb, resource, HTTP status) of each call, for the metrics.
CallObserver = Callable[[str, str, int], None]
#: (lane, seconds waiting for a thread, seconds in flight) of each call, for the metrics.
CallTimer = Callable[[str, float, float], None]


class ApiError(Exception):
    """A call the API server refused for a reason the reconcile cannot treat as success."""

    def __init__(self, verb: str, path: str, status: int, body: str) -> None:
        self.status = status
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            message = body
        #: The API server's message, for a person.
        self.message = str(message)[:300]
        super().__init__(f"{verb} {path}: HTTP {status}: {self.message}")


@dataclass(frozen=True)
class Result:
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def load_api_client(kubeconfig: str | None = None, pool_size: int = 32) -> Any:
    """An ApiClient from the in-cluster service account, else the kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig:
            raise config.ConfigException("a kubeconfig was given")
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def pods_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{quote(namespace)}/pods"
    return f"{base}/{quote(name)}" if name else base


def deployment_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}/{quote(name)}"


_COLLECTIONS: Final = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps"}
WEBHOOK_CONFIGURATIONS_PATH: Final = (
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
)


def _collection_path(obj: Mapping[str, Any]) -> str:
    namespace = obj["metadata"]["namespace"]
    return f"/api/v1/namespaces/{quote(namespace)}/{_COLLECTIONS[obj['kind']]}"


class Cluster:
    """Async facade over the API server for the objects the operator touches."""

    def __init__(
        self,
        api_client: Any,
        *,
        workers: int = 32,
        pod_workers: int | None = None,
        deployment_workers: int | None = None,
        observe: CallObserver | None = None,
        time_calls: CallTimer | None = None,
        timeout: float = 30.0,
        may_write: Callable[[], bool] | None = None,
        name: str = "k8s-api",
    ) -> None:
        self._api = api_client
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        # Without a lane of their own (None), a lane's calls share the one pool.
        self._lanes = {
            lane: ThreadPoolExecutor(max_workers=count, thread_name_prefix=f"{name}-{lane}")
            if count
            else self._executor
            for lane, count in (("pods", pod_workers), ("deployments", deployment_workers))
        }
        # The deployments' writes enter their threads by urgency, not in arrival order.
        self._deployment_turns = PriorityGate(deployment_workers or workers)
        self._observe = observe or (lambda verb, resource, status: None)
        self._time_calls = time_calls or (lambda lane, waited, took: None)
        self._timeout = timeout
        # Leadership: checked before a write is queued and again just before it is sent.
        self._may_write = may_write

    @property
    def configuration(self) -> Any:
        """The client configuration: where the API server is and how we authenticate."""
        return self._api.configuration

    def on_deployment_lane_room(self, callback: Callable[[int], None]) -> None:
        """`callback(free threads)` whenever a deployment write ends and none waits: the time
        for progress writes that were refused (LaneBusy)."""
        self._deployment_turns.on_room = callback

    def close(self) -> None:
        for executor in {self._executor, *self._lanes.values()}:
            executor.shutdown(wait=False, cancel_futures=True)

    async def request(
        self,
        verb: str,
        path: str,
        body: Any = None,
        *,
        resource: str,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
        lane: str | None = None,
        urgency: Urgency = Urgency.PHASE,
    ) -> Result:
        """`lane`: "pods" (a create or delete, one of many) or "deployments" (a write of one,
        sent in order of `urgency`; LaneBusy for a PROGRESS write that would have to wait)."""
        self._check_leader(verb, path)
        if lane == "deployments" and urgency >= Urgency.PROGRESS and self._deployment_turns.full:
            raise LaneBusy(f"{verb} {path}: not sent, more urgent writes wait")
        loop = asyncio.get_running_loop()
        executor = self._lanes[lane] if lane is not None else self._executor
        asked = time.monotonic()
        sent = [asked]

        def call() -> tuple[int, str]:
            sent[0] = time.monotonic()
            return self._call(verb, path, body, list(query), content_type)

        try:
            if lane == "deployments":
                async with self._deployment_turns.slot(urgency):
                    status, text = await loop.run_in_executor(executor, call)
            else:
                status, text = await loop.run_in_executor(executor, call)
        except Exception:
            self._observe(verb, resource, 0)
            raise
        finally:
            self._time_calls(lane or "other", sent[0] - asked, time.monotonic() - sent[0])
        self._observe(verb, resource, status)
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {"message": text}
        return Result(status=status, body=data if isinstance(data, dict) else {})

    def _check_leader(self, verb: str, path: str) -> None:
        if verb != "GET" and self._may_write is not None and not self._may_write():
            raise NotLeader(f"{verb} {path}: not sent, the leader lease is lost")

    def _call(
        self,
        verb: str,
        path: str,
        body: Any,
        query: list[tuple[str, str]],
        content_type: str,
    ) -> tuple[int, str]:
        # A call may wait in the pool while the lease runs out: look again before sending.
        self._check_leader(verb, path)
        method, url, headers, payload, _ = self._api.param_serialize(
            method=verb,
            resource_path=path,
            query_params=query,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=self._timeout
        )
        raw = response.read()
        return int(response.status), raw.decode("utf-8", "replace") if raw else ""

    # -- owned objects ---------------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> bool:
        """Create an object with a deterministic name: True if created, False if it existed
        already as ours (an earlier attempt got there first). NameTaken when it exists and
        another owns it; NamespaceTerminating when the namespace is being deleted."""
        kind = obj["kind"]
        path = _collection_path(obj)
        name = obj["metadata"]["name"]
        result = await self.request(
            "POST", path, obj, resource=_COLLECTIONS[kind], lane="pods" if kind == "Pod" else None
        )
        if result.ok:
            return True
        if result.status == 409:
            existing = await self.request(
                "GET", f"{path}/{quote(name)}", resource=_COLLECTIONS[kind]
            )
            if existing.status == 404:  # gone again meanwhile: the next reconcile creates it
                return False
            if not existing.ok:
                raise ApiError("get", f"{path}/{name}", existing.status, _t(existing))
            owner = _controller_uid(obj)
            if owner is not None and _controller_uid(existing.body) != owner:
                holder = _controller_uid(existing.body) or "nobody"
                raise NameTaken(
                    f"{kind} {name} exists and is owned by {holder}, not by this deployment"
                    f" ({owner}): delete or rename it"
                )
            return False
        if result.status == 403 and _namespace_terminating(result.body):
            raise NamespaceTerminating(f"create {path}/{name}: {result.body.get('message', '')}")
        raise ApiError("create", f"{path}/{name}", result.status, _t(result))

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Create concurrently (one round-trip time for a whole replica, not one per rank);
        every call ends before the first error is raised (a terminating namespace first)."""
        results = await asyncio.gather(*(self.create(obj) for obj in objs), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, NamespaceTerminating)), errors[0])
        return [bool(r) for r in results]

    async def apply(self, obj: Mapping[str, Any]) -> None:
        """Create, or bring an existing object's data/spec up to date (merge patch)."""
        if await self.create(obj):
            return
        path = f"{_collection_path(obj)}/{quote(obj['metadata']['name'])}"
        patch = {k: v for k, v in obj.items() if k in ("data", "spec")}
        patch["metadata"] = {"labels": obj["metadata"].get("labels", {})}
        result = await self.request(
            "PATCH", path, patch, resource=_COLLECTIONS[obj["kind"]], content_type=MERGE_PATCH
        )
        if not result.ok:
            raise ApiError("patch", path, result.status, _t(result))

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete exactly the pod observed (uid precondition); gone or replaced is success."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        path = pods_path(namespace, name)
        result = await self.request("DELETE", path, body, resource="pods", lane="pods")
        if not result.ok and result.status not in (404, 409):
            raise ApiError("delete", path, result.status, _t(result))

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None:
        await asyncio.gather(*(self.delete_pod(namespace, name, uid) for name, uid in pods))

    async def delete_object(self, kind: str, namespace: str, name: str, uid: str) -> None:
        """Delete exactly the object observed (uid precondition); gone is success."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        collection = _collection_path({"kind": kind, "metadata": {"namespace": namespace}})
        path = f"{collection}/{quote(name)}"
        result = await self.request("DELETE", path, body, resource=_COLLECTIONS[kind])
        if not result.ok and result.status not in (404, 409):
            raise ApiError("delete", path, result.status, _t(result))

    async def namespace_terminating(self, namespace: str) -> bool:
        """Whether the namespace is being deleted (or gone): its pods go with it."""
        path = f"/api/v1/namespaces/{quote(namespace)}"
        result = await self.request("GET", path, resource="namespaces")
        if result.status == 404:
            return True
        if not result.ok:
            return False  # cannot tell: treat it as a gang failure, as before
        metadata = result.body.get("metadata") or {}
        phase = (result.body.get("status") or {}).get("phase")
        return bool(metadata.get("deletionTimestamp")) or phase == "Terminating"

    # -- the InferenceDeployment -------------------------------------------------------------

    async def patch_deployment(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        resource_version: str | None,
        subresource: str | None = None,
        urgency: Urgency = Urgency.PHASE,
    ) -> dict[str, Any] | None:
        """Merge-patch the deployment (or its status) if unchanged since read; None on conflict."""
        body = dict(patch)
        if resource_version:
            body["metadata"] = {**body.get("metadata", {}), "resourceVersion": resource_version}
        path = deployment_path(namespace, name) + (f"/{subresource}" if subresource else "")
        resource = PLURAL + (f"/{subresource}" if subresource else "")
        result = await self.request(
            "PATCH",
            path,
            body,
            resource=resource,
            content_type=MERGE_PATCH,
            lane="deployments",
            urgency=urgency,
        )
        if result.ok:
            return result.body
        if result.status in (404, 409):  # deleted meanwhile, or changed since our read
            return None
        raise ApiError("patch", path, result.status, _t(result))

    # -- the admission webhook's registration -------------------------------------------------

    async def write_webhook_configuration(self, configuration: dict[str, Any]) -> None:
        """Create the ValidatingWebhookConfiguration, or replace its webhooks (a merge patch
        replaces the list)."""
        collection = WEBHOOK_CONFIGURATIONS_PATH
        resource = "validatingwebhookconfigurations"
        created = await self.request("POST", collection, configuration, resource=resource)
        if created.ok:
            return
        if created.status != 409:
            raise ApiError("create", collection, created.status, str(created.body))
        path = f"{collection}/{quote(configuration['metadata']['name'])}"
        patch = {
            "metadata": {"labels": configuration["metadata"]["labels"]},
            "webhooks": configuration["webhooks"],
        }
        patched = await self.request(
            "PATCH", path, patch, resource=resource, content_type=MERGE_PATCH
        )
        if not patched.ok:
            raise ApiError("patch", path, patched.status, str(patched.body))

    async def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event on the deployment (so `kubectl describe` tells the story)."""
        namespace = involved["namespace"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{secrets.token_hex(8)}",
                "namespace": namespace,
            },
            "involvedObject": dict(involved),
            "type": type_,
            "reason": reason[:128],
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        path = f"/api/v1/namespaces/{quote(namespace)}/events"
        result = await self.request("POST", path, event, resource="events")
        if result.status == 403 and _namespace_terminating(result.body):
            return  # nobody will read it: the deployment goes with its namespace
        if not result.ok:
            raise ApiError("create", path, result.status, _t(result))


def _t(result: Result) -> str:
    return json.dumps(result.body)


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    """uid of the controller in an object's ownerReferences, if it has one."""
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return str(reference.get("uid", ""))
    return None


def _namespace_terminating(status: Mapping[str, Any]) -> bool:
    """A Status refusing a create because its namespace is being deleted."""
    causes = (status.get("details") or {}).get("causes") or []
    if any(c.get("reason") == "NamespaceTerminating" for c in causes if isinstance(c, Mapping)):
        return True
    return "because it is being terminated" in str(status.get("message", ""))
