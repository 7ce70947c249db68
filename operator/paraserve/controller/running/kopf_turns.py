"""kopf's watch streams, handing the event loop back after every event.

kopf's watcher reads a watch stream line by line and queues each event for its object's worker;
neither the read of a line already buffered nor the queueing suspends the task. While pods are
created by the thousand the stream arrives in bursts, and the watcher went through a whole
burst in one step: 300–960 ms in which no reconcile, status write or admission review could run
(the scale bench's 3,000 pods, each step over 150 ms logged). A turn between events bounds the
step to one event's work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from kopf._cogs.clients import watching

_infinite_watch = watching.infinite_watch


async def infinite_watch_in_turns(**kwargs: Any) -> AsyncIterator[Any]:
    """kopf's infinite_watch, with a turn of the event loop after each event it yields."""
    async for event in _infinite_watch(**kwargs):
        yield event
        await asyncio.sleep(0)


def install() -> None:
    """Make kopf's watchers use it (queueing names `watching.infinite_watch` at call time)."""
    watching.infinite_watch = infinite_watch_in_turns
