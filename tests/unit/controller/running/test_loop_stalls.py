"""A stall of the event loop is reported once it ends, with the function that held the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from paraserve.controller.running import loop_lag
from paraserve.controller.running.loop_stalls import StallWatch


def hold_the_loop_in_python(seconds: float) -> int:
    # Pure Python, GIL handed over every few ms: the watchdog samples it while it runs.
    end, turns = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        turns += 1
    return turns


def run_with_watch(
    body: Callable[[], Awaitable[None]], held: float = 0.2
) -> list[tuple[float, list[tuple[str, int]]]]:
    reports: list[tuple[float, list[tuple[str, int]]]] = []
    watch = StallWatch(held=held, every=0.02)

    async def main() -> None:
        stop = watch.start(lambda seconds, stacks: reports.append((seconds, stacks)))
        beating = asyncio.create_task(loop_lag.sample(lambda _: watch.beat(), every=0.02))
        try:
            await asyncio.sleep(0.1)
            await body()
            await asyncio.sleep(0.1)
        finally:
            beating.cancel()
            stop()

    asyncio.run(main())
    return reports


def test_a_held_loop_is_reported_once_with_the_function_holding_it() -> None:
    async def stall() -> None:
        hold_the_loop_in_python(0.6)

    reports = run_with_watch(stall)
    assert len(reports) == 1
    seconds, stacks = reports[0]
    assert 0.55 <= seconds < 2.0
    assert stacks, "no stack sampled during a 0.6 s stall"
    stack, count = stacks[0]
    innermost = stack.split(" < ")[0]
    assert innermost.startswith("running/test_loop_stalls.py:")
    assert innermost.endswith(" hold_the_loop_in_python")
    assert count >= 5


def test_a_loop_that_only_awaits_reports_nothing() -> None:
    async def awaits() -> None:
        for _ in range(20):
            await asyncio.sleep(0.03)

    assert run_with_watch(awaits) == []
