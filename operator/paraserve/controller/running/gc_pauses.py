"""How long Python's cyclic garbage collector holds the process, collection by collection.

A full collection walks every object the process tracks; with the indexes of 10,000 pods that
is seconds on a loaded machine, and nothing else of the operator runs meanwhile (the collector
holds the GIL). The pauses are the operator's metric `paraserve_operator_gc_pause_seconds` by
generation (and the worst, `…_max_seconds`), beside the event loop's lag.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any


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
