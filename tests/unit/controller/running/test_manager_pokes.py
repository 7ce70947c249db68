"""GPU and node events wake the deployments that wait, once per burst; the queue times its waits."""

from __future__ import annotations

import asyncio
from typing import Any

from paraserve.controller.reconciling.reconcile import ControllerSettings, Reconciler, Views
from paraserve.controller.running import manager as manager_module
from paraserve.controller.running.manager import Manager
from paraserve.controller.running.operator_metrics import OperatorMetrics
from paraserve.controller.running.workqueue import WorkQueue


def manager_with(phases: dict[str, str | None]) -> Manager:
    views = Views()
    views.deployments = {
        ("ns", name): [{"metadata": {"name": name}, "status": {"phase": phase} if phase else {}}]
        for name, phase in phases.items()
    }
    metrics = OperatorMetrics()
    manager = Manager(Reconciler(None, views, ControllerSettings(), metrics), metrics)  # type: ignore[arg-type]
    manager.seen.update(views.deployments)  # kopf has shown every one of them
    return manager


def queued(manager: Manager) -> set[Any]:
    return set(manager.queue._queued)


def test_a_burst_of_gpu_events_wakes_the_waiting_once_and_not_the_scheduling(monkeypatch: Any):
    monkeypatch.setattr(manager_module, "POKE_DELAY", 0.01)
    phases = {
        "waiting": "Waiting",
        "rejected": "Rejected",
        "degraded": "Degraded",
        "new": None,
        "scheduling": "Scheduling",
        "running": "Running",
        "ready": "Ready",
    }

    async def scenario() -> tuple[set[Any], set[Any]]:
        manager = manager_with(phases)
        sweeps = []
        look = manager._look_at_unsettled

        def counted() -> None:
            sweeps.append(1)
            look()

        manager._look_at_unsettled = counted  # type: ignore[method-assign]
        for _ in range(100):
            manager.poke_unsettled()
        before = queued(manager)
        await asyncio.sleep(0.05)
        assert len(sweeps) == 1
        return before, queued(manager)

    before, after = asyncio.run(scenario())
    assert before == set()  # nothing at once: one look per burst
    assert after == {("ns", n) for n in ("waiting", "rejected", "degraded", "new")}


def test_the_queue_reports_how_long_each_key_waited():
    waits: list[float] = []

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(observe_wait=waits.append)
        queue.add("a")
        queue.add("a")  # deduplicated: one wait
        await asyncio.sleep(0.02)
        assert await queue.get() == "a"
        queue.done("a")

    asyncio.run(scenario())
    assert len(waits) == 1 and waits[0] >= 0.015
