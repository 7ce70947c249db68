"""The garbage collector's pauses, collection by collection, as the operator's metrics show them."""

from __future__ import annotations

import asyncio
import gc

from prometheus_client import generate_latest

from paraserve.controller.running.gc_pauses import GcPauses, report
from paraserve.controller.running.operator_metrics import OperatorMetrics


def test_a_full_collection_is_timed_and_nothing_after_stopping() -> None:
    pauses = GcPauses()
    stop = pauses.install()
    try:
        # Enough cyclic garbage that the collection has something to walk.
        for _ in range(20_000):
            node: list[object] = []
            node.append(node)
        gc.collect(2)
    finally:
        stop()
    ended = pauses.drain()
    assert any(generation == 2 and seconds > 0 for generation, seconds in ended)
    assert pauses.drain() == []
    gc.collect(2)
    assert pauses.drain() == []  # stopped: the collector's callback is gone


def test_the_pauses_reach_the_metrics_with_the_longest_kept() -> None:
    metrics = OperatorMetrics()
    pauses = GcPauses()
    stop = pauses.install()

    async def one_round() -> None:
        gc.collect(2)
        task = asyncio.create_task(report(pauses, metrics.observe_gc_pause, every=0.01))
        await asyncio.sleep(0.05)
        task.cancel()

    try:
        asyncio.run(one_round())
    finally:
        stop()
    text = generate_latest(metrics.registry).decode()
    full = [
        line
        for line in text.splitlines()
        if line.startswith('paraserve_operator_gc_pause_seconds_count{generation="2"}')
    ]
    assert full and float(full[0].split()[-1]) >= 1
    longest = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("paraserve_operator_gc_pause_max_seconds ")
    )
    assert longest > 0
