"""Every call the operator makes to the Kubernetes API, in one place: plain dicts over REST.

The synchronous `kubernetes` client runs in a thread pool so that a replica's pods are created
concurrently. Each call is counted in the operator's metrics by verb, resource and status.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from paraserve.api import GROUP, PLURAL, VERSION

MERGE_PATCH: Final = "application/merge-patch+json"
COMPONENT: Final = "paraserve-operator"

#: (verb, resource, HTTP status) of each call, for the metrics.
CallObserver = Callable[[str, str, int], None]


class ApiError(Exception):
    """A call the API server refused for a reason the reconcile cannot treat as success."""

    def __init__(self, verb: str, path: str, status: int, body: str) -> None:
        self.status = status
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            message = body
        super().__init__(f"{verb} {path}: HTTP {status}: {str(message)[:300]}")


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
        observe: CallObserver | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._api = api_client
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="k8s-api")
        self._observe = observe or (lambda verb, resource, status: None)
        self._timeout = timeout

    @property
    def configuration(self) -> Any:
        """The client configuration: where the API server is and how we authenticate."""
        return self._api.configuration

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def request(
        self,
        verb: str,
        path: str,
        body: Any = None,
        *,
        resource: str,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> Result:
        loop = asyncio.get_running_loop()
        try:
            status, text = await loop.run_in_executor(
                self._executor, self._call, verb, path, body, list(query), content_type
            )
        except Exception:
            self._observe(verb, resource, 0)
            raise
        self._observe(verb, resource, status)
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {"message": text}
        return Result(status=status, body=data if isinstance(data, dict) else {})

    def _call(
        self,
        verb: str,
        path: str,
        body: Any,
        query: list[tuple[str, str]],
        content_type: str,
    ) -> tuple[int, str]:
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
        """Create an object with a deterministic name: True if created, False if it existed."""
        kind = obj["kind"]
        path = _collection_path(obj)
        result = await self.request("POST", path, obj, resource=_COLLECTIONS[kind])
        if result.ok:
            return True
        if result.status == 409:  # AlreadyExists: an earlier attempt got there first
            return False
        raise ApiError("create", f"{path}/{obj['metadata']['name']}", result.status, _t(result))

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Create concurrently (one round-trip time for a whole replica, not one per rank)."""
        return list(await asyncio.gather(*(self.create(obj) for obj in objs)))

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
        result = await self.request("DELETE", path, body, resource="pods")
        if not result.ok and result.status not in (404, 409):
            raise ApiError("delete", path, result.status, _t(result))

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None:
        await asyncio.gather(*(self.delete_pod(namespace, name, uid) for name, uid in pods))

    # -- the InferenceDeployment -------------------------------------------------------------

    async def patch_deployment(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        resource_version: str | None,
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """Merge-patch the deployment (or its status) if unchanged since read; None on conflict."""
        body = dict(patch)
        if resource_version:
            body["metadata"] = {**body.get("metadata", {}), "resourceVersion": resource_version}
        path = deployment_path(namespace, name) + (f"/{subresource}" if subresource else "")
        resource = PLURAL + (f"/{subresource}" if subresource else "")
        result = await self.request(
            "PATCH", path, body, resource=resource, content_type=MERGE_PATCH
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
        if not result.ok:
            raise ApiError("create", path, result.status, _t(result))


def _t(result: Result) -> str:
    return json.dumps(result.body)
