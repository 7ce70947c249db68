"""The gang decisions: fill in, restart with back-off, scale, roll one replica at a time."""

from __future__ import annotations

from typing import Any

import pytest

from paraserve.controller.rank_pods import RankPod
from paraserve.controller.reconciling.gang import (
    Backoff,
    CorruptGangState,
    GangState,
    ReplicaState,
    RestartLimit,
    decide,
)

HASH = "new"


def pod(replica: int, rank: int, **kw: Any) -> RankPod:
    defaults: dict[str, Any] = {
        "phase": "Running",
        "ready": True,
        "node": "n0",
        "template_hash": HASH,
    }
    defaults.update(kw)
    return RankPod(
        name=f"d-{replica}-{rank}",
        uid=f"u-{replica}-{rank}",
        replica=replica,
        rank=rank,
        **defaults,
    )


def replica(r: int, world: int = 4, **kw: Any) -> list[RankPod]:
    return [pod(r, k, **kw) for k in range(world)]


def formed(*replicas: int) -> GangState:
    return GangState(replicas={r: ReplicaState(formed=True, formed_at=0.0) for r in replicas})


def run(pods: list[RankPod], state: GangState = GangState(), **kw: Any):  # noqa: B008
    args: dict[str, Any] = {
        "desired_replicas": 1,
        "world_size": 4,
        "template_hash": HASH,
        "pods": pods,
        "state": state,
        "now": 1000.0,
        "fits": lambda n, r: True,
        "backoff": Backoff(base=5, cap=40, reset_after=600),
    }
    args.update(kw)
    return decide(**args)


def test_fresh_deployment_creates_whole_replicas():
    decision = run([], desired_replicas=2)
    assert decision.create == ((0, None), (1, None))
    assert not decision.delete and not decision.waiting


def test_replicas_wait_for_free_gpus():
    decision = run([], desired_replicas=3, fits=lambda n, r: n <= 1)
    assert decision.create == ((0, None),)
    assert decision.waiting == (1, 2)


def test_all_present_marks_the_replica_formed():
    decision = run(replica(0))
    assert not decision.create and not decision.delete
    assert decision.state.replica(0).formed and decision.state_changed


def test_interrupted_creation_fills_in_missing_ranks_without_a_restart():
    decision = run(replica(0)[:2])
    assert decision.create == ((0, (2, 3)),)
    assert decision.state.restarts == 0 and not decision.delete


def test_a_deleted_rank_of_a_formed_replica_restarts_the_whole_gang():
    pods = replica(0)[:3] + replica(1)
    decision = run(pods, formed(0, 1), desired_replicas=2)
    assert {p.name for p in decision.delete} == {"d-0-0", "d-0-1", "d-0-2"}
    assert decision.state.restarts == 1
    assert decision.state.replica(0).recreating
    assert decision.state.replica(0).not_before == 1005.0
    assert not decision.state.replica(1).recreating  # the other replica is untouched
    assert decision.restarting == (0,)
    assert [e.reason for e in decision.events] == ["ReplicaRestart"]
    assert decision.requeue_after == 5


def test_a_failed_or_evicted_rank_restarts_the_gang():
    for broken in (pod(0, 2, phase="Failed"), pod(0, 2, phase="Failed", reason="Evicted")):
        pods = [p for p in replica(0) if p.rank != 2] + [broken]
        decision = run(pods, formed(0))
        assert len(decision.delete) == 4 and decision.state.restarts == 1


def test_terminating_rank_restarts_the_gang_but_is_not_deleted_again():
    pods = [p for p in replica(0) if p.rank != 1] + [pod(0, 1, terminating=True)]
    decision = run(pods, formed(0))
    assert {p.rank for p in decision.delete} == {0, 2, 3}


def test_recreation_waits_for_pods_to_go_then_for_the_back_off():
    state = GangState(replicas={0: ReplicaState(recreating=True, not_before=1010.0, attempt=1)})
    # Old pods are still there (the delete is in flight): delete again, idempotently.
    still = run(replica(0, terminating=True)[:2] + replica(0)[2:], state)
    assert {p.rank for p in still.delete} == {2, 3} and not still.create
    # Gone, but in back-off.
    waiting = run([], state)
    assert not waiting.create and waiting.requeue_after == 10.0
    # Back-off over: the whole replica is created and the flag cleared.
    ready = run([], state, now=1011.0)
    assert ready.create == ((0, None),)
    assert not ready.state.replica(0).recreating and ready.state.replica(0).attempt == 1


