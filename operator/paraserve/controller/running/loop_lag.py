"""How long the event loop is held: a timer that should fire every 0.1 s, and how late it fires.

Everything of the operator (watch handlers, reconciles, the webhook) shares one event loop; a
handler or a plan that holds it delays all of them. The lateness is the operator's metric
`paraserve_operator_event_loop_lag_seconds` (and its worst, `…_max_seconds`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

EVERY: Final = 0.1


async def sample(observe: Callable[[float], None], every: float = EVERY) -> None:
    """Observe, forever, how late each `every`-second sleep wakes up."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(every)
        observe(max(0.0, loop.time() - start - every))
