"""A deduplicating work queue of deployment keys, as controller-runtime has: one worker per key.

Watch events only say "look at this deployment again"; the reconcile reads the current state
from the in-memory indexes. A key added while it is being reconciled is reconciled once more
afterwards, so no change is lost and no deployment is reconciled twice at the same time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, observe_wait: Callable[[float], None] | None = None) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        # Seconds from a key's queueing to a worker taking it.
        self._observe_wait = observe_wait or (lambda seconds: None)
        self._since: dict[K, float] = {}
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._since[key] = time.monotonic()
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Reconcile `key` again after `delay` seconds (the earliest request wins)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled():
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        key = await self._queue.get()
        self._queued.discard(key)
        since = self._since.pop(key, None)
        if since is not None:
            self._observe_wait(time.monotonic() - since)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