def test_back_off_doubles_and_resets_after_a_healthy_run():
    state = GangState(replicas={0: ReplicaState(formed=True, formed_at=990.0, attempt=3)})
    decision = run(replica(0)[:3], state)
    assert decision.state.replica(0).attempt == 4
    assert decision.state.replica(0).not_before == 1000.0 + 40  # 5·2³ = 40, the cap
    healthy = GangState(replicas={0: ReplicaState(formed=True, formed_at=0.0, attempt=3)})
    assert run(replica(0)[:3], healthy).state.replica(0).attempt == 1


def test_scale_down_deletes_whole_replicas_and_forgets_them():
    pods = replica(0) + replica(1) + replica(2)
    decision = run(pods, formed(0, 1, 2), desired_replicas=1)
    assert {p.replica for p in decision.delete} == {1, 2} and len(decision.delete) == 8
    assert set(decision.state.replicas) == {0}
    assert decision.state.restarts == 0


def test_rolling_update_replaces_one_replica_at_a_time():
    pods = replica(0, template_hash="old") + replica(1, template_hash="old")
    first = run(pods, formed(0, 1), desired_replicas=2)
    assert {p.replica for p in first.delete} == {0}
    assert first.state.replica(0).recreating and first.state.restarts == 0
    assert first.rolling and [e.reason for e in first.events] == ["RollingUpdate"]
    # Replica 0 recreated with the new template but not ready yet: replica 1 waits.
    pods = replica(0, ready=False, phase="Pending") + replica(1, template_hash="old")
    second = run(
        pods,
        first.state.__class__(replicas={0: ReplicaState(), 1: ReplicaState(formed=True)}),
        desired_replicas=2,
    )
    assert not second.delete
    # Replica 0 ready: now replica 1 goes.
    pods = replica(0) + replica(1, template_hash="old")
    third = run(pods, formed(0, 1), desired_replicas=2)
    assert {p.replica for p in third.delete} == {1}


def test_parallelism_change_is_a_roll_not_a_restart():
    # World size 4 → 8: the old replica has "missing" ranks but must be rolled, not restarted.
    decision = run(replica(0, template_hash="old"), formed(0), world_size=8)
    assert decision.state.restarts == 0 and len(decision.delete) == 4
    assert decision.state.replica(0).recreating


def test_gang_state_round_trips_and_an_unreadable_one_is_an_error_not_a_fresh_start():
    state = GangState(
        replicas={
            0: ReplicaState(formed=True, formed_at=1.5, attempt=2),
            3: ReplicaState(recreating=True, not_before=9.0),
        },
        restarts=4,
    )
    assert GangState.parse(state.serialize()) == state
    assert GangState.parse(None) == GangState()
    for garbage in ("not json", '{"replicas": {"x": {}}}', '{"restarts": -3}', "[1]"):
        with pytest.raises(CorruptGangState, match=r"paraserve\.dev/gang"):
            GangState.parse(garbage)
    # Rebuilt from what is certain: replicas with pods count as formed; restarts from status.
    rebuilt = GangState.recovered(replica(0) + replica(2), restarts=7)
    assert rebuilt.restarts == 7 and sorted(rebuilt.replicas) == [0, 2]
    assert all(s.formed for s in rebuilt.replicas.values())


def test_a_rank_unschedulable_for_too_long_fails_its_gang():
    stuck = pod(0, 3, node=None, phase="Pending", ready=False, unschedulable_since=900.0)
    pods = [*replica(0)[:3], stuck]
    assert not run(pods, unschedulable_after=120).delete  # 100 s: still waiting
    decision = run(pods, unschedulable_after=60)
    assert len(decision.delete) == 4 and decision.state.restarts == 1
    assert "could not be scheduled" in decision.events[0].message


def test_back_off_of_a_replica_crash_looping_for_days_stays_at_its_cap():
    backoff = Backoff(base=5.0, cap=300.0)  # seconds, as the flags give them
    assert [backoff.delay(a) for a in (1, 2, 3)] == [5, 10, 20]
    assert backoff.delay(1025) == backoff.delay(10**6) == 300
    # The decision itself: the 2000th consecutive failure is one more restart, not a crash.
    state = GangState(replicas={0: ReplicaState(formed=True, formed_at=999.0, attempt=2000)})
    decision = run(replica(0, phase="Failed"), state, backoff=backoff)
    assert decision.state.replica(0).attempt == 2001
    assert decision.requeue_after == 300


# -- failurePolicy: maxRestarts within restartWindow, and stalled replicas ------------------

LIMIT = RestartLimit(max_restarts=2, window=600.0)


