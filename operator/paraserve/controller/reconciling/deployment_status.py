"""Pure status of a deployment from its plan and observed ranks, and the patch that writes it.

This is the one place status is computed. The operator owns every field but `measured`,
the `MeetsSLO` condition and (once measured) `memory`, which the measurement loop writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from paraserve.api import (
    ConditionType,
    Finding,
    InferenceDeploymentSpec,
    Phase,
    Plan,
    PlanStatus,
    RanksStatus,
    memory_column,
)
from paraserve.api.labels import LABEL_DEPLOYMENT
from paraserve.controller import merge_patch
from paraserve.controller.rank_pods import RankPod
from paraserve.controller.reconciling.gang import (
    RESTART_LIMIT_EXCEEDED,
    Decision,
    GangState,
    RestartLimit,
    stop_message,
)
from paraserve.planner import codes

#: Consecutive failures of one replica after which the deployment shows Failed (it still retries).
FAILED_AFTER_ATTEMPTS: Final = 5

#: Findings that stop the plan but are a wait, not a rejection: phase Waiting, not Rejected
#: (as a pod waits for a ConfigMap volume that does not exist yet); the webhook admits them.
WAITING_CODES: Final = frozenset({codes.CONFIG_MAP_NOT_FOUND})

#: Status fields written by the measurement loop, never by the reconcile.
MEASURED_FIELDS: Final = ("measured",)
MEASUREMENT_CONDITIONS: Final = (ConditionType.MEETS_SLO.value,)


@dataclass(frozen=True)
class Observation:
    """Everything the status of one deployment is computed from."""

    name: str
    generation: int | None
    spec: InferenceDeploymentSpec | None
    plan: Plan | None
    rejection: Finding | None
    decision: Decision | None
    pods: Sequence[RankPod]
    state: GangState
    gpus_free: int | None
    # Why an object could not be created: another object holds its name.
    name_taken: str | None = None

    @cached_property
    def counts(self) -> Counts | None:
        """The ranks by stage of life; phase, conditions and status all read them, once."""
        return _counts(self)


@dataclass(frozen=True)
class Counts:
    total: int
    present: int
    scheduled: int
    running: int
    ready: int


def count_ranks(spec: InferenceDeploymentSpec, pods: Sequence[RankPod]) -> Counts:
    """Ranks of the desired replicas, whatever template they run."""
    world_size = spec.parallelism.world_size
    wanted = [p for p in pods if p.replica < spec.replicas and p.rank < world_size and not p.broken]
    return Counts(
        total=spec.replicas * world_size,
        present=len(wanted),
        scheduled=sum(1 for p in wanted if p.node),
        running=sum(1 for p in wanted if p.running),
        ready=sum(1 for p in wanted if p.ready and p.running),
    )


def _counts(obs: Observation) -> Counts | None:
    if obs.spec is None:
        return None
    alive = [p for p in obs.pods if not p.broken]
    if obs.rejection is not None and alive:
        # An invalid change: the pods of the last valid version keep serving, whatever shape.
        return Counts(
            total=len(alive),
            present=len(alive),
            scheduled=sum(1 for p in alive if p.node),
            running=sum(1 for p in alive if p.running),
            ready=sum(1 for p in alive if p.ready and p.running),
        )
    return count_ranks(obs.spec, obs.pods)


def stopped_replicas(obs: Observation) -> list[int]:
    """Desired replicas the failure policy stopped (they stay stopped until the spec changes)."""
    if obs.spec is None:
        return []
    return [r for r in range(obs.spec.replicas) if obs.state.replica(r).stopped]


def _stopped_message(obs: Observation, stopped: Sequence[int]) -> str:
    assert obs.spec is not None
    policy = obs.spec.failure_policy
    limit = RestartLimit(max_restarts=policy.max_restarts, window=policy.restart_window)
    lines = [stop_message(r, len(obs.state.replica(r).failures), limit) for r in stopped[:1]]
    more = f" (and replicas {', '.join(str(r) for r in stopped[1:])})" if stopped[1:] else ""
    return lines[0] + more


def phase_of(obs: Observation) -> Phase:
    alive = [p for p in obs.pods if not p.terminating]
    if obs.spec is None or (obs.rejection is not None and not alive):
        waits = obs.rejection is not None and obs.rejection.code in WAITING_CODES
        return Phase.WAITING if waits and obs.spec is not None else Phase.REJECTED
    counts = obs.counts
    assert counts is not None
    decision = obs.decision
    if obs.spec.replicas == 0:
        return Phase.READY
    if stopped_replicas(obs):
        return Phase.FAILED  # stopped by failurePolicy: nothing retries until the spec changes
    if decision is not None:
        if any(obs.state.replica(r).attempt >= FAILED_AFTER_ATTEMPTS for r in decision.restarting):
            return Phase.FAILED
        if decision.restarting:
            return Phase.DEGRADED
        if decision.waiting:
            return Phase.WAITING if not alive else Phase.DEGRADED
    if counts.present < counts.total:
        return Phase.SCHEDULING
    if counts.ready == counts.total:
        return Phase.READY
    if counts.running == counts.total:
        return Phase.RUNNING
    return Phase.SCHEDULING


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
    }


def _plan_summary(spec: InferenceDeploymentSpec, plan: Plan) -> str:
    p = spec.parallelism
    text = (
        f"{spec.replicas} × PP={p.pipeline} × TP={p.tensor} (SP={p.sequence})"
        f" = {spec.gpus_required} GPUs required; pool has {plan.gpus_in_pool} allocatable"
    )
    if plan.memory.utilization is not None:
        text += f"; worst rank uses {plan.memory.utilization * 100:.1f} % of its GPU"
    notes = [w.message for w in plan.warnings]
    return "; ".join([text, *notes])


def conditions_of(obs: Observation, phase: Phase) -> list[dict[str, Any]]:
    """Validated, Scheduled and Ready, each with a reason and a message a person can act on."""
    spec, plan, decision = obs.spec, obs.plan, obs.decision
    if obs.rejection is not None:
        validated = _condition(
            ConditionType.VALIDATED, False, obs.rejection.code, obs.rejection.message
        )
    elif spec is not None and plan is not None:
        validated = _condition(ConditionType.VALIDATED, True, "Feasible", _plan_summary(spec, plan))
    else:
        validated = _condition(ConditionType.VALIDATED, False, "Unknown", "not planned yet")
    out = [validated]
    if spec is None or (obs.rejection is not None and phase in (Phase.REJECTED, Phase.WAITING)):
        reason = obs.rejection.code if obs.rejection else "Rejected"
        out.append(_condition(ConditionType.SCHEDULED, False, reason, "nothing is created"))
        out.append(_condition(ConditionType.READY, False, reason, "nothing is created"))
        return out
    counts = obs.counts
    assert counts is not None
    stopped = stopped_replicas(obs)
    if stopped:
        # Both say it: the ranks are gone on purpose, not pending and not merely unready.
        message = _stopped_message(obs, stopped)
        return [
            *out,
            _condition(ConditionType.SCHEDULED, False, RESTART_LIMIT_EXCEEDED, message),
            _condition(ConditionType.READY, False, RESTART_LIMIT_EXCEEDED, message),
        ]
    if obs.name_taken is not None:
        scheduled = _condition(ConditionType.SCHEDULED, False, _NAME_TAKEN, obs.name_taken)
    elif decision is not None and decision.waiting:
        warning = next((w for w in (plan.warnings if plan else []) if w.code == _FREE), None)
        replicas = ", ".join(str(r) for r in decision.waiting)
        message = warning.message if warning else f"replica {replicas} waits for free GPUs"
        scheduled = _condition(ConditionType.SCHEDULED, False, _FREE, message)
    elif decision is not None and decision.restarting:
        replicas = ", ".join(str(r) for r in decision.restarting)
        reason = "RollingUpdate" if decision.rolling else "ReplicaRestarting"
        scheduled = _condition(
            ConditionType.SCHEDULED, False, reason, f"replica {replicas} is being recreated"
        )
    elif counts.scheduled == counts.total:
        scheduled = _condition(
            ConditionType.SCHEDULED,
            True,
            "AllRanksScheduled",
            f"{counts.scheduled}/{counts.total} ranks scheduled",
        )
    else:
        scheduled = _condition(
            ConditionType.SCHEDULED,
            False,
            "RanksPending",
            f"{counts.scheduled}/{counts.total} ranks scheduled",
        )
    all_ready = counts.ready == counts.total
    ready = _condition(
        ConditionType.READY,
        all_ready,
        "AllRanksReady" if all_ready else "RanksNotReady",
        f"{counts.ready}/{counts.total} ranks ready",
    )
    return [*out, scheduled, ready]


_FREE: Final = "InsufficientFreeGPUs"
_NAME_TAKEN: Final = "NameTaken"


def desired_status(obs: Observation, current: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The operator-owned status fields (camelCase), conditions carrying their transition time."""
    phase = phase_of(obs)
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "phase": phase.value,
        "restarts": obs.state.restarts,
        "selector": f"{LABEL_DEPLOYMENT}={obs.name}",
        "replicas": len({p.replica for p in obs.pods if not p.terminating}),
    }
    spec, plan = obs.spec, obs.plan
    counts = obs.counts
    if spec is not None and counts is not None:
        status["worldSize"] = spec.parallelism.world_size
        status["gpusRequired"] = spec.gpus_required
        status["ranks"] = RanksStatus.of(counts.ready, counts.total).to_wire()
    if obs.gpus_free is not None:
        status["gpusFree"] = obs.gpus_free
    if plan is not None:
        status["plan"] = PlanStatus.from_plan(plan).to_wire()
        if not current.get("measured"):
            status["memory"] = memory_column(
                plan.memory.total_bytes, plan.memory.gpu_memory_bytes, estimated=True
            )
    status["conditions"] = _with_times(
        conditions_of(obs, phase), current.get("conditions") or [], obs.generation, now
    )
    return status


