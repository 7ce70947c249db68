"""Reconciles start one per turn of the event loop, so nothing else waits for hundreds of them.

A reconcile's first stretch (read the spec, plan against the pool, decide) runs without an
await: 4 ms at the median against 1,313 nodes. When hundreds of keys are queued at once (a burst
of GPU events looks at every waiting deployment again), as many workers wake in one turn of the
loop, and asyncio runs everything ready in a turn before any timer or socket: the scale bench at
10,000 pods found the loop held 1.9–2.6 s that way, sampled in a different reconcile each time.
Taking turns, the watches, the webhook and the timers get the loop between two reconciles'
first stretches; the reconciles take as long as before in all.
"""

from __future__ import annotations

import asyncio


class StartTurns:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        """Return in a turn of the loop of its own: one turn after the previous taker's."""
        async with self._lock:
            # The next taker wakes only in the turn after this one, once we have let go.
            await asyncio.sleep(0)