def test_restart_times_inside_the_window_are_kept_in_the_annotation():
    decision = run(replica(0, phase="Failed"), formed(0), limit=LIMIT, generation=1)
    assert decision.state.replica(0).failures == (1000.0,)
    assert decision.events[0].reason == "ReplicaRestart"
    # They survive an operator restart: the annotation is all a new process reads.
    again = GangState.parse(decision.state.serialize())
    assert again.replica(0).failures == (1000.0,) and again.replica(0).recreating


def test_one_failure_more_than_max_restarts_within_the_window_stops_the_replica():
    state = GangState(
        replicas={0: ReplicaState(formed=True, formed_at=990.0, failures=(700.0, 900.0))},
        restarts=2,
    )
    decision = run(replica(0, phase="Failed"), state, limit=LIMIT, generation=4)
    assert len(decision.delete) == 4 and not decision.create
    assert decision.stopped == (0,) and not decision.restarting
    assert decision.state.restarts == 2  # stopped, not restarted
    stopped = decision.state.replica(0)
    assert stopped.stopped and stopped.stopped_generation == 4 and not stopped.recreating
    event = decision.events[0]
    assert event.type == "Warning" and event.reason == "RestartLimitExceeded"
    assert event.message.startswith(
        "replica 0 failed 3 times within 10m, more than failurePolicy.maxRestarts 2 (last: "
    )


def test_failures_older_than_the_window_do_not_count():
    state = GangState(
        replicas={0: ReplicaState(formed=True, formed_at=990.0, failures=(100.0, 300.0))}
    )
    decision = run(replica(0, phase="Failed"), state, limit=LIMIT, generation=1)
    assert not decision.stopped and decision.restarting == (0,)
    assert decision.state.replica(0).failures == (1000.0,)


def test_max_restarts_zero_stops_at_the_first_failure_and_no_limit_never_stops():
    zero = RestartLimit(max_restarts=0, window=600.0)
    assert run(replica(0, phase="Failed"), formed(0), limit=zero).stopped == (0,)
    unlimited = GangState(replicas={0: ReplicaState(formed=True, formed_at=999.0, attempt=50)})
    decision = run(replica(0, phase="Failed"), unlimited)
    assert not decision.stopped and decision.state.replica(0).failures == ()  # nothing kept


def test_a_stopped_replica_stays_stopped_and_its_pods_stay_deleted():
    state = GangState(replicas={0: ReplicaState(stopped=True, stopped_generation=4)})
    decision = run([], state, limit=LIMIT, generation=4)
    assert not decision.create and decision.stopped == (0,) and not decision.state_changed
    # A pod of it someone recreated by hand is deleted again.
    decision = run(replica(0)[:1], state, limit=LIMIT, generation=4)
    assert [p.name for p in decision.delete] == ["d-0-0"] and not decision.create


def test_an_edit_of_the_spec_starts_a_stopped_replica_again_with_its_failures_forgotten():
    state = GangState(
        replicas={0: ReplicaState(stopped=True, stopped_generation=4, failures=(1.0, 2.0, 3.0))}
    )
    decision = run([], state, limit=LIMIT, generation=5)
    assert decision.create == ((0, None),) and not decision.stopped
    assert decision.state.replica(0) == ReplicaState()
    # Its old pods still terminating: wait for them first, as any recreation does.
    decision = run(replica(0, terminating=True), state, limit=LIMIT, generation=5)
    assert not decision.create and decision.restarting == (0,)


def test_a_stalled_replica_is_restarted_as_a_gang_through_the_same_path():
    decision = run(replica(0), formed(0), stalled={0: "rank 0 generated no token for 60s"})
    assert len(decision.delete) == 4 and decision.restarting == (0,)
    assert decision.state.restarts == 1 and decision.state.replica(0).recreating
    event = decision.events[0]
    assert event.reason == "ReplicaStalled" and event.message.startswith("rank 0 generated no")
    # Not yet formed, or already being recreated: nothing to do.
    assert not run(replica(0), stalled={0: "x"}).delete
    recreating = GangState(replicas={0: ReplicaState(recreating=True, not_before=2000.0)})
    assert run([], recreating, stalled={0: "x"}).events == ()


def test_stalls_count_against_max_restarts():
    state = GangState(
        replicas={0: ReplicaState(formed=True, formed_at=990.0, failures=(800.0, 900.0))}
    )
    decision = run(replica(0), state, limit=LIMIT, generation=1, stalled={0: "stalled"})
    assert decision.stopped == (0,) and decision.events[0].reason == "RestartLimitExceeded"
