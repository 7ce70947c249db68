"""A reconcile that runs before the watch shows the pods it created does not post them again."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from paraserve.controller.rank_pods import RankPod
from paraserve.controller.reconciling import owned_objects, reconcile
from paraserve.controller.reconciling.reconcile import ALL, ControllerSettings, Reconciler, Views
from paraserve.controller.running.operator_metrics import OperatorMetrics

SPEC = {
    "model": {"name": "m", "parameters": "7B"},
    "parallelism": {"pipeline": 2, "tensor": 2},
    "gpu": {"memory": "80G"},
}


class Writes:
    def __init__(self) -> None:
        self.posted: list[str] = []

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]:
        self.posted += [o["metadata"]["name"] for o in objs]
        return [True] * len(objs)

    async def apply(self, obj: Mapping[str, Any]) -> None:
        return None

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None:
        return None

    async def patch_deployment(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        return {"metadata": {"resourceVersion": "2"}}

    async def post_event(self, *args: Any, **kwargs: Any) -> None:
        return None


def setup() -> tuple[Reconciler, Views, Writes]:
    views = Views()
    views.nodes = {
        ALL: [
            {
                "metadata": {"name": "a", "labels": {}},
                "spec": {},
                "status": {"allocatable": {"nvidia.com/gpu": "8"}},
            }
        ]
    }
    views.gpu_pods = {ALL: []}
    body = {
        "metadata": {"name": "d", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": SPEC,
        "status": {},
    }
    views.deployments = {("ns", "d"): [body]}
    views.rank_pods = {}
    writes = Writes()
    return Reconciler(writes, views, ControllerSettings(), OperatorMetrics()), views, writes  # type: ignore[arg-type]


def test_pods_not_shown_yet_are_not_posted_again_and_are_looked_at_when_due(monkeypatch: Any):
    reconciler, _, writes = setup()
    asyncio.run(reconciler.reconcile(("ns", "d")))
    assert sorted(writes.posted) == ["d-0-0", "d-0-1", "d-0-2", "d-0-3"]
    # The watch has not shown them: the next reconcile posts nothing, and asks to look again.
    again = asyncio.run(reconciler.reconcile(("ns", "d")))
    assert len(writes.posted) == 4
    assert again is not None and again <= reconcile.EXPECT_SECONDS + 0.2
    # Never shown in time (deleted before the watch saw them): created again once due.
    monkeypatch.setattr(reconcile, "EXPECT_SECONDS", -1.0)
    reconciler._created.clear()
    asyncio.run(reconciler.reconcile(("ns", "d")))
    assert len(writes.posted) == 8


def test_a_pod_shown_then_deleted_is_created_again_at_once():
    reconciler, views, writes = setup()
    asyncio.run(reconciler.reconcile(("ns", "d")))
    hash_ = owned_objects.template_hash(reconciler.parse_spec("d", SPEC)[0], "x")  # type: ignore[arg-type]
    views.rank_pods = {
        ("ns", "d"): [
            RankPod(name=f"d-0-{r}", uid=f"u{r}", replica=0, rank=r, template_hash=hash_)
            for r in range(4)
        ]
    }
    asyncio.run(reconciler.reconcile(("ns", "d")))  # shown: no longer expected
    assert not reconciler._created.get(("ns", "d"))
    views.rank_pods = {}  # then deleted (a restart): created again at once
    asyncio.run(reconciler.reconcile(("ns", "d")))
    assert len(writes.posted) == 8