def _with_times(
    conditions: list[dict[str, Any]],
    previous: Sequence[Mapping[str, Any]],
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Keep lastTransitionTime while a condition's status holds; keep the measurement's own."""
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    out = []
    for condition in conditions:
        old = before.get(condition["type"])
        same = old is not None and old.get("status") == condition["status"]
        stamp = old.get("lastTransitionTime") if same and old is not None else None
        out.append(
            {
                **condition,
                "lastTransitionTime": stamp or now,
                **({"observedGeneration": generation} if generation is not None else {}),
            }
        )
    out += [dict(c) for t, c in before.items() if t in MEASUREMENT_CONDITIONS]
    return out


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch of the fields that differ; empty when nothing changed.

    Nested objects (plan, ranks) are patched key by key, with a null for each key that is
    no longer there (`plan.utilization` once `gpu.memory` is removed).
    """
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if old == value:
            continue
        both_objects = isinstance(value, Mapping) and isinstance(old, Mapping)
        patch[key] = merge_patch.diff(old, value) if both_objects else value
    owned_absent = ("plan", "gpusFree", "worldSize", "gpusRequired", "ranks")
    for key in owned_absent:
        if key not in desired and current.get(key) is not None:
            patch[key] = None
    return patch


def without_pool_churn(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The patch less a lone `gpusFree` change of a Ready deployment.

    `gpusFree` is the pool's, and moves whenever any deployment's pods come or go: rewritten on
    every Ready deployment for each such change, one gang restart among 300 deployments made
    ~900 status writes. It stays current while a deployment is not Ready (waiting for GPUs, it
    is what the user reads) and whenever anything of its own changes.
    """
    if set(patch) == {"gpusFree"} and current.get("phase") == Phase.READY:
        return {}
    return dict(patch)


_PROGRESS_FIELDS: Final = frozenset({"ranks", "gpusFree", "replicas", "conditions", "memory"})


def is_progress_only(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """The patch only moves counters: no phase, generation, plan or condition status change."""
    if not set(patch) <= _PROGRESS_FIELDS:
        return False
    if "conditions" not in patch:
        return True

    def verdicts(conditions: Any) -> set[tuple[Any, Any, Any]]:
        return {
            (c.get("type"), c.get("status"), c.get("reason"))
            for c in conditions or []
            if isinstance(c, Mapping)
        }

    return verdicts(current.get("conditions")) == verdicts(patch["conditions"])


def phase_event(
    current: Mapping[str, Any], desired: Mapping[str, Any], obs: Observation
) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event announcing a phase change, or None.

    A new reason to reject (e.g. the pool was empty, now it is too small) is announced too.
    """
    old, new = current.get("phase"), desired["phase"]
    if obs.rejection is not None and _validated_reason(current) != obs.rejection.code:
        return ("Warning", obs.rejection.code, obs.rejection.message)
    if old == new:
        return None
    counts = obs.counts
    ranks = f"{counts.ready}/{counts.total} ranks ready" if counts else ""
    if new == Phase.WAITING.value:
        warning = next(
            (w for w in (obs.plan.warnings if obs.plan else []) if w.code == _FREE), None
        )
        return ("Warning", _FREE, warning.message if warning else "waiting for free GPUs")
    kind = "Warning" if new in (Phase.DEGRADED.value, Phase.FAILED.value) else "Normal"
    previous = old or "new"
    return (kind, new, f"phase {previous} → {new}" + (f": {ranks}" if ranks else ""))


def _validated_reason(status: Mapping[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == ConditionType.VALIDATED:
            if condition.get("status") == "False":
                return str(condition.get("reason"))
            return None
    return None
