"""One measurement round starts its deployments spread over the interval, not in one burst."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from paraserve.controller.measurement.measure_loop import Measurer, MeasureSettings
from paraserve.controller.rank_pods import INDEX as RANK_PODS


class StartsRecorded(Measurer):
    """Records when each deployment's measurement starts (no scrape: pacing alone)."""

    def __init__(self) -> None:
        super().__init__(cluster=None, settings=MeasureSettings())  # type: ignore[arg-type]
        self.starts: dict[tuple[str, str], float] = {}

    async def measure(self, key: Any, session: Any, limit: Any) -> bool:
        self.starts[key] = time.monotonic()
        await asyncio.sleep(0.05)
        return False


def run_round(spread: float, deployments: int) -> tuple[dict[tuple[str, str], float], float]:
    measurer = StartsRecorded()
    keys = [("ns", f"d{i}") for i in range(deployments)]
    measurer.bind({"deployments": {key: [{}] for key in keys}, RANK_PODS: {}})

    async def one_round() -> float:
        async with aiohttp.ClientSession() as session:
            began = time.monotonic()
            await measurer.measure_all(session, asyncio.Semaphore(4), spread=spread)
            return began

    began = asyncio.run(one_round())
    return {k: t - began for k, t in measurer.starts.items()}, began


def test_deployments_start_evenly_over_the_spread() -> None:
    starts, _ = run_round(spread=0.8, deployments=5)
    offsets = sorted(starts.values())
    assert len(offsets) == 5
    # 0, 0.16, 0.32, 0.48, 0.64 s: each one gap after the one before, none in a burst.
    for index, offset in enumerate(offsets):
        assert abs(offset - index * 0.16) < 0.08, offsets
    assert offsets[-1] < 0.8


def test_without_a_spread_every_deployment_starts_at_once() -> None:
    starts, _ = run_round(spread=0.0, deployments=5)
    assert max(starts.values()) < 0.05


def test_a_round_stopped_while_pacing_stops_what_it_started() -> None:
    measurer = StartsRecorded()
    keys = [("ns", f"d{i}") for i in range(4)]
    measurer.bind({"deployments": {key: [{}] for key in keys}, RANK_PODS: {}})
    finished: list[tuple[str, str]] = []

    async def measure(key: Any, session: Any, limit: Any) -> bool:
        await asyncio.sleep(5)
        finished.append(key)
        return False

    measurer.measure = measure  # type: ignore[method-assign]

    async def stopped() -> None:
        async with aiohttp.ClientSession() as session:
            task = asyncio.ensure_future(
                measurer.measure_all(session, asyncio.Semaphore(4), spread=2.0)
            )
            await asyncio.sleep(0.6)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.1)
            assert all(t.done() for t in asyncio.all_tasks() if t is not asyncio.current_task())

    asyncio.run(stopped())
    assert finished == []
