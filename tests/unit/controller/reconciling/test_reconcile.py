"""Reconciler.reconcile against a fake of our Cluster: races, lagging watches, owned objects,
foreign names, namespace deletion and an unreadable gang annotation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fake_cluster import FakeCluster

from paraserve.api.labels import LABEL_TEMPLATE_HASH
from paraserve.controller.reconciling.gang import GANG_ANNOTATION, Backoff
from paraserve.controller.reconciling.reconcile import ControllerSettings, Reconciler
from paraserve.controller.running.operator_metrics import OperatorMetrics

NS = "team"


def spec(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": "m", "dtype": "float16", "parameters": "7B"},
        "parallelism": {"pipeline": 2, "tensor": 1},
        "gpu": {"memory": "80G"},
    }
    body.update(changes)
    return body


def reconciler(cluster: FakeCluster, **settings: Any) -> Reconciler:
    return Reconciler(
        cluster,  # type: ignore[arg-type]
        cluster.views,
        ControllerSettings(default_image="worker:1", backoff=Backoff(base=1, cap=4), **settings),
        OperatorMetrics(),
    )


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=20))


def settle(cluster: FakeCluster, r: Reconciler, *names: str, rounds: int = 4) -> None:
    """Reconcile, let the pods run and the watch catch up, a few times over."""

    async def go() -> None:
        for _ in range(rounds):
            for name in names:
                await r.reconcile((NS, name))
            cluster.run_pods()
            cluster.deliver()

    run(go())


def status(cluster: FakeCluster, name: str) -> dict[str, Any]:
    body = cluster.get("InferenceDeployment", NS, name)
    assert body is not None
    return dict(body.get("status") or {})


def condition(cluster: FakeCluster, name: str, kind: str) -> dict[str, Any]:
    return next(c for c in status(cluster, name)["conditions"] if c["type"] == kind)


def test_two_tp1_deployments_racing_for_one_node_do_not_both_create():
    """PP=2 × TP=1 twice on one 2-GPU node, reconciled at once, before the watch shows either:
    one replica is created, the other waits (without pinning, too)."""
    cluster = FakeCluster()
    cluster.node("n0", 2)
    cluster.deployment(NS, "a", spec())
    cluster.deployment(NS, "b", spec())
    cluster.deliver()
    r = reconciler(cluster, workers=2)

    async def race() -> None:
        await asyncio.gather(r.reconcile((NS, "a")), r.reconcile((NS, "b")))

    run(race())
    created = {name: len(cluster.pods_of(NS, name)) for name in ("a", "b")}
    assert sorted(created.values()) == [0, 2], created
    cluster.run_pods()
    cluster.deliver()
    run(race())
    waiting = next(name for name, count in created.items() if count == 0)
    assert status(cluster, waiting)["phase"] == "Waiting"
    assert len(cluster.of_kind("Pod")) == 2


def test_reconciles_before_the_watch_shows_a_new_gang_post_it_and_announce_it_once():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec())
    cluster.deliver()
    r = reconciler(cluster)

    async def unseen() -> None:
        for _ in range(3):  # the watch shows nothing of the pods created by the first
            await r.reconcile((NS, "d"))

    run(unseen())
    pod_creates = [call for call in cluster.writes() if call[:2] == ("POST", "Pod")]
    assert len(pod_creates) == 2  # PP=2: one POST per rank, once
    assert cluster.reasons().count("CreatingReplica") == 1
    settle(cluster, r, "d")
    assert status(cluster, "d")["phase"] == "Ready"


def test_a_lagging_watch_never_makes_a_status_write_conflict_with_our_own():
    """The watch has not shown our last write yet: the next reconcile reads that write, so its
    patch is guarded by the right resourceVersion (no 409 against ourselves)."""
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec())
    cluster.deliver()
    r = reconciler(cluster)

    async def lagging() -> None:
        for _ in range(5):
            await r.reconcile((NS, "d"))
            cluster.run_pods()  # pods change, the watch shows them, not our deployment writes
            views_deployments = cluster.views.deployments
            cluster.deliver()
            cluster.views.deployments = views_deployments

    run(lagging())
    assert cluster.conflicts == 0
    assert status(cluster, "d")["phase"] == "Ready"


def test_a_service_or_topology_deleted_out_of_band_is_recreated():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec())
    cluster.deliver()
    r = reconciler(cluster)
    settle(cluster, r, "d")
    [topology] = cluster.of_kind("ConfigMap", NS)
    assert cluster.get("Service", NS, "d") is not None
    before = len(cluster.writes())
    settle(cluster, r, "d", rounds=2)
    assert len(cluster.writes()) == before  # nothing changed: nothing written

    cluster.remove("Service", NS, "d")
    cluster.remove("ConfigMap", NS, topology["metadata"]["name"])
    cluster.deliver()
    settle(cluster, r, "d", rounds=1)
    assert cluster.get("Service", NS, "d") is not None
    assert cluster.get("ConfigMap", NS, topology["metadata"]["name"]) is not None


def test_a_deployment_recreated_under_its_name_gets_a_topology_owned_by_the_new_one():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    first = cluster.deployment(NS, "d", spec())
    cluster.deliver()
    r = reconciler(cluster)
    settle(cluster, r, "d")
    # Deleted and made again before the operator looked: the garbage collector took what the
    # first owned, and the watch shows only the second.
    for kind in ("Pod", "Service", "ConfigMap"):
        for obj in cluster.of_kind(kind, NS):
            cluster.remove(kind, NS, obj["metadata"]["name"])
    second = cluster.deployment(NS, "d", spec())
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    cluster.deliver()
    settle(cluster, r, "d")
    [topology] = cluster.of_kind("ConfigMap", NS)
    owners = {ref["uid"] for ref in topology["metadata"]["ownerReferences"]}
    assert owners == {second["metadata"]["uid"]}
    assert status(cluster, "d")["phase"] == "Ready"


def test_a_rolling_update_keeps_the_old_replicas_topology_until_they_are_gone():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    body = cluster.deployment(NS, "d", spec(replicas=2))
    cluster.deliver()
    r = reconciler(cluster)
    settle(cluster, r, "d")
    [old] = cluster.of_kind("ConfigMap", NS)
    old_text = old["data"]["topology.json"]

    body = cluster.get("InferenceDeployment", NS, "d")
    assert body is not None
    body["spec"]["serving"] = {"maxBatchSize": 8}
    body["metadata"]["generation"] = 2
    cluster.put(body)
    cluster.deliver()
    run(r.reconcile((NS, "d")))  # the first old replica goes; the new topology is written
    names = {c["metadata"]["name"] for c in cluster.of_kind("ConfigMap", NS)}
    assert len(names) == 2 and old["metadata"]["name"] in names
    still = cluster.get("ConfigMap", NS, old["metadata"]["name"])
    assert still is not None and still["data"]["topology.json"] == old_text
    settle(cluster, r, "d", rounds=8)
    hashes = {p["metadata"]["labels"][LABEL_TEMPLATE_HASH] for p in cluster.of_kind("Pod")}
    assert len(hashes) == 1
    [current] = cluster.of_kind("ConfigMap", NS)  # the old one went with its last pod
    assert current["metadata"]["name"] != old["metadata"]["name"]


def test_an_unreadable_gang_annotation_is_reported_and_rebuilt_not_reset():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec())
    cluster.deliver()
    r = reconciler(cluster)
    settle(cluster, r, "d")
    body = cluster.get("InferenceDeployment", NS, "d")
    assert body is not None
    body["status"]["restarts"] = 3
    body["metadata"]["annotations"][GANG_ANNOTATION] = "{garbled"
    cluster.put(body)
    cluster.deliver()
    run(r.reconcile((NS, "d")))
    assert "GangStateUnreadable" in cluster.reasons()
    event = next(e for e in cluster.events if e["reason"] == "GangStateUnreadable")
    assert GANG_ANNOTATION in event["message"]
    body = cluster.get("InferenceDeployment", NS, "d")
    assert body is not None
    state = json.loads(body["metadata"]["annotations"][GANG_ANNOTATION])
    assert state["restarts"] == 3 and state["replicas"]["0"]["formed"] is True
    assert status(cluster, "d")["restarts"] == 3


def test_a_pod_of_our_name_owned_by_another_is_not_taken_for_ours():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": "d-0-0",
                "namespace": NS,
                "ownerReferences": [{"kind": "Job", "uid": "someone-else", "controller": True}],
            },
            "spec": {"containers": [{"name": "x"}]},
        }
    )
    cluster.deployment(NS, "d", spec())
    cluster.deliver()
    r = reconciler(cluster)
    settle(cluster, r, "d", rounds=2)
    scheduled = condition(cluster, "d", "Scheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "NameTaken"
    assert "d-0-0" in scheduled["message"]
    assert cluster.reasons().count("NameTaken") == 1  # said once, not every reconcile
    assert status(cluster, "d")["phase"] != "Ready"


def test_deleting_the_namespace_is_not_a_gang_failure():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec())
    cluster.deliver()
    r = reconciler(cluster)
    settle(cluster, r, "d")
    assert status(cluster, "d")["phase"] == "Ready"
    cluster.terminating.add(NS)
    for pod in cluster.pods_of(NS, "d"):  # the namespace controller deletes the pods first
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    cluster.deliver()
    writes = len(cluster.writes())
    settle(cluster, r, "d", rounds=5)
    assert cluster.writes()[writes:] == []  # no delete, no create, no Event, no status
    assert "ReplicaRestart" not in cluster.reasons()
    assert status(cluster, "d")["phase"] == "Ready"


def test_creates_refused_in_a_terminating_namespace_are_not_retried_in_a_storm():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec())
    cluster.terminating.add(NS)
    cluster.deliver()
    r = reconciler(cluster)
    delays = [run(r.reconcile((NS, "d"))) for _ in range(20)]
    creates = [c for c in cluster.calls if c[0] == "POST" and c[1] != "Event"]
    assert len(creates) <= 2 and all(d is None for d in delays)


def test_a_rank_stuck_in_container_creating_restarts_its_gang():
    now = [1_000_000.0]
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec())
    cluster.deliver()
    r = Reconciler(
        cluster,  # type: ignore[arg-type]
        cluster.views,
        ControllerSettings(default_image="w", backoff=Backoff(base=1, cap=4), start_after=300),
        OperatorMetrics(),
        clock=lambda: now[0],
    )
    run(r.reconcile((NS, "d")))
    for pod in cluster.pods_of(NS, "d"):  # bound, but its volume never mounts
        pod["spec"]["nodeName"] = "n0"
        bound = {
            "type": "PodScheduled",
            "status": "True",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        pod["status"] = {"phase": "Pending", "conditions": [bound]}
    cluster.deliver()
    now[0] = 1767225600.0 + 200  # 200 s after binding: still starting
    run(r.reconcile((NS, "d")))
    assert "ReplicaRestart" not in cluster.reasons()
    now[0] = 1767225600.0 + 400
    run(r.reconcile((NS, "d")))
    restart = next(e for e in cluster.events if e["reason"] == "ReplicaRestart")
    assert "did not start on node n0" in restart["message"]


def test_a_world_size_beyond_any_cluster_is_refused_clearly_with_a_small_status():
    """PP=1024 × TP=1024 (each degree within its own bound): Rejected with a code, an Event,
    and a status that does not list a million ranks (it must fit an object, and fast)."""
    cluster = FakeCluster()
    cluster.node("n0", 8)
    cluster.deployment(NS, "huge", spec(parallelism={"pipeline": 1024, "tensor": 1024}))
    cluster.deliver()
    r = reconciler(cluster)
    run(r.reconcile((NS, "huge")))
    validated = condition(cluster, "huge", "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "InvalidParallelism")
    assert "1048576 ranks per replica; at most 16384" in validated["message"]
    assert status(cluster, "huge")["phase"] == "Rejected"
    assert "InvalidParallelism" in cluster.reasons()
    assert len(json.dumps(status(cluster, "huge"))) < 8192
    assert cluster.pods_of(NS, "huge") == []


def test_status_lists_stages_as_rank_ranges_not_every_rank():
    cluster = FakeCluster()
    cluster.node("n0", 16)
    cluster.deployment(NS, "d", spec(parallelism={"pipeline": 2, "tensor": 8}))
    cluster.deliver()
    run(reconciler(cluster).reconcile((NS, "d")))
    stages = status(cluster, "d")["plan"]["stages"]
    assert [(s["index"], s["firstRank"], s["lastRank"]) for s in stages] == [(0, 0, 7), (1, 8, 15)]
    assert all("ranks" not in s for s in stages)


def _clocked(cluster: FakeCluster, now: list[float]) -> Reconciler:
    return Reconciler(
        cluster,  # type: ignore[arg-type]
        cluster.views,
        ControllerSettings(default_image="w", backoff=Backoff(base=1, cap=4)),
        OperatorMetrics(),
        clock=lambda: now[0],
    )


def _settle_in_time(cluster: FakeCluster, now: list[float], rounds: int = 4) -> None:
    """settle() by a new operator process, with time passing (back-offs run out)."""
    r = _clocked(cluster, now)

    async def go() -> None:
        for _ in range(rounds):
            now[0] += 5
            await r.reconcile((NS, "d"))
            cluster.run_pods()
            cluster.deliver()

    run(go())


def _lose_a_rank(cluster: FakeCluster) -> None:
    cluster.remove("Pod", NS, "d-0-1")
    cluster.deliver()


def test_a_replica_past_max_restarts_is_stopped_across_operator_restarts_until_the_spec_changes():
    now = [1000.0]
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec(failurePolicy={"maxRestarts": 1}), generation=1)
    cluster.deliver()
    _settle_in_time(cluster, now)
    _lose_a_rank(cluster)
    now[0] += 10
    _settle_in_time(cluster, now)  # restart 1: recreated after its back-off
    assert status(cluster, "d")["restarts"] == 1 and len(cluster.pods_of(NS, "d")) == 2
    _lose_a_rank(cluster)
    now[0] += 10
    _settle_in_time(cluster, now)  # the second failure within 1h: stopped
    assert cluster.pods_of(NS, "d") == []
    assert status(cluster, "d")["phase"] == "Failed"
    assert condition(cluster, "d", "Ready")["reason"] == "RestartLimitExceeded"
    stop = next(e for e in cluster.events if e["reason"] == "RestartLimitExceeded")
    assert stop["type"] == "Warning" and "failed 2 times within 1h" in stop["message"]
    # A new operator process (no memory) reads the annotation and keeps it stopped.
    now[0] += 3600
    _settle_in_time(cluster, now)
    assert cluster.pods_of(NS, "d") == [] and status(cluster, "d")["phase"] == "Failed"
    # An edit of the spec (a new generation) starts it again.
    body = cluster.get("InferenceDeployment", NS, "d")
    assert body is not None
    body["spec"]["failurePolicy"] = {"maxRestarts": 3}
    body["metadata"]["generation"] = 2
    cluster.put(body)
    cluster.deliver()
    _settle_in_time(cluster, now)
    assert len(cluster.pods_of(NS, "d")) == 2 and status(cluster, "d")["phase"] == "Ready"


def test_a_stall_reported_by_the_measurement_loop_restarts_that_gang_once():
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec(failurePolicy={"stallTimeout": "1m"}), generation=1)
    cluster.deliver()
    now = [1000.0]
    r = _clocked(cluster, now)
    settle(cluster, r, "d")
    head = next(p for p in cluster.pods_of(NS, "d") if p["metadata"]["name"] == "d-0-0")
    body = cluster.get("InferenceDeployment", NS, "d")
    assert body is not None
    report = {"replica": 0, "head": "d-0-0", "headUid": head["metadata"]["uid"], "message": "stuck"}
    body["status"]["measured"] = {"ranksScraped": 1, "stalledReplicas": [report]}
    cluster.put(body)
    cluster.deliver()
    run(r.reconcile((NS, "d")))
    stalled = [e for e in cluster.events if e["reason"] == "ReplicaStalled"]
    assert len(stalled) == 1 and stalled[0]["message"].startswith("stuck: recreating replica 0")
    assert cluster.pods_of(NS, "d") == []
    # The report names the old head: the recreated replica is left alone.
    _settle_in_time(cluster, now, rounds=6)
    assert len(cluster.pods_of(NS, "d")) == 2
    assert len([e for e in cluster.events if e["reason"] == "ReplicaStalled"]) == 1
    assert status(cluster, "d")["restarts"] == 1


def test_a_ready_deployment_is_not_rewritten_when_another_takes_gpus_from_the_pool():
    """gpusFree is the pool's: another deployment starting moves it, and a Ready deployment's
    status is not rewritten for that alone (a restart among 300 made ~900 such writes); one
    still waiting for GPUs is kept current."""
    cluster = FakeCluster()
    cluster.node("n0", 4)
    cluster.deployment(NS, "ready", spec())
    cluster.deliver()
    r = reconciler(cluster)
    settle(cluster, r, "ready")
    assert status(cluster, "ready")["phase"] == "Ready"
    assert status(cluster, "ready")["gpusFree"] == 2

    cluster.deployment(NS, "other", spec())
    cluster.deliver()
    settle(cluster, r, "other")
    assert status(cluster, "other")["phase"] == "Ready"
    cluster.calls.clear()
    restarted = reconciler(cluster)  # as after an operator restart: no write spacing to hide it
    run(restarted.reconcile((NS, "ready")))
    assert ("PATCH", "InferenceDeployment/status", "ready") not in cluster.writes()
    assert status(cluster, "ready")["gpusFree"] == 2  # as at its last own change

    cluster.deployment(NS, "waiting", spec())
    cluster.deliver()
    settle(cluster, r, "waiting")
    assert status(cluster, "waiting")["phase"] != "Ready"
    assert status(cluster, "waiting")["gpusFree"] == 0


def _four_ranks_turning_ready(cluster: FakeCluster) -> tuple[Reconciler, Any]:
    """PP=4 on one node, created and running; `ready(n)` makes the first n ranks ready and
    reconciles once (its requeue returned)."""
    cluster.node("n0", 4)
    cluster.deployment(NS, "d", spec(parallelism={"pipeline": 4, "tensor": 1}))
    cluster.deliver()
    r = reconciler(cluster)
    settle(cluster, r, "d", rounds=1)
    pods = sorted(cluster.pods_of(NS, "d"), key=lambda pod: pod["metadata"]["name"])

    def ready(count: int) -> float | None:
        for index, pod in enumerate(pods):
            for entry in pod["status"]["conditions"]:
                if entry["type"] == "Ready":
                    entry["status"] = "True" if index < count else "False"
            cluster.put(pod)
        cluster.deliver()
        return run(r.reconcile((NS, "d")))  # type: ignore[no-any-return]

    return r, ready


def test_each_deployment_write_says_how_urgent_it_is(monkeypatch: Any) -> None:
    """A deployment turning Ready goes before any other phase change, which goes before a gang
    annotation, which goes before a count of ranks ready: at scale the deployments' lane sends
    the waiting writes in that order."""
    from paraserve.controller.api_writes import Urgency
    from paraserve.controller.reconciling import reconcile

    monkeypatch.setattr(reconcile, "PROGRESS_WRITE_INTERVAL", 0.0)
    cluster = FakeCluster()
    _, ready = _four_ranks_turning_ready(cluster)
    for count in range(2, 5):  # the ranks turn ready one at a time
        ready(count)
    assert status(cluster, "d")["phase"] == "Ready"

    gang = [u for patch, u in cluster.deployment_writes if "metadata" in patch]
    phases = [
        (patch["status"]["phase"], u)
        for patch, u in cluster.deployment_writes
        if "phase" in patch.get("status", {})
    ]
    counts = [
        u
        for patch, u in cluster.deployment_writes
        if set(patch.get("status", {})) and set(patch["status"]) <= {"ranks", "conditions"}
    ]
    # Stored before the pods are created (the commit point), then once the replica formed,
    # after the status that reconcile wrote: no status waits behind it.
    assert gang == [Urgency.GANG, Urgency.PHASE]
    formed = [i for i, (patch, _) in enumerate(cluster.deployment_writes) if "metadata" in patch][1]
    assert "status" in cluster.deployment_writes[formed - 1][0]
    # On its way (Scheduling, Running) a phase; come to rest (Ready) the most urgent of all.
    assert phases[:-1] and all(u is Urgency.PHASE for _, u in phases[:-1])
    assert phases[-1] == ("Ready", Urgency.SETTLED)
    assert counts and all(u is Urgency.PROGRESS for u in counts)


class SlowGangWrites(FakeCluster):
    """The API server at its limit: the gang annotation of `slow` waits until released."""

    def __init__(self, slow: str) -> None:
        super().__init__()
        self.slow = slow
        self.release = asyncio.Event()
        self.waiting = False

    async def patch_deployment(self, namespace: str, name: str, patch: Any, **kwargs: Any) -> Any:
        if name == self.slow and kwargs.get("subresource") is None:
            self.waiting = True
            await self.release.wait()
        return await super().patch_deployment(namespace, name, patch, **kwargs)


def _two_for_one_node(cluster: FakeCluster) -> Reconciler:
    cluster.node("n0", 4)
    for name in ("a", "b"):  # each needs the whole node (TP=4, pinned to a node)
        cluster.deployment(NS, name, spec(parallelism={"pipeline": 1, "tensor": 4}))
    cluster.deliver()
    return reconciler(cluster)


def test_a_placement_holds_its_gpus_however_long_its_gang_annotation_waits(
    monkeypatch: Any,
) -> None:
    """At scale a reconcile's first write can wait a minute for the API server: the GPUs it
    placed on stay its own meanwhile, and a deployment reconciled then waits."""
    from paraserve.controller.reconciling import reconcile

    monkeypatch.setattr(reconcile, "RESERVATION_SECONDS", 0.0)  # any time limit would lapse
    cluster = SlowGangWrites(slow="a")
    r = _two_for_one_node(cluster)

    async def scenario() -> None:
        first = asyncio.ensure_future(r.reconcile((NS, "a")))
        while not cluster.waiting:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)
        await r.reconcile((NS, "b"))
        cluster.release.set()
        await first

    run(scenario())
    assert len(cluster.pods_of(NS, "a")) == 4
    assert cluster.pods_of(NS, "b") == []
    assert status(cluster, "b")["phase"] == "Waiting"


def test_a_placement_never_posted_frees_its_gpus_when_its_reconcile_ends() -> None:
    """The gang annotation's write conflicts: nothing was created, so the next deployment can
    take the node at once (not after the reservation's time)."""
    cluster = _Conflicting(on="a")
    r = _two_for_one_node(cluster)

    async def scenario() -> None:
        await r.reconcile((NS, "a"))
        await r.reconcile((NS, "b"))

    run(scenario())
    assert cluster.pods_of(NS, "a") == []
    assert len(cluster.pods_of(NS, "b")) == 4
    # What is still held is b's alone.
    assert {pod for _, pod in r._reserved} <= {
        p["metadata"]["name"] for p in cluster.pods_of(NS, "b")
    }


class _Conflicting(FakeCluster):
    """Every write to deployment `on`'s metadata meets a newer version (another writer)."""

    def __init__(self, on: str) -> None:
        super().__init__()
        self.on = on

    async def patch_deployment(self, namespace: str, name: str, patch: Any, **kwargs: Any) -> Any:
        if name == self.on and kwargs.get("subresource") is None:
            self.conflicts += 1
            return None
        return await super().patch_deployment(namespace, name, patch, **kwargs)


class BusyLane(FakeCluster):
    """The deployments' lane is full: writes that the next one carries anyway are refused."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = False
        self.refused = 0

    async def patch_deployment(self, namespace: str, name: str, patch: Any, **kwargs: Any) -> Any:
        from paraserve.controller.api_writes import LaneBusy, Urgency

        if self.busy and kwargs.get("urgency") is Urgency.PROGRESS:
            self.refused += 1
            raise LaneBusy("more urgent writes wait")
        return await super().patch_deployment(namespace, name, patch, **kwargs)


def test_a_count_of_ranks_ready_is_put_off_while_the_lane_is_busy_and_the_phase_is_not(
    monkeypatch: Any,
) -> None:
    from paraserve.controller.reconciling import reconcile

    monkeypatch.setattr(reconcile, "PROGRESS_WRITE_INTERVAL", 0.0)
    cluster = BusyLane()
    r, ready = _four_ranks_turning_ready(cluster)
    ready(2)
    counted = status(cluster, "d")["ranks"]
    cluster.busy = True
    # A count alone: not sent, and not retried on a timer; looked at again when the lane has
    # room (or at the next pod event).
    again = ready(3)
    assert cluster.refused == 1 and again is None and list(r.parked) == [(NS, "d")]
    assert status(cluster, "d")["ranks"] == counted
    assert r.room_for_progress(0) == [] and r.room_for_progress(2) == [(NS, "d")]
    assert not r.parked and (NS, "d") not in r.counting_until
    ready(4)  # every rank ready: Ready is sent, busy or not
    assert status(cluster, "d")["phase"] == "Ready"
    cluster.busy = False
    run(r.reconcile((NS, "d")))
    assert status(cluster, "d")["ranks"]["ready"] == 4
