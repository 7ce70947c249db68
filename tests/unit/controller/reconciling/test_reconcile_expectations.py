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


def test_only_the_missing_rank_is_posted_while_the_rest_are_in_flight(monkeypatch: Any):
    """A rank shown and then deleted while its gang's other pods are still in flight (posted,
    not shown): the next reconcile renders and posts that one rank, none of the others."""
    reconciler, _, writes = setup()
    rendered: list[list[int] | None] = []
    render = owned_objects.replica_pods

    def recording(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        rendered.append(kwargs.get("only_ranks"))
        return render(*args, **kwargs)

    monkeypatch.setattr(owned_objects, "replica_pods", recording)
    asyncio.run(reconciler.reconcile(("ns", "d")))
    assert rendered == [[0, 1, 2, 3]]
    # The watch showed rank 2 alone, and then it was deleted; ranks 0, 1 and 3 are in flight.
    reconciler._created[("ns", "d")].pop("d-0-2")
    rendered.clear()
    asyncio.run(reconciler.reconcile(("ns", "d")))
    assert writes.posted[4:] == ["d-0-2"]
    assert rendered == [[2]]


class SlowWrites(Writes):
    """Creates that wait for the API server until released; status writes answer at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.status_writes = 0
        self.fail: Exception | None = None

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]:
        self.posted += [o["metadata"]["name"] for o in objs]
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [True] * len(objs)

    async def patch_deployment(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        if kwargs.get("subresource") == "status":
            self.status_writes += 1
        return {"metadata": {"resourceVersion": "2"}}


def _slow_setup(monkeypatch: Any) -> tuple[Reconciler, SlowWrites, list[tuple[Any, float]]]:
    monkeypatch.setattr(reconcile, "CREATES_WAITED_FOR", 0.05)
    reconciler, views, _ = setup()
    writes = SlowWrites()
    reconciler = Reconciler(writes, views, ControllerSettings(), OperatorMetrics())  # type: ignore[arg-type]
    queued: list[tuple[Any, float]] = []
    reconciler.look_again_later = lambda key, delay: queued.append((key, delay))
    return reconciler, writes, queued


def test_creates_that_outlast_their_reconcile_free_it_and_queue_the_deployment(monkeypatch: Any):
    reconciler, writes, queued = _slow_setup(monkeypatch)
    key = ("ns", "d")

    async def scenario() -> None:
        # The reconcile returns while its creates wait, and writes status meanwhile.
        await asyncio.wait_for(reconciler.reconcile(key), timeout=5)
        assert sorted(writes.posted) == ["d-0-0", "d-0-1", "d-0-2", "d-0-3"]
        assert writes.status_writes == 1 and queued == []
        # Another reconcile while they are in flight posts none of them again.
        await asyncio.wait_for(reconciler.reconcile(key), timeout=5)
        assert len(writes.posted) == 4
        # Their GPUs stay reserved however long they wait (past RESERVATION_SECONDS).
        monkeypatch.setattr(reconcile, "RESERVATION_SECONDS", -1.0)
        reconciler._forget_seen_reservations()
        assert len(reconciler._reserved) == 4
        writes.release.set()
        await asyncio.sleep(0.01)
        assert queued == [(key, 0.0)]  # answered: looked at again at once
        assert all(due < float("inf") for due in reconciler._created[key].values())

    asyncio.run(scenario())


def test_creates_failing_after_their_reconcile_are_posted_again_by_the_next(monkeypatch: Any):
    reconciler, writes, queued = _slow_setup(monkeypatch)
    key = ("ns", "d")
    writes.fail = RuntimeError("the API server is gone")

    async def scenario() -> None:
        await asyncio.wait_for(reconciler.reconcile(key), timeout=5)
        writes.release.set()
        await asyncio.sleep(0.01)
        assert queued == [(key, 5.0)]  # looked at again after a pause
        writes.fail = None
        await asyncio.wait_for(reconciler.reconcile(key), timeout=5)
        assert len(writes.posted) == 8  # none is taken for created

    asyncio.run(scenario())
