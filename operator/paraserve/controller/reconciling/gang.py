"""Pure decisions about replicas as gangs: what to create, what to delete, when to retry.

A replica is formed once all its ranks have been seen at the same time. Before that, missing
ranks are filled in (an operator killed mid-creation converges). After that, any rank that
fails, is evicted, is deleted or disappears fails the whole replica: it is deleted and,
after an exponential back-off, recreated — unless it failed more than the failure policy's
`maxRestarts` times within its window: then it is stopped until the spec is edited. A replica
the measurement loop reports stalled is restarted the same way. The state that must survive an
operator restart (formed, recreating, back-off, restarts and their times, stopped) is kept in
one annotation on the deployment.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from paraserve.controller.rank_pods import RankPod

GANG_ANNOTATION: Final = "paraserve.dev/gang"

# Beyond any cap in seconds (2**62 s), small enough for a float.
MAX_EXPONENT: Final = 62

# Event reasons of a gang failure (the reconcile counts them and checks the namespace first).
REPLICA_RESTART: Final = "ReplicaRestart"
REPLICA_STALLED: Final = "ReplicaStalled"
RESTART_LIMIT_EXCEEDED: Final = "RestartLimitExceeded"
FAILURE_REASONS: Final = frozenset({REPLICA_RESTART, REPLICA_STALLED, RESTART_LIMIT_EXCEEDED})


@dataclass(frozen=True)
class RestartLimit:
    """failurePolicy as the gang sees it: at most `max_restarts` (None: no limit) restarts of
    one replica within `window` seconds."""

    max_restarts: int | None = None
    window: float = 3600.0

    def kept(self, times: Iterable[float], now: float) -> tuple[float, ...]:
        """The restart times still inside the window; only as many as the limit needs, so the
        annotation stays small (none without a limit)."""
        if self.max_restarts is None:
            return ()
        recent = [t for t in times if now - t < self.window]
        return tuple(recent[-(self.max_restarts + 1) :])

    def exceeded(self, times: tuple[float, ...]) -> bool:
        return self.max_restarts is not None and len(times) > self.max_restarts


@dataclass(frozen=True)
class ReplicaState:
    """What must be remembered about one replica across reconciles and operator restarts."""

    formed: bool = False
    formed_at: float | None = None
    # Deleted on purpose and waiting to be created again (after not_before).
    recreating: bool = False
    not_before: float = 0.0
    # Consecutive failures, for the back-off; reset once a replica ran long enough.
    attempt: int = 0
    # When it failed, within the failure policy's window (wall-clock seconds, oldest first).
    failures: tuple[float, ...] = ()
    # Stopped by the failure policy at this spec generation: not recreated until it changes.
    stopped: bool = False
    stopped_generation: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"formed": self.formed, "attempt": self.attempt}
        if self.formed_at is not None:
            out["formedAt"] = round(self.formed_at, 3)
        if self.recreating:
            out["recreating"] = True
            out["notBefore"] = round(self.not_before, 3)
        if self.failures:
            out["failures"] = [round(t, 3) for t in self.failures]
        if self.stopped:
            out["stopped"] = True
            if self.stopped_generation is not None:
                out["stoppedGeneration"] = self.stopped_generation
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplicaState:
        formed_at = data.get("formedAt")
        generation = data.get("stoppedGeneration")
        return cls(
            formed=bool(data.get("formed", False)),
            formed_at=float(formed_at) if formed_at is not None else None,
            recreating=bool(data.get("recreating", False)),
            not_before=float(data.get("notBefore", 0.0)),
            attempt=int(data.get("attempt", 0)),
            failures=tuple(float(t) for t in data.get("failures") or ()),
            stopped=bool(data.get("stopped", False)),
            stopped_generation=int(generation) if generation is not None else None,
        )


@dataclass(frozen=True)
class GangState:
    """The gang annotation: per-replica state and the total of restarts."""

    replicas: Mapping[int, ReplicaState] = field(default_factory=dict)
    restarts: int = 0

    def replica(self, index: int) -> ReplicaState:
        return self.replicas.get(index, ReplicaState())

    def serialize(self) -> str:
        body = {
            "restarts": self.restarts,
            "replicas": {str(r): s.to_json() for r, s in sorted(self.replicas.items())},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str | None) -> GangState:
        """From the annotation (none: a fresh start); CorruptGangState when unreadable."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            replicas = {
                int(key): ReplicaState.from_json(value)
                for key, value in (data.get("replicas") or {}).items()
            }
            restarts = int(data.get("restarts", 0))
        except (ValueError, TypeError, AttributeError) as error:
            raise CorruptGangState(
                f"annotation {GANG_ANNOTATION} is unreadable ({error}): {text[:80]!r}"
            ) from None
        if restarts < 0 or any(r < 0 for r in replicas):
            raise CorruptGangState(f"annotation {GANG_ANNOTATION} has negative counts")
        return cls(replicas=replicas, restarts=restarts)

    @classmethod
    def recovered(cls, pods: Iterable[RankPod], restarts: int) -> GangState:
        """The state rebuilt when the annotation is lost: every replica with pods counts as
        formed (a missing rank restarts its gang rather than joining one that cannot take it),
        and the total of restarts is the one status showed."""
        holding = {p.replica for p in pods if not p.terminating}
        return cls(
            replicas={r: ReplicaState(formed=True) for r in sorted(holding)},
            restarts=max(0, restarts),
        )


