"""kopf's diff base left empty: the operator's handlers see every event as before, at no copy."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kopf
import pytest
from fake_cluster import FakeCluster
from kopf._cogs.structs import references
from kopf._core.actions import lifecycles
from kopf._core.engines import indexing
from kopf._core.reactor import inventory, processing
from test_manager import NS, manager_of

from paraserve.controller import rank_pods
from paraserve.controller.running import kopf_essence, watches

PODS = references.Resource(
    group="", version="v1", plural="pods", kind="Pod", namespaced=True, verbs=["list", "watch"]
)


def rank_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "resourceVersion": "7",
            "labels": {
                "app.kubernetes.io/managed-by": "paraserve-operator",
                "paraserve.dev/deployment": "d",
                "paraserve.dev/replica": "0",
                "paraserve.dev/rank": "0",
                "paraserve.dev/template-hash": "h",
            },
        },
        "spec": {
            "nodeName": "n0",
            "containers": [{"name": "rank", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Running"},
    }


def deliver(
    settings: kopf.OperatorSettings, events: list[dict[str, Any]], *, empty_diff_base: bool
) -> dict[str, Any]:
    """Run kopf's own event processing over `events` with the operator's handlers; return what
    they left: the queued deployments and the rank-pod index."""
    cluster = FakeCluster()
    manager = manager_of(cluster)
    registry = kopf.OperatorRegistry()
    watches.register(registry, manager)
    if empty_diff_base:
        kopf_essence.install(settings, registry)
    indexers = indexing.OperatorIndexers()
    indexers.ensure(registry._indexing.get_all_handlers())
    queued: list[Any] = []
    manager.enqueue = queued.append  # type: ignore[method-assign]

    async def process() -> None:
        memories = inventory.ResourceMemories()
        for event in events:
            await processing.process_resource_event(
                lifecycle=lifecycles.all_at_once,
                indexers=indexers,
                registry=registry,
                settings=settings,
                memories=memories,
                memobase=kopf.Memo(),
                resource=PODS,
                raw_event=event,  # type: ignore[arg-type]
                event_queue=asyncio.Queue(),
                no_throttling=True,
            )

    asyncio.run(asyncio.wait_for(process(), timeout=10))
    index = indexers.indices[rank_pods.INDEX]
    return {
        "queued": queued,
        "rank pods": {key: list(index[key]) for key in index},
    }


def test_the_operators_handlers_see_pod_events_as_with_kopfs_own_diff_base() -> None:
    pod = rank_pod("d-0-0")
    bound_elsewhere = copy.deepcopy(pod)
    bound_elsewhere["metadata"]["resourceVersion"] = "8"
    bound_elsewhere["status"]["phase"] = "Pending"
    events = [
        {"type": "ADDED", "object": pod},
        {"type": "MODIFIED", "object": bound_elsewhere},
        {"type": "DELETED", "object": bound_elsewhere},
        {"type": "ADDED", "object": rank_pod("d-0-1")},
    ]
    empty = kopf.OperatorSettings()
    seen = deliver(empty, events, empty_diff_base=True)
    assert isinstance(empty.persistence.diffbase_storage, kopf_essence.EmptyDiffBase)
    assert deliver(kopf.OperatorSettings(), events, empty_diff_base=False) == seen
    assert seen["queued"] == [(NS, "d")] * 4
    assert list(seen["rank pods"]) == [(NS, "d")]
    assert len(seen["rank pods"][(NS, "d")]) == 1  # d-0-0 deleted, d-0-1 indexed


def test_an_operator_with_a_handler_told_what_changed_keeps_kopfs_diff_base() -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.update("v1", "pods", id="resize", registry=registry)
    async def resize(**_: Any) -> None: ...

    settings = kopf.OperatorSettings()
    with pytest.raises(RuntimeError, match="resize"):
        kopf_essence.install(settings, registry)
    assert not isinstance(settings.persistence.diffbase_storage, kopf_essence.EmptyDiffBase)


def test_the_empty_diff_base_copies_nothing_of_a_body() -> None:
    body = kopf.Body(rank_pod("d-0-0"))
    storage = kopf_essence.EmptyDiffBase()
    assert storage.build(body=body) == {} and storage.fetch(body=body) == {}
