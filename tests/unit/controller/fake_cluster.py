"""A fake of our own `Cluster` class (not of the Kubernetes API) and of the watch behind `Views`.

Objects are kept as the API server keeps them: one name per kind and namespace, a uid and a
resourceVersion each, creates answered 409 when the name is taken, deletes with a uid
precondition, merge patches guarded by resourceVersion. The watch is explicit: `views` shows
what `deliver()` last copied from the store (through the operator's own view functions), so a
test decides when the watch catches up — or that it lags, as it does at scale.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from paraserve.api import API_VERSION, KIND
from paraserve.api.labels import LABEL_DEPLOYMENT, PLANNED_NODE_ANNOTATION
from paraserve.controller import merge_patch
from paraserve.controller.api_writes import NamespaceTerminating, NameTaken, NotLeader, Urgency
from paraserve.controller.rank_pods import RankPod
from paraserve.controller.reconciling.reconcile import ALL, Views
from paraserve.controller.running.watches import (
    deployment_view,
    gpu_pod_view,
    node_view,
    owned_view,
)

Ref = tuple[str, str, str]  # (kind, namespace, name); namespace "" for nodes

STARTED = "2026-01-01T00:00:00Z"


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[Ref, dict[str, Any]] = {}
        self.views = Views()
        self.calls: list[tuple[str, str, str]] = []
        self.events: list[dict[str, Any]] = []
        #: Each deployment write's patch and the urgency it was sent with, in order.
        self.deployment_writes: list[tuple[dict[str, Any], Urgency]] = []
        self.conflicts = 0
        self.terminating: set[str] = set()
        #: When set, every write raises NotLeader (what the real Cluster does past its fence).
        self.may_write = lambda: True
        #: Verbs that never answer (a partitioned API server).
        self.hanging: set[str] = set()
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)
        self.deliver()

    # -- setting up the world (as kubectl would, not the operator) ---------------------------

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(dict(obj))
        metadata = body.setdefault("metadata", {})
        metadata.setdefault("namespace", "")
        metadata.setdefault("uid", f"uid-{next(self._uids)}")
        metadata["resourceVersion"] = str(next(self._versions))
        metadata.setdefault("generation", 1)
        self.objects[_ref(body)] = body
        return body

    def node(self, name: str, gpus: int, **labels: str) -> None:
        self.put(
            {
                "kind": "Node",
                "metadata": {"name": name, "labels": dict(labels)},
                "spec": {},
                "status": {"allocatable": {"nvidia.com/gpu": gpus}},
            }
        )

    def deployment(
        self, namespace: str, name: str, spec: Mapping[str, Any], **metadata: Any
    ) -> dict[str, Any]:
        return self.put(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": name, "namespace": namespace, **metadata},
                "spec": copy.deepcopy(dict(spec)),
            }
        )

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def of_kind(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            o
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind and (namespace is None or ns == namespace)
        ]

    def pods_of(self, namespace: str, deployment: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.of_kind("Pod", namespace)
            if p["metadata"].get("labels", {}).get(LABEL_DEPLOYMENT) == deployment
        ]

    def run_pods(self) -> None:
        """The scheduler and the kubelets: bind every pending pod and start it, ready."""
        free = {
            n["metadata"]["name"]: int(n["status"]["allocatable"]["nvidia.com/gpu"])
            for n in self.of_kind("Node")
        }
        for pod in self.of_kind("Pod"):
            if pod["spec"].get("nodeName"):
                free[pod["spec"]["nodeName"]] -= 1
        for pod in self.of_kind("Pod"):
            if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            wanted = (pod["metadata"].get("annotations") or {}).get(PLANNED_NODE_ANNOTATION)
            node = wanted if wanted and free.get(wanted, 0) > 0 else None
            node = node or next((n for n, count in free.items() if count > 0), None)
            if node is None:
                continue
            free[node] -= 1
            pod["spec"]["nodeName"] = node
            pod["status"] = {
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": STARTED},
                    {"type": "Ready", "status": "True", "lastTransitionTime": STARTED},
                ],
            }
            self._bump(pod)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        """Deleted out of band (by a person or another controller)."""
        del self.objects[(kind, namespace, name)]

    def deliver(self) -> None:
        """The watch catches up: the views show the store as it is now."""
        views = self.views
        deployments: dict[Any, list[Any]] = {}
        rank_pods: dict[Any, list[Any]] = {}
        services: dict[Any, list[Any]] = {}
        configmaps: dict[Any, list[Any]] = {}
        gpu_pods: list[Any] = []
        for (kind, namespace, name), body in sorted(self.objects.items()):
            if kind == KIND:
                deployments[(namespace, name)] = [deployment_view(body)]
            elif kind == "Pod":
                view = gpu_pod_view(body)
                if view is not None:
                    gpu_pods.append(view)
                owner = body["metadata"].get("labels", {}).get(LABEL_DEPLOYMENT)
                observed = RankPod.from_pod(body)
                if owner and observed is not None:
                    rank_pods.setdefault((namespace, owner), []).append(observed)
            elif kind in ("Service", "ConfigMap"):
                owner = body["metadata"].get("labels", {}).get(LABEL_DEPLOYMENT)
                if owner:
                    store = services if kind == "Service" else configmaps
                    store.setdefault((namespace, owner), []).append(owned_view(body))
        views.deployments = deployments
        views.nodes = {ALL: [node_view(n) for n in self.of_kind("Node")]}
        views.gpu_pods = {ALL: gpu_pods}
        views.rank_pods = rank_pods
        views.services = services
        views.configmaps = configmaps

    # -- the Cluster interface the operator uses ----------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> bool:
        await self._call("POST", obj["kind"], obj["metadata"]["name"])
        namespace = obj["metadata"]["namespace"]
        if namespace in self.terminating:
            raise NamespaceTerminating(f"namespace {namespace} is being terminated")
        existing = self.objects.get(_ref(obj))
        if existing is None:
            body = self.put(obj)
            if obj["kind"] == "Pod":
                body["status"] = {"phase": "Pending"}
            return True
        ours = _controller(obj)
        if ours is not None and _controller(existing) != ours:
            raise NameTaken(f"{obj['kind']} {obj['metadata']['name']} exists and is not ours")
        return False

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]:
        results = await asyncio.gather(*(self.create(o) for o in objs), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return [bool(r) for r in results]

    async def apply(self, obj: Mapping[str, Any]) -> None:
        if await self.create(obj):
            return
        await self._call("PATCH", obj["kind"], obj["metadata"]["name"])
        body = self.objects[_ref(obj)]
        patch = {k: v for k, v in obj.items() if k in ("data", "spec")}
        patch["metadata"] = {"labels": obj["metadata"].get("labels", {})}
        self.objects[_ref(obj)] = merge_patch.apply(body, patch)
        self._bump(self.objects[_ref(obj)])

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        await self.delete_object("Pod", namespace, name, uid)

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None:
        await asyncio.gather(*(self.delete_pod(namespace, n, u) for n, u in pods))

    async def delete_object(self, kind: str, namespace: str, name: str, uid: str) -> None:
        await self._call("DELETE", kind, name)
        body = self.objects.get((kind, namespace, name))
        if body is not None and body["metadata"]["uid"] == uid:
            del self.objects[(kind, namespace, name)]

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
        await self._call("PATCH", KIND + (f"/{subresource}" if subresource else ""), name)
        self.deployment_writes.append((copy.deepcopy(patch), urgency))
        body = self.objects.get((KIND, namespace, name))
        if body is None:
            return None
        if resource_version and resource_version != body["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return None
        allowed = ("status",) if subresource == "status" else ("metadata", "spec")
        updated = merge_patch.apply(body, {k: v for k, v in patch.items() if k in allowed})
        if updated != body:
            self._bump(updated)
        self.objects[(KIND, namespace, name)] = updated
        return copy.deepcopy(updated)

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str
    ) -> None:
        await self._call("POST", "Event", reason)
        self.events.append(
            {"involved": dict(involved), "type": type_, "reason": reason, "message": message}
        )

    async def namespace_terminating(self, namespace: str) -> bool:
        await self._call("GET", "Namespace", namespace)
        return namespace in self.terminating

    async def request(self, verb: str, path: str, body: Any = None, **_: Any) -> Any:
        raise AssertionError(f"unexpected raw request {verb} {path}")

    # -- helpers -----------------------------------------------------------------------------

    def writes(self) -> list[tuple[str, str, str]]:
        return [call for call in self.calls if call[0] != "GET"]

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events]

    async def _call(self, verb: str, kind: str, name: str) -> None:
        if verb != "GET" and not self.may_write():
            raise NotLeader(f"{verb} {kind} {name}")
        self.calls.append((verb, kind, name))
        if verb in self.hanging:
            await asyncio.Event().wait()
        await asyncio.sleep(0)  # every call yields, as a network round-trip does

    def _bump(self, body: dict[str, Any]) -> None:
        body["metadata"]["resourceVersion"] = str(next(self._versions))


def _ref(obj: Mapping[str, Any]) -> Ref:
    metadata = obj["metadata"]
    return (str(obj["kind"]), str(metadata.get("namespace") or ""), str(metadata["name"]))


def _controller(obj: Mapping[str, Any]) -> str | None:
    for reference in obj.get("metadata", {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return str(reference.get("uid"))
    return None
