"""The toggle set kopf holds handlers on during its first listing: same answers, few wake-ups."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import orchestration, running

from paraserve.controller.running import kopf_toggles


class CountingCondition(asyncio.Condition):
    notified = 0

    def notify_all(self) -> None:
        type(self).notified += 1
        super().notify_all()


async def _listing(toggle_set: aiotoggles.ToggleSet, objects: int) -> tuple[int, int]:
    """kopf's pattern: each object adds a toggle, then drops it and waits for the set to be on.
    Returns how many waiters were released and how often the set woke its waiters."""
    toggle_set._condition = CountingCondition()  # type: ignore[attr-defined]
    CountingCondition.notified = 0
    released = 0

    async def worker(toggle: aiotoggles.Toggle) -> None:
        nonlocal released
        await asyncio.sleep(0)
        await toggle_set.drop_toggle(toggle)
        await toggle_set.wait_for(True)
        released += 1

    toggles = [await toggle_set.make_toggle(name=str(i)) for i in range(objects)]
    assert toggle_set.is_off()
    await asyncio.wait_for(asyncio.gather(*(worker(t) for t in toggles)), timeout=30)
    return released, CountingCondition.notified


def test_a_listing_of_many_objects_wakes_the_waiters_once_not_once_per_object() -> None:
    released, notified = asyncio.run(_listing(kopf_toggles.QuietToggleSet(all), 2000))
    assert released == 2000
    assert notified == 2  # the first toggle made it off, the last drop made it on

    # kopf's own set gives the same answer with a wake-up per add and per drop.
    released, notified = asyncio.run(_listing(aiotoggles.ToggleSet(all), 200))
    assert (released, notified) == (200, 400)


def test_a_waiter_is_held_while_any_toggle_is_off_and_a_toggle_flip_still_wakes_it() -> None:
    async def scenario() -> list[str]:
        toggle_set = kopf_toggles.QuietToggleSet(all)
        first = await toggle_set.make_toggle(name="first")
        second = await toggle_set.make_toggle(name="second")
        seen: list[str] = []

        async def waiter() -> None:
            await toggle_set.wait_for(True)
            seen.append("on")

        task = asyncio.create_task(waiter())
        await toggle_set.drop_toggle(first)
        await asyncio.sleep(0.01)
        seen.append("still held")
        await second.turn_to(True)  # a toggle's own change notifies as in kopf
        await asyncio.wait_for(task, timeout=5)
        await toggle_set.drop_toggles([second])
        return seen

    assert asyncio.run(scenario()) == ["still held", "on"]


def test_install_makes_kopfs_orchestration_build_the_quiet_set() -> None:
    kopf_toggles.install()
    # kopf names the class through the module at call time; a kopf that imports it by name
    # (or moves it) fails here rather than silently bringing back the storm.
    assert orchestration.aiotoggles is aiotoggles and running.aiotoggles is aiotoggles
    assert isinstance(aiotoggles.ToggleSet(all), kopf_toggles.QuietToggleSet)
    assert "aiotoggles.ToggleSet(all)" in Path(orchestration.__file__).read_text()
