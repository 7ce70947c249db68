"""The kopf handlers: in-memory indexes of the world, and watch events that queue reconciles.

No handler writes anything; the reconcile does (reconciling/reconcile.py). Only indexes and
watch handlers are used, so kopf adds no finalizer and no progress annotations: deleting a
deployment never waits for the operator, and the garbage collector removes what it owned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from paraserve.api import GROUP, PLURAL, VERSION
from paraserve.api.labels import LABEL_DEPLOYMENT, PLANNED_NODE_ANNOTATION
from paraserve.controller import rank_pods
from paraserve.controller.bodies import plain
from paraserve.controller.reconciling.gang import GANG_ANNOTATION
from paraserve.controller.reconciling.reconcile import ALL
from paraserve.controller.running.manager import Manager

# Resources a scheduler counts that are not accelerators.
_STANDARD_RESOURCES: Final = ("cpu", "memory", "ephemeral-storage", "pods")
_TERMINATED: Final = ("Succeeded", "Failed")


def deployment_view(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return {
        "metadata": {
            key: plain(metadata[key])
            for key in ("name", "namespace", "uid", "generation", "resourceVersion")
            if key in metadata
        }
        | {
            "deletionTimestamp": metadata.get("deletionTimestamp"),
            "annotations": {k: v for k, v in annotations.items() if k == GANG_ANNOTATION},
        },
        "spec": plain(body.get("spec") or {}),
        "status": plain(body.get("status") or {}),
    }


def node_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the planner's Pool reads of a node."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return {
        "metadata": {"name": metadata.get("name"), "labels": plain(metadata.get("labels") or {})},
        "spec": {
            "unschedulable": bool(spec.get("unschedulable")),
            "taints": plain(spec.get("taints") or []),
        },
        "status": {"allocatable": plain((body.get("status") or {}).get("allocatable") or {})},
    }


def _requests_accelerators(pod_spec: Mapping[str, Any]) -> bool:
    for container in [*(pod_spec.get("containers") or []), *(pod_spec.get("initContainers") or [])]:
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            for name in resources.get(section) or {}:
                if name not in _STANDARD_RESOURCES and not name.startswith("hugepages-"):
                    return True
    return False


def gpu_pod_view(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the planner's Pool reads of a pod that uses GPUs; None for others or finished."""
    spec = body.get("spec") or {}
    phase = (body.get("status") or {}).get("phase")
    if phase in _TERMINATED or not _requests_accelerators(spec):
        return None
    metadata = body.get("metadata") or {}

    def trimmed(containers: Any) -> list[dict[str, Any]]:
        return [{"resources": plain(c.get("resources") or {})} for c in containers or []]

    return {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "labels": plain(metadata.get("labels") or {}),
            # Where the operator placed a rank not bound yet: its GPUs are spoken for.
            "annotations": {
                k: v
                for k, v in (metadata.get("annotations") or {}).items()
                if k == PLANNED_NODE_ANNOTATION
            },
        },
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": trimmed(spec.get("containers")),
            "initContainers": trimmed(spec.get("initContainers")),
        },
        "status": {"phase": phase},
    }


def register(registry: kopf.OperatorRegistry, manager: Manager) -> None:
    """Register the indexes and watch handlers of one operator on `registry`."""

    @kopf.index(GROUP, VERSION, PLURAL, id="deployments", registry=registry)
    def deployments(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(body.metadata.namespace, body.metadata.name): deployment_view(body)}

    @kopf.index("v1", "nodes", id="nodes", registry=registry)
    def nodes(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {ALL: node_view(body)}

    @kopf.index("v1", "pods", id="gpu_pods", registry=registry)
    def gpu_pods(body: kopf.Body, **_: Any) -> dict[Any, Any] | None:
        view = gpu_pod_view(body)
        return {ALL: view} if view is not None else None

    # One index of rank pods: the gang logic and the measurement loop both read it.
    @kopf.index(
        "v1",
        "pods",
        id=rank_pods.INDEX,
        labels={rank_pods.SELECTOR: kopf.PRESENT},
        registry=registry,
    )
    def rank_pods_index(body: kopf.Body, **_: Any) -> Any:
        return rank_pods.index_entry(body)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="deployment-changed", registry=registry)
    def deployment_changed(body: kopf.Body, **_: Any) -> None:
        manager.enqueue((str(body.metadata.namespace), str(body.metadata.name)))

    @kopf.on.event("v1", "pods", id="pod-changed", registry=registry)
    def pod_changed(body: kopf.Body, **_: Any) -> None:
        owner = body.metadata.labels.get(LABEL_DEPLOYMENT)
        if owner:
            manager.enqueue((str(body.metadata.namespace), owner))
        if _requests_accelerators(body.get("spec") or {}):
            manager.poke_unsettled()

    @kopf.on.event("v1", "nodes", id="node-changed", registry=registry)
    def node_changed(**_: Any) -> None:
        manager.poke_unsettled()

    @kopf.on.startup(id="start-workers", registry=registry)
    async def start_workers(**kwargs: Any) -> None:
        manager.bind(kwargs)
        manager.start()

    @kopf.on.cleanup(id="stop-workers", registry=registry)
    async def stop_workers(**_: Any) -> None:
        await manager.stop()
