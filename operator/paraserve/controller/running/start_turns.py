"""Reconciles start one per turn of the event loop, so nothing else waits for hundreds of them.

A reconcile's first stretch (read the spec, plan against the pool, decide) runs without an
await: 4 ms at the median against 1,313 nodes. When hundreds of keys are queued at once (a burst
of GPU events looks at every waiting deployment again), as many workers wake in one turn of the
loop, and asyncio runs everything ready in a turn before any timer or socket: the scale bench at
10,000 pods found the loop held 1.9–2.6 s that way, sampled in a different reconcile each time.
Taking turns, a few at a time, the watches, the webhook and the timers get the loop between
batches of first stretches; the reconciles take as long as before in all.
"""

from __future__ import annotations

import asyncio
from typing import Final

#: Reconciles that may start in one turn: 16 first stretches of 4 ms are 64 ms. With one per
#: turn (tried first), the one run at 10,000 pods posted 5,701 creates again (409: the watch had
#: not shown the pods in time) and took 459 s to Running against 289 s without turns.
PER_TURN: Final = 16


class StartTurns:
    def __init__(self, per_turn: int = PER_TURN) -> None:
        self._starting = asyncio.Semaphore(per_turn)

    async def take(self) -> None:
        """Return in a turn of the loop with at most `per_turn - 1` other takers."""
        async with self._starting:
            # The next takers wake only in the turn after this one, once we have let go.
            await asyncio.sleep(0)
