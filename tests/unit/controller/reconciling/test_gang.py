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