class CorruptGangState(ValueError):
    """The gang annotation cannot be read: restarts and back-off would silently start over."""


@dataclass(frozen=True)
class Backoff:
    """Delay before a failed replica is recreated: base × 2^(attempt-1), capped."""

    base: float = 5.0
    cap: float = 300.0
    # A replica formed this long ago counts as healthy: its next failure starts over.
    reset_after: float = 600.0

    def delay(self, attempt: int) -> float:
        # The exponent is capped, not the result: 2**1024 does not fit a float.
        exponent = min(max(attempt - 1, 0), MAX_EXPONENT)
        return float(min(self.cap, self.base * 2.0**exponent))


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What one reconcile must do, in order: persist state, delete, create."""

    state: GangState
    state_changed: bool
    delete: tuple[RankPod, ...] = ()
    # (replica, ranks) to create; ranks None means the whole replica.
    create: tuple[tuple[int, tuple[int, ...] | None], ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    waiting: tuple[int, ...] = ()  # replicas that wait for free GPUs
    restarting: tuple[int, ...] = ()  # replicas deleted and not yet recreated
    rolling: bool = False  # some replica runs an outdated template
    stopped: tuple[int, ...] = ()  # replicas stopped by the failure policy


@dataclass
class _Builder:
    replicas: dict[int, ReplicaState]
    restarts: int
    delete: list[RankPod] = field(default_factory=list)
    create: list[tuple[int, tuple[int, ...] | None]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue: list[float] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    restarting: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)


def group_by_replica(pods: Iterable[RankPod]) -> dict[int, list[RankPod]]:
    grouped: dict[int, list[RankPod]] = {}
    for pod in pods:
        grouped.setdefault(pod.replica, []).append(pod)
    for members in grouped.values():
        members.sort(key=lambda p: p.rank)
    return grouped


def decide(
    *,
    desired_replicas: int,
    world_size: int,
    template_hash: str,
    pods: Iterable[RankPod],
    state: GangState,
    now: float,
    fits: Callable[[int, int], bool],
    backoff: Backoff = Backoff(),
    recheck_after: float = 2.0,
    unschedulable_after: float = 120.0,
    start_after: float | None = None,
    limit: RestartLimit = RestartLimit(),
    generation: int | None = None,
    stalled: Mapping[int, str] | None = None,
) -> Decision:
    """One step towards `desired_replicas` gangs of `world_size` ranks of `template_hash`.

    `fits(n, r)` says whether n replicas, the n-th being replica r, fit the GPUs free now
    (own pods counted as free). A rank the scheduler cannot place for `unschedulable_after`
    seconds fails its gang, so a half-placed replica gives its GPUs back and waits; so does
    one bound to a node but not started within `start_after` seconds. `stalled` maps a replica
    to why it is stuck (the measurement loop's report): it fails its gang too. A replica that
    failed more often than `limit` allows is stopped until the spec's `generation` changes.
    """
    by_replica = group_by_replica(pods)
    b = _Builder(replicas=dict(state.replicas), restarts=state.restarts)
    holding = {r for r, members in by_replica.items() if members}
    to_create: list[int] = []

    # Scale down: whole replicas beyond the desired count go, highest first.
    for r in sorted(set(by_replica) | set(b.replicas), reverse=True):
        if r < desired_replicas:
            continue
        alive = [p for p in by_replica.get(r, []) if not p.terminating]
        if alive:
            b.delete.extend(alive)
            b.events.append(Event("Normal", "ScaledDown", f"deleting replica {r}"))
        b.replicas.pop(r, None)

    for r in range(desired_replicas):
        members = by_replica.get(r, [])
        current = b.replicas.get(r, ReplicaState())
        if current.stopped:
            if generation is None or current.stopped_generation == generation:
                b.delete.extend(p for p in members if not p.terminating)
                b.stopped.append(r)
                continue
            # The spec was edited: the replica starts over, its failures forgotten (as a new
            # Job would), once what is left of its pods is gone.
            current = ReplicaState(recreating=True, not_before=now)
            b.replicas[r] = current
        if current.recreating:
            _continue_recreation(b, r, members, current, now, to_create, recheck_after)
            continue
        if not members:
            to_create.append(r)
            continue
        broken = [p for p in members if p.broken or p.stuck(now, unschedulable_after, start_after)]
        present = {p.rank for p in members}
        missing = [k for k in range(world_size) if k not in present]
        if broken or (current.formed and missing and not _outdated(members, template_hash)):
            why = broken[0].why if broken else f"rank {missing[0]} of replica {r} disappeared"
            _fail(b, r, members, current, now, backoff, limit, generation, why, REPLICA_RESTART)
            continue
        if current.formed and stalled and r in stalled and not _outdated(members, template_hash):
            _fail(
                b, r, members, current, now, backoff, limit, generation, stalled[r], REPLICA_STALLED
            )
            continue
        if _outdated(members, template_hash):
            continue  # replaced as a whole by the rolling update, never patched up
        if missing:
            # Not formed yet: the creation was interrupted or is still being observed.
            b.create.append((r, tuple(missing)))
            continue
        if not current.formed:
            b.replicas[r] = replace(current, formed=True, formed_at=now)

    _roll_one(b, by_replica, desired_replicas, world_size, template_hash, now)

    # New and recreated replicas start only while the free GPUs hold them.
    active = len(holding)
    for r in sorted(to_create):
        if fits(active + 1, r):
            active += 1
            b.create.append((r, None))
            previous = b.replicas.get(r, ReplicaState())
            b.replicas[r] = ReplicaState(attempt=previous.attempt, failures=previous.failures)
        else:
            b.waiting.append(r)

    new_state = GangState(replicas=b.replicas, restarts=b.restarts)
    rolling = any(
        p.template_hash != template_hash or p.rank >= world_size
        for r, members in by_replica.items()
        if r < desired_replicas
        for p in members
    )
    return Decision(
        state=new_state,
        state_changed=new_state.serialize() != state.serialize(),
        delete=tuple(b.delete),
        create=tuple(b.create),
        events=tuple(b.events),
        requeue_after=min(b.requeue) if b.requeue else None,
        waiting=tuple(b.waiting),
        restarting=tuple(sorted(set(b.restarting))),
        rolling=rolling,
        stopped=tuple(b.stopped),
    )


def _continue_recreation(
    b: _Builder,
    r: int,
    members: list[RankPod],
    current: ReplicaState,
    now: float,
    to_create: list[int],
    recheck_after: float,
) -> None:
    """A replica deleted on purpose: wait until its pods are gone and its back-off is over."""
    b.restarting.append(r)
    if members:
        b.delete.extend(p for p in members if not p.terminating)
        b.requeue.append(recheck_after)
    elif now < current.not_before:
        b.requeue.append(current.not_before - now)
    else:
        to_create.append(r)


def _fail(
    b: _Builder,
    r: int,
    members: list[RankPod],
    current: ReplicaState,
    now: float,
    backoff: Backoff,
    limit: RestartLimit,
    generation: int | None,
    why: str,
    reason: str,
) -> None:
    """A formed replica failed: recreate it after its back-off, or stop it past the limit."""
    failures = limit.kept((*current.failures, now), now)
    b.delete.extend(p for p in members if not p.terminating)
    if limit.exceeded(failures):
        b.replicas[r] = ReplicaState(
            attempt=current.attempt,
            failures=failures,
            stopped=True,
            stopped_generation=generation,
        )
        b.stopped.append(r)
        message = stop_message(r, len(failures), limit, why)
        b.events.append(Event("Warning", RESTART_LIMIT_EXCEEDED, message))
        return
    healthy_long_enough = (
        current.formed_at is not None and now - current.formed_at >= backoff.reset_after
    )
    attempt = 1 if healthy_long_enough else current.attempt + 1
    delay = backoff.delay(attempt)
    b.replicas[r] = ReplicaState(
        recreating=True, not_before=now + delay, attempt=attempt, failures=failures
    )
    b.restarts += 1
    b.restarting.append(r)
    b.requeue.append(delay)
    b.events.append(
        Event(
            "Warning",
            reason,
            f"{why}: recreating replica {r} as a gang in {delay:g}s (restart {b.restarts})",
        )
    )


def stop_message(r: int, failures: int, limit: RestartLimit, why: str | None = None) -> str:
    """One line with the counts: why replica r was stopped and what starts it again."""
    cause = f" (last: {why})" if why else ""
    return (
        f"replica {r} failed {failures} times within"
        f" {_span(limit.window)}, more than failurePolicy.maxRestarts {limit.max_restarts}"
        f"{cause}: stopped, its pods deleted; edit the spec to start it again"
    )


def _span(seconds: float) -> str:
    """1h, 30m, 90s: the window as a person writes it."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _outdated(members: Iterable[RankPod], template_hash: str) -> bool:
    return any(p.template_hash != template_hash for p in members)


def _roll_one(
    b: _Builder,
    by_replica: Mapping[int, list[RankPod]],
    desired_replicas: int,
    world_size: int,
    template_hash: str,
    now: float,
) -> None:
    """Replace one outdated replica at a time, while every up-to-date one is available.

    GPUs are scarce, so there is no surge: a replica is deleted, then created anew.
    Outdated replicas that are not serving anyway go first.
    """

    def available(r: int) -> bool:
        members = by_replica.get(r, [])
        state = b.replicas.get(r, ReplicaState())
        return (
            not state.recreating
            and bool(members)
            and (state.formed or len(members) >= world_size)
            and all(p.ready and not p.broken for p in members)
        )

    outdated = [
        r
        for r in range(desired_replicas)
        if not b.replicas.get(r, ReplicaState()).recreating
        and _outdated(by_replica.get(r, []), template_hash)
    ]
    if not outdated:
        return
    unavailable = [r for r in range(desired_replicas) if not available(r)]
    if any(r not in outdated for r in unavailable):
        return  # an up-to-date replica is still coming up: one at a time
    r = next((r for r in outdated if r in unavailable), outdated[0])
    members = by_replica.get(r, [])
    previous = b.replicas.get(r, ReplicaState())
    b.replicas[r] = ReplicaState(
        recreating=True, not_before=now, attempt=previous.attempt, failures=previous.failures
    )
    b.delete.extend(p for p in members if not p.terminating)
    b.restarting.append(r)
    b.requeue.append(2.0)
    b.events.append(
        Event("Normal", "RollingUpdate", f"replacing replica {r} with the new template")
    )
