"""Status: phases, conditions, the READY column, and writes only when something changed."""

from __future__ import annotations

from typing import Any

from tests.builders import review_spec

from paraserve.api import FailurePolicy, Finding, InferenceDeploymentSpec
from paraserve.controller.rank_pods import RankPod
from paraserve.controller.reconciling.deployment_status import (
    Observation,
    desired_status,
    phase_event,
    phase_of,
    status_patch,
)
from paraserve.controller.reconciling.gang import Decision, GangState, ReplicaState
from paraserve.planner import Pool, plan

NOW = "2026-01-01T00:00:00Z"


def spec() -> InferenceDeploymentSpec:
    """The review's scenario on a pool of any node (the test's one node carries no pool label)."""
    return review_spec(model={"name": "m", "dtype": "float16", "parameters": "70B",
                              "architecture": {"numLayers": 80}}, placement={})  # fmt: skip


def pods(n: int = 8, **kw: Any) -> list[RankPod]:
    base: dict[str, Any] = {"phase": "Running", "ready": True, "node": "n0", "template_hash": "h"}
    base.update(kw)
    return [RankPod(name=f"d-0-{k}", uid=str(k), replica=0, rank=k, **base) for k in range(n)]


def observe(
    the_spec: InferenceDeploymentSpec | None = None,
    observed: list[RankPod] | None = None,
    rejection: Finding | None = None,
    decision: Decision | None = None,
    state: GangState = GangState(),  # noqa: B008
) -> Observation:
    the_spec = the_spec or spec()
    node = {
        "metadata": {"name": "n0"},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": 8}},
    }
    verdict = plan(the_spec, Pool.from_objects([node], [], the_spec))
    return Observation(
        name="d",
        generation=3,
        spec=the_spec,
        plan=verdict,
        rejection=rejection,
        decision=decision or Decision(state=state, state_changed=False),
        pods=observed if observed is not None else [],
        state=state,
        gpus_free=0,
    )


def test_ready_status_fields_and_column():
    status = desired_status(observe(observed=pods()), {}, NOW)
    assert status["phase"] == "Ready"
    assert status["ranks"] == {"ready": 8, "total": 8, "summary": "8/8"}
    assert status["worldSize"] == 8 and status["gpusRequired"] == 8
    assert status["observedGeneration"] == 3
    assert status["selector"] == "paraserve.dev/deployment=d" and status["replicas"] == 1
    assert [s["layers"] for s in status["plan"]["stages"]] == [
        [0, 20],
        [20, 40],
        [40, 60],
        [60, 80],
    ]
    assert status["memory"].startswith("~34.25 GB/80 GB")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Validated"]["status"] == "True"
    assert conditions["Scheduled"]["status"] == "True"
    assert conditions["Ready"]["status"] == "True"


def test_phases():
    assert phase_of(observe(observed=pods(ready=False))) == "Running"
    assert phase_of(observe(observed=pods(phase="Pending", ready=False, node=None))) == "Scheduling"
    assert phase_of(observe(observed=pods(5))) == "Scheduling"
    waiting = Decision(state=GangState(), state_changed=False, waiting=(0,))
    assert phase_of(observe(decision=waiting)) == "Waiting"
    restarting = Decision(state=GangState(), state_changed=False, restarting=(0,))
    assert phase_of(observe(observed=pods(), decision=restarting)) == "Degraded"
    crash = GangState(replicas={0: ReplicaState(recreating=True, attempt=5)})
    failing = Decision(state=crash, state_changed=False, restarting=(0,))
    assert phase_of(observe(decision=failing, state=crash)) == "Failed"


def test_rejection_creates_nothing_and_explains():
    finding = Finding(code="InsufficientGPUs", message="PP=8 × TP=2 = 16 GPUs required; …")
    status = desired_status(observe(rejection=finding), {}, NOW)
    assert status["phase"] == "Rejected"
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False" and validated["reason"] == "InsufficientGPUs"
    assert validated["message"].startswith("PP=8 × TP=2 = 16")


def test_an_invalid_change_keeps_the_running_pods_serving():
    finding = Finding(code="InsufficientGPUs", message="…")
    status = desired_status(observe(observed=pods(), rejection=finding), {}, NOW)
    assert status["phase"] == "Ready"
    assert status["ranks"]["summary"] == "8/8"


