"""Python's cyclic garbage collector in the operator: how often it runs, and how long it holds us.

A full collection walks every object the process tracks; with the indexes of 10,000 pods that
is seconds on a loaded machine, and nothing else of the operator runs meanwhile (the collector
holds the GIL). With the interpreter's thresholds (700, 10, 10) the operator collected fully
137 times in one run of the scale bench, 90 s in all: every pod event replaces its index entries,
and the new ones, surviving the young generations, count towards the next full collection
although the old ones were already freed by their reference counts. What the operator holds
is nearly all JSON (dicts, lists, strings: no cycles), so it collects far less often.

The pauses are the operator's metric `paraserve_operator_gc_pause_seconds` by generation (and
the worst, `…_max_seconds`), beside the event loop's lag.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any, Final

#: A young collection every 50,000 net allocations (not 700), the middle one every 20 young
#: ones, a full one after 100 middle ones at the soonest (and, as always, only once the objects
#: that survived into the oldest generation since the last are a quarter of those there).
THRESHOLDS: Final = (50_000, 20, 100)


def tune() -> None:
    """The operator's thresholds, for the whole process (set once, as it starts)."""
    gc.set_threshold(*THRESHOLDS)


class GcPauses:
    """Collects each collection's pause as it ends, to be handed on by `drain` on the loop.

    The collector's callback runs in whichever thread allocated, in the middle of anything: it
    only appends to a list (no lock a metric might hold in that same thread).
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._ended: list[tuple[int, float]] = []

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._ended.append((int(info["generation"]), time.perf_counter() - self._started))

    def install(self) -> Callable[[], None]:
        """Start timing collections; the returned function stops it."""
        gc.callbacks.append(self._callback)
        return lambda: gc.callbacks.remove(self._callback)

    def drain(self) -> list[tuple[int, float]]:
        """The (generation, seconds) of the collections ended since the last drain."""
        ended, self._ended = self._ended, []
        return ended


async def report(
    pauses: GcPauses, observe: Callable[[int, float], None], every: float = 1.0
) -> None:
    """Hand the pauses to `observe` every `every` seconds, forever (a task on the loop)."""
    while True:
        await asyncio.sleep(every)
        for generation, seconds in pauses.drain():
            observe(generation, seconds)
