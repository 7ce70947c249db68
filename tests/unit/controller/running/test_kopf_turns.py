"""kopf's watch stream hands the event loop back between events, however fast they arrive."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kopf._cogs.clients import watching

from paraserve.controller.running import kopf_turns


async def _burst(**_: Any) -> AsyncIterator[int]:
    """A stream whose events are all buffered already: it never suspends."""
    for event in range(5):
        yield event


def test_other_tasks_run_between_events_of_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf_turns, "_infinite_watch", _burst)

    async def scenario() -> list[str]:
        seen: list[str] = []

        async def other() -> None:
            while True:
                seen.append("other")
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other())
        await asyncio.sleep(0)
        async for event in kopf_turns.infinite_watch_in_turns():
            seen.append(f"event {event}")
        ticker.cancel()
        return seen

    seen = asyncio.run(scenario())
    events = [i for i, item in enumerate(seen) if item.startswith("event")]
    assert len(events) == 5
    # Between any two events of the burst, the other task ran.
    assert all("other" in seen[a:b] for a, b in itertools.pairwise(events))


def test_install_replaces_the_watch_kopf_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)
    kopf_turns.install()
    assert watching.infinite_watch is kopf_turns.infinite_watch_in_turns