def test_no_write_when_nothing_changed_and_times_are_kept():
    first = desired_status(observe(observed=pods()), {}, NOW)
    current = {**first, "measured": {"throughputRps": 3.0}}
    again = desired_status(observe(observed=pods()), current, "2026-01-01T01:00:00Z")
    assert status_patch(current, {**again, "memory": current["memory"]}) == {}
    # A change of one condition writes only what changed, and moves only its time.
    later = desired_status(observe(observed=pods(ready=False)), current, "2026-01-01T02:00:00Z")
    patch = status_patch(current, later)
    assert set(patch) == {"phase", "ranks", "conditions"}
    times = {c["type"]: c["lastTransitionTime"] for c in patch["conditions"]}
    assert times == {
        "Validated": NOW,
        "Scheduled": NOW,
        "Ready": "2026-01-01T02:00:00Z",
    }


def test_measurement_fields_are_left_alone():
    current = {
        "measured": {"throughputRps": 3.0},
        "memory": "30 GB/80 GB (37.5%)",
        "conditions": [{"type": "MeetsSLO", "status": "True", "reason": "Met", "message": ""}],
    }
    status = desired_status(observe(observed=pods()), current, NOW)
    assert "memory" not in status and "measured" not in status
    assert any(c["type"] == "MeetsSLO" for c in status["conditions"])


def test_events_on_phase_changes_and_new_rejection_codes():
    ready = desired_status(observe(observed=pods()), {}, NOW)
    assert phase_event({}, ready, observe(observed=pods()))[:2] == ("Normal", "Ready")
    assert phase_event(ready, ready, observe(observed=pods())) is None
    empty = Finding(code="NoMatchingNodes", message="the pool is empty")
    small = Finding(code="InsufficientGPUs", message="PP=8 × TP=2 = 16 GPUs required; …")
    first = desired_status(observe(rejection=empty), {}, NOW)
    assert phase_event({}, first, observe(rejection=empty))[:2] == ("Warning", "NoMatchingNodes")
    second = desired_status(observe(rejection=small), first, NOW)
    assert first["phase"] == second["phase"] == "Rejected"
    assert phase_event(first, second, observe(rejection=small))[:2] == (
        "Warning",
        "InsufficientGPUs",
    )
    assert phase_event(second, second, observe(rejection=small)) is None


def test_progress_only_patches_are_recognised():
    from paraserve.controller.reconciling.deployment_status import is_progress_only

    current = desired_status(observe(observed=pods(ready=False)), {}, NOW)
    some_ready = [
        p if p.rank > 3 else RankPod(**{**p.__dict__, "ready": True}) for p in pods(ready=False)
    ]
    progress = status_patch(current, desired_status(observe(observed=some_ready), current, NOW))
    assert set(progress) == {"ranks", "conditions"} and is_progress_only(current, progress)
    done = status_patch(current, desired_status(observe(observed=pods()), current, NOW))
    assert "phase" in done and not is_progress_only(current, done)


def test_a_plan_field_that_disappears_is_nulled_and_then_nothing_is_written():
    """gpu.memory removed: plan.utilization goes; the merge patch must say so with a null."""
    from paraserve.controller import merge_patch

    before = desired_status(observe(observed=pods()), {}, NOW)
    assert before["plan"]["utilization"] is not None
    without_memory = spec().model_copy(
        update={"gpu": spec().gpu.model_copy(update={"memory": None})}
    )
    after = desired_status(observe(without_memory, observed=pods()), before, NOW)
    assert "utilization" not in after["plan"]
    patch = status_patch(before, after)
    assert patch["plan"]["utilization"] is None
    stored = merge_patch.apply(before, patch)
    assert stored["plan"] == after["plan"]
    again = desired_status(observe(without_memory, observed=pods()), stored, NOW)
    assert status_patch(stored, again) == {}


def test_a_replica_stopped_by_the_failure_policy_is_failed_with_the_counts():
    the_spec = spec().model_copy(
        update={"failure_policy": FailurePolicy(max_restarts=2, restart_window=1800)}
    )
    stopped = GangState(
        replicas={0: ReplicaState(stopped=True, stopped_generation=3, failures=(1.0, 2.0, 3.0))},
        restarts=2,
    )
    decision = Decision(state=stopped, state_changed=False, stopped=(0,))
    status = desired_status(observe(the_spec, decision=decision, state=stopped), {}, NOW)
    assert status["phase"] == "Failed" and status["restarts"] == 2
    conditions = {c["type"]: c for c in status["conditions"]}
    for type_ in ("Scheduled", "Ready"):
        assert conditions[type_]["status"] == "False"
        assert conditions[type_]["reason"] == "RestartLimitExceeded"
    assert conditions["Ready"]["message"] == (
        "replica 0 failed 3 times within 30m, more than failurePolicy.maxRestarts 2: stopped,"
        " its pods deleted; edit the spec to start it again"
    )
    assert conditions["Validated"]["status"] == "True"
    # Once the edit started it again, the phase follows the pods as before.
    assert phase_of(observe(the_spec, observed=pods())) == "Ready"
