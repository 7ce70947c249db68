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


def longest_run_of_starts(order: list[str]) -> int:
    """The most workers' first stretches that ran with no other work between them."""
    return max(
        len(list(run))
        for starting, run in itertools.groupby(order, key=lambda entry: entry.startswith("start"))
        if starting
    )


def test_without_turns_every_worker_starts_in_the_same_turn() -> None:
    assert longest_run_of_starts(run(50, None)) == 50


def test_one_per_turn_other_work_runs_between_any_two_starts() -> None:
    order = run(50, StartTurns(per_turn=1))
    assert longest_run_of_starts(order) == 1
    starts = [entry for entry in order if entry.startswith("start")]
    assert starts == [f"start {number}" for number in range(50)]  # in the order they came


def test_a_few_per_turn_and_every_worker_starts_in_order() -> None:
    order = run(50, StartTurns(per_turn=4))
    assert longest_run_of_starts(order) == 4
    starts = [entry for entry in order if entry.startswith("start")]
    assert starts == [f"start {number}" for number in range(50)]  # in the order they came
