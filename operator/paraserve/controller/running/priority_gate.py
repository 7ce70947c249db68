"""A limit on calls in flight that lets the most urgent waiting call through first.

A thread pool serves its queue in arrival order. While hundreds of deployments start, their
gang-annotation and progress writes fill that queue, and the one write a user waits for (a
deployment turning Ready) would wait behind all of them. The deployments' lane passes its
calls through this gate instead: as many in flight as the lane has threads, and when one ends
the next is the most urgent waiting (lowest number), in arrival order among equals.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable


class PriorityGate:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a gate needs room for at least one call, not {capacity}")
        self._free = capacity
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        #: Told how many calls could enter at once whenever a call leaves and nobody waits.
        self.on_room: Callable[[int], None] | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, granted in self._waiting if not granted.done())

    @property
    def full(self) -> bool:
        """A call entering now would have to wait. (Nobody waits while a slot is free: a
        leaving call hands its slot to a waiter before it frees one.)"""
        return self._free == 0

    @contextlib.asynccontextmanager
    async def slot(self, urgency: int) -> AsyncIterator[None]:
        """Held while the call is in flight; `urgency`: lower goes first."""
        await self._enter(urgency)
        try:
            yield
        finally:
            self._leave()

    async def _enter(self, urgency: int) -> None:
        if not self.full:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (urgency, next(self._arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            # Given the slot just as it was cancelled: hand the slot on. Cancelled while
            # waiting: its entry is done, and _leave passes over it.
            if granted.done() and not granted.cancelled():
                self._leave()
            raise

    def _leave(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1
        if self.on_room is not None:
            self.on_room(self._free)
