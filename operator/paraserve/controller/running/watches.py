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
from paraserve.api.labels import (
    GROUP_SIZE_ANNOTATION,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    MANAGER,
    PLANNED_NODE_ANNOTATION,
)
from paraserve.controller import rank_pods
from paraserve.controller.bodies import plain
from paraserve.controller.reconciling import architecture_source
from paraserve.controller.reconciling.gang import GANG_ANNOTATION
from paraserve.controller.reconciling.reconcile import ALL, Key
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
                if k in (PLANNED_NODE_ANNOTATION, GROUP_SIZE_ANNOTATION)
            },
        },
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": trimmed(spec.get("containers")),
            "initContainers": trimmed(spec.get("initContainers")),
        },
        "status": {"phase": phase},
    }


def owned_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconcile compares of a Service or ConfigMap it owns (the rest is the server's)."""
    metadata = body.get("metadata") or {}
    view: dict[str, Any] = {
        "kind": body.get("kind"),
        "metadata": {
            key: plain(metadata[key])
            for key in ("name", "namespace", "uid", "labels", "ownerReferences")
            if key in metadata
        },
    }
    for key in ("spec", "data", "immutable"):
        if key in body:
            view[key] = plain(body[key])
    return view


def _owner_key(body: kopf.Body) -> Key | None:
    owner = (body.metadata.labels or {}).get(LABEL_DEPLOYMENT)
    return (str(body.metadata.namespace), owner) if owner else None


#: Services and ConfigMaps the operator owns, indexed by deployment (repaired when deleted).
OWNED_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGER}"
OWNED_RESOURCES: Final = ("services", "configmaps")


def register(registry: kopf.OperatorRegistry, manager: Manager) -> None:
    """Register the indexes and watch handlers of one operator on `registry`.

    Every handler is `async def`: kopf runs a plain `def` in a thread pool, and these touch
    the work queue and read live indexes, which only the event loop may do.
    """

    @kopf.index(GROUP, VERSION, PLURAL, id="deployments", registry=registry)
    async def deployments(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(body.metadata.namespace, body.metadata.name): deployment_view(body)}

    @kopf.index("v1", "nodes", id="nodes", registry=registry)
    async def nodes(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {ALL: node_view(body)}

    @kopf.index("v1", "pods", id="gpu_pods", registry=registry)
    async def gpu_pods(body: kopf.Body, **_: Any) -> dict[Any, Any] | None:
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
    async def rank_pods_index(body: kopf.Body, **_: Any) -> Any:
        return rank_pods.index_entry(body)

    for resource in OWNED_RESOURCES:

        @kopf.index("v1", resource, id=resource, registry=registry)
        async def owned(body: kopf.Body, **_: Any) -> Any:
            key = _owner_key(body)
            return {key: owned_view(body)} if key is not None else None

        @kopf.on.event("v1", resource, id=f"{resource}-changed", registry=registry)
        async def owned_changed(body: kopf.Body, **_: Any) -> None:
            key = _owner_key(body)
            if key is not None:
                manager.enqueue(key)

    # model.architectureFrom: the ConfigMaps holding model configs, and who names each.
    @kopf.index("v1", "configmaps", id=architecture_source.CONFIG_MAPS, registry=registry)
    async def model_config_maps(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return architecture_source.config_map_entry(body)

    @kopf.index(GROUP, VERSION, PLURAL, id=architecture_source.NAMED_BY, registry=registry)
    async def architecture_sources(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return architecture_source.named_by_entry(body)

    @kopf.on.event("v1", "configmaps", id="configmap-changed", registry=registry)
    async def config_map_changed(body: kopf.Body, **kwargs: Any) -> None:
        named_by = kwargs[architecture_source.NAMED_BY]
        namespace, name = str(body.metadata.namespace), str(body.metadata.name)
        for key in architecture_source.deployments_naming(named_by, namespace, name):
            manager.enqueue(key)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="deployment-changed", registry=registry)
    async def deployment_changed(body: kopf.Body, **kwargs: Any) -> None:
        key = (str(body.metadata.namespace), str(body.metadata.name))
        manager.deployment_event(key, deleted=kwargs.get("type") == "DELETED")

    @kopf.on.event("v1", "pods", id="pod-changed", registry=registry)
    async def pod_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
        key = _owner_key(body)
        if key is not None:
            manager.enqueue(key)
        if _requests_accelerators(body.get("spec") or {}):
            live = manager.views.live
            view = gpu_pod_view(body) if type != "DELETED" else None
            if view is not None:
                changed = live.put_pod(view)
            else:
                changed = live.remove_pod(str(body.metadata.namespace), str(body.metadata.name))
            if changed:
                manager.poke_unsettled()

    @kopf.on.event("v1", "nodes", id="node-changed", registry=registry)
    async def node_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
        live = manager.views.live
        name = str(body.metadata.name)
        if live.remove_node(name) if type == "DELETED" else live.put_node(node_view(body)):
            manager.poke_unsettled()

    @kopf.on.startup(id="start-workers", registry=registry)
    async def start_workers(**kwargs: Any) -> None:
        manager.bind(kwargs)
        manager.start()

    @kopf.on.cleanup(id="stop-workers", registry=registry)
    async def stop_workers(**_: Any) -> None:
        await manager.stop()


#: Watched with the server-side selector. Not ConfigMaps: model.architectureFrom names the
#: user's own, unlabelled (`kubectl create configmap … --from-file=config.json`).
ONLY_OURS_WATCHED: Final = ("services",)


def watch_only_ours(settings: kopf.OperatorSettings) -> None:
    """Server-side selectors of the owned-object watches that see nothing but ours."""
    for resource in ONLY_OURS_WATCHED:
        settings.watching.label_selectors[("v1", resource)] = OWNED_SELECTOR
