"""Reconciles woken together start in turns of the event loop, with other work in between."""

from __future__ import annotations

import asyncio
import itertools

from paraserve.controller.running.start_turns import StartTurns


def run(workers: int, turns: StartTurns | None) -> list[str]:
    """The order in which the workers' first stretches and another task's steps ran."""
    order: list[str] = []

    async def worker(number: int) -> None:
        if turns is not None:
            await turns.take()
        order.append(f"start {number}")

    async def other_work() -> None:
        for _ in range(4 * workers):
            order.append("other")
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(other_work(), *(worker(number) for number in range(workers)))

    asyncio.run(main())
    return order


def starts_back_to_back(order: list[str]) -> int:
    return sum(
        1
        for first, second in itertools.pairwise(order)
        if first.startswith("start") and second.startswith("start")
    )


def test_without_turns_every_worker_starts_in_the_same_turn() -> None:
    assert starts_back_to_back(run(50, None)) == 49


def test_with_turns_other_work_runs_between_any_two_starts_and_every_worker_starts() -> None:
    order = run(50, StartTurns())
    assert starts_back_to_back(order) == 0
    starts = [entry for entry in order if entry.startswith("start")]
    assert starts == [f"start {number}" for number in range(50)]  # in the order they came
