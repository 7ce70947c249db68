"""Hang detection, pure: a replica whose head has requests but generates no token.

Per head (rank 0) the loop keeps the last time its generated-token counter advanced while it
had requests waiting or running; an idle head is never stalled, so idling restarts the clock.
A stall is requests waiting or running and no progress for `failurePolicy.stallTimeout`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """The head's generated-token counter when last seen, and since when it has not moved
    while busy (monotonic seconds)."""

    tokens: float
    since: float


def busy(waiting: float | None, running: float | None) -> bool | None:
    """Whether the head has requests; None when it exports neither gauge (cannot judge)."""
    if waiting is None and running is None:
        return None
    return (waiting or 0) + (running or 0) > 0


def advance(
    previous: Progress | None, *, tokens: float | None, has_requests: bool | None, now: float
) -> Progress | None:
    """The head's progress after one scrape; None when it cannot be judged (a metric missing).

    Any change of the counter is progress (a drop is the process restarting: a new count).
    """
    if tokens is None or has_requests is None:
        return None
    if previous is None or not has_requests or tokens != previous.tokens:
        return Progress(tokens=tokens, since=now)
    return previous


def stalled(
    progress: Progress | None, *, has_requests: bool | None, now: float, timeout: float
) -> bool:
    """Requests waiting or running and no generated token for `timeout` seconds."""
    return bool(has_requests) and progress is not None and now - progress.since >= timeout
