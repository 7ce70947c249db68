"""The deployments' lane lets the most urgent waiting write through first."""

from __future__ import annotations

import asyncio

import pytest

from paraserve.controller.running.priority_gate import PriorityGate


def test_the_most_urgent_waiting_call_goes_next_and_equals_keep_their_order() -> None:
    gate = PriorityGate(1)
    order: list[str] = []

    async def call(name: str, urgency: int, hold: asyncio.Event | None = None) -> None:
        async with gate.slot(urgency):
            order.append(name)
            if hold is not None:
                await hold.wait()

    async def scenario() -> None:
        hold = asyncio.Event()
        first = asyncio.ensure_future(call("in flight", 2, hold))
        await asyncio.sleep(0)
        waiting = [
            asyncio.ensure_future(call(name, urgency))
            for name, urgency in (("progress a", 2), ("gang", 1), ("progress b", 2), ("ready", 0))
        ]
        await asyncio.sleep(0)
        assert gate.waiting == 4
        hold.set()
        await asyncio.gather(first, *waiting)

    asyncio.run(scenario())
    assert order == ["in flight", "ready", "gang", "progress a", "progress b"]


def test_no_more_calls_in_flight_than_the_gate_holds() -> None:
    gate = PriorityGate(3)
    in_flight = 0
    most = 0

    async def call(urgency: int) -> None:
        nonlocal in_flight, most
        async with gate.slot(urgency):
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.001)
            in_flight -= 1

    async def scenario() -> None:
        await asyncio.gather(*(call(i % 3) for i in range(40)))

    asyncio.run(scenario())
    assert most == 3


def test_a_call_cancelled_while_waiting_or_just_let_in_does_not_lose_a_slot() -> None:
    gate = PriorityGate(1)
    done: list[str] = []

    async def call(name: str) -> None:
        async with gate.slot(0):
            done.append(name)

    async def scenario() -> None:
        async with gate.slot(0):  # this test holds the one slot
            abandoned = asyncio.ensure_future(call("abandoned"))
            let_in = asyncio.ensure_future(call("let in, then cancelled"))
            last = asyncio.ensure_future(call("last"))
            await asyncio.sleep(0)
            abandoned.cancel()  # while it waits
        # Leaving let `let_in` in (`abandoned` is passed over); it is cancelled before it runs.
        let_in.cancel()
        await asyncio.wait_for(last, timeout=2)
        for task in (abandoned, let_in):
            with pytest.raises(asyncio.CancelledError):
                await task
        # The slot came back: a new call enters at once.
        await asyncio.wait_for(call("after"), timeout=2)

    asyncio.run(scenario())
    assert done == ["last", "after"]


def test_a_gate_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one call"):
        PriorityGate(0)


def test_room_is_announced_only_when_a_call_leaves_and_nobody_waits() -> None:
    gate = PriorityGate(1)
    announced: list[int] = []
    gate.on_room = announced.append

    async def call(hold: asyncio.Event | None = None) -> None:
        async with gate.slot(0):
            if hold is not None:
                await hold.wait()

    async def scenario() -> None:
        hold = asyncio.Event()
        first = asyncio.ensure_future(call(hold))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(call())
        await asyncio.sleep(0)
        hold.set()
        await asyncio.gather(first, second)

    asyncio.run(scenario())
    assert announced == [1]  # the first handed its slot on; the second left it free
