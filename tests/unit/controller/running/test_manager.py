"""The manager and its work queue against a fake of our Cluster: the restart gate, handlers on
the event loop, retries that never overflow, tasks that die loudly, and leadership lost."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import kopf
import pytest
from fake_cluster import FakeCluster
from kopf._core.actions.invocation import invoke

from paraserve.controller.reconciling import architecture_source
from paraserve.controller.reconciling.gang import GANG_ANNOTATION, Backoff
from paraserve.controller.reconciling.reconcile import ControllerSettings, Key, Reconciler
from paraserve.controller.running import watches
from paraserve.controller.running.manager import RETRY_MAX, Manager, retry_delay
from paraserve.controller.running.operator_metrics import OperatorMetrics
from paraserve.controller.running.workqueue import WorkQueue
from paraserve.planner.live_pool import LivePool

NS = "team"
SPEC = {
    "model": {"name": "m", "dtype": "float16", "parameters": "7B"},
    "parallelism": {"pipeline": 2, "tensor": 5},
    "placement": {"tensorParallelWithinNode": False},
    "gpu": {"memory": "80G"},
}


def run(coroutine: Any, timeout: float = 20) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=timeout))


def manager_of(cluster: FakeCluster, **settings: Any) -> Manager:
    reconciler = Reconciler(
        cluster,  # type: ignore[arg-type]
        cluster.views,
        ControllerSettings(default_image="w", backoff=Backoff(base=1, cap=4), **settings),
        OperatorMetrics(),
    )
    return Manager(reconciler, reconciler.metrics)


def running_world(deployments: int = 3) -> FakeCluster:
    """Ready deployments of 10 ranks each, as an operator left them before it was killed."""
    cluster = FakeCluster()
    cluster.node("n0", 10 * deployments)
    for d in range(deployments):
        cluster.deployment(NS, f"d{d}", SPEC)
    cluster.deliver()
    manager = manager_of(cluster)

    async def converge() -> None:
        for _ in range(4):
            for d in range(deployments):
                await manager.reconciler.reconcile((NS, f"d{d}"))
            cluster.run_pods()
            cluster.deliver()

    run(converge())
    for d in range(deployments):
        body = cluster.get("InferenceDeployment", NS, f"d{d}")
        assert body is not None and body["status"]["phase"] == "Ready"
        assert json.loads(body["metadata"]["annotations"][GANG_ANNOTATION])["replicas"]["0"][
            "formed"
        ]
    return cluster


def test_no_rank_is_deleted_or_created_before_the_watches_have_shown_the_world():
    """A restart at scale: the deployments are indexed, their pods only partly (the pod list is
    still streaming). The resync and events of other objects ask for reconciles; nothing may
    act until kopf has shown each deployment through its handler (every index listed by then).
    """
    cluster = running_world()
    everything = cluster.views.rank_pods
    cluster.views.rank_pods = {key: list(pods)[:3] for key, pods in everything.items()}
    writes = len(cluster.writes())
    manager = manager_of(cluster, resync_seconds=0.01)

    async def restart() -> None:
        manager.start()
        await asyncio.sleep(0.2)  # many resyncs
        for d in range(3):
            manager.enqueue((NS, f"d{d}"))  # a pod event of each
        manager.poke_unsettled()
        await asyncio.sleep(0.2)
        assert cluster.writes()[writes:] == []
        # The pod list is complete; kopf calls the deployments' handlers.
        cluster.views.rank_pods = everything
        for d in range(3):
            manager.deployment_event((NS, f"d{d}"), deleted=False)
        await asyncio.sleep(0.3)
        await manager.stop()

    run(restart())
    assert [c for c in cluster.writes()[writes:] if c[0] in ("DELETE", "POST")] == []
    assert len(cluster.of_kind("Pod")) == 30


def test_a_restarted_operator_counts_gpus_of_pods_whose_own_handlers_have_not_run_yet():
    """kopf calls handlers once every index is listed, then works through the listed objects
    one by one: the first reconcile may come before the pod events that would fill the pool.
    The pool starts from the indexes, so a new deployment does not take GPUs already held."""
    cluster = running_world(deployments=1)  # d0's 10 ranks hold every GPU of n0
    cluster.deployment(NS, "new", SPEC)
    cluster.deliver()
    cluster.views.live = LivePool()  # a new process: the node's event ran, no pod's yet
    cluster.views.live.set_nodes(cluster.views.all_nodes())
    writes = len(cluster.writes())
    manager = manager_of(cluster)

    async def restart() -> None:
        manager.start()
        manager.deployment_event((NS, "new"), deleted=False)
        await asyncio.sleep(0.3)
        await manager.stop()

    run(restart())
    assert [c for c in cluster.writes()[writes:] if c[:2] == ("POST", "Pod")] == []
    body = cluster.get("InferenceDeployment", NS, "new")
    assert body is not None and body["status"]["phase"] == "Waiting"


def test_ranks_turning_ready_one_by_one_cost_a_reconcile_per_status_write_not_per_event():
    """A gang starting: every rank's readiness is a watch event, but the status of ranks
    counted is written at most once a second; events meanwhile wait for that write."""
    cluster = running_world(deployments=1)
    key = (NS, "d0")
    pods = cluster.pods_of(*key)
    for pod in pods:  # bound and running, not ready yet
        pod["status"]["conditions"][1]["status"] = "False"
        cluster.put(pod)
    cluster.deliver()
    manager = manager_of(cluster)
    reconciled: list[float] = []
    reconcile = manager.reconciler.reconcile

    async def counted(key: Key) -> float | None:
        reconciled.append(time.monotonic())
        return await reconcile(key)

    manager.reconciler.reconcile = counted  # type: ignore[method-assign]

    async def ranks_turn_ready() -> None:
        manager.start()
        manager.deployment_event(key, deleted=False)
        await asyncio.sleep(0.2)
        for pod in pods[:-1]:
            pod["status"]["conditions"][1]["status"] = "True"
            cluster.put(pod)
            cluster.deliver()
            manager.enqueue(key)  # the pod's watch event
            await asyncio.sleep(0.05)
        before = len(reconciled)
        # Meanwhile the spec changes: its own event is never held back.
        manager.deployment_event(key, deleted=False)
        await asyncio.sleep(0.05)
        assert len(reconciled) == before + 1
        last = pods[-1]
        last["status"]["conditions"][1]["status"] = "True"
        cluster.put(last)
        cluster.deliver()
        manager.enqueue(key)
        await asyncio.sleep(1.5)
        await manager.stop()

    run(ranks_turn_ready())
    assert len(reconciled) <= 6, f"{len(reconciled)} reconciles for 10 pod events"
    body = cluster.get("InferenceDeployment", *key)
    assert body is not None and body["status"]["ranks"]["ready"] == 10
    assert body["status"]["phase"] == "Ready"


def test_a_rank_really_lost_during_the_outage_restarts_its_gang_after_the_restart():
    cluster = running_world(deployments=2)
    lost = cluster.pods_of(NS, "d1")[4]
    cluster.remove("Pod", NS, lost["metadata"]["name"])
    cluster.deliver()
    manager = manager_of(cluster)

    async def restart() -> None:
        manager.start()
        for d in range(2):
            manager.deployment_event((NS, f"d{d}"), deleted=False)
        await asyncio.sleep(0.3)
        await manager.stop()

    run(restart())
    assert cluster.reasons().count("ReplicaRestart") == 1
    deleted = {c[2] for c in cluster.calls if c[0] == "DELETE"}
    assert deleted and all(name.startswith("d1-") for name in deleted)


def test_handlers_touch_the_queue_and_the_indexes_only_on_the_event_loop():
    """kopf runs a plain `def` handler in a thread; ours must reach the queue on the loop."""
    cluster = FakeCluster()
    manager = manager_of(cluster)
    registry = kopf.OperatorRegistry()
    watches.register(registry, manager)
    threads: list[int] = []
    add = manager.queue.add

    def recording_add(key: Key) -> None:
        threads.append(threading.get_ident())
        add(key)

    manager.queue.add = recording_add  # type: ignore[method-assign]
    pod = kopf.Body(
        {
            "metadata": {
                "name": "d-0-0",
                "namespace": NS,
                "labels": {"paraserve.dev/deployment": "d"},
            },
            "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": 1}}}]},
        }
    )
    deployment = kopf.Body({"metadata": {"name": "d", "namespace": NS}, "spec": {}})
    cluster.deployment(NS, "d", SPEC)
    cluster.deliver()

    async def events() -> int:
        manager.start()
        loop_thread = threading.get_ident()
        for handler in registry._watching.get_all_handlers():
            body = deployment if "deployment" in handler.id else pod
            # kopf hands each handler the indexes by id; the ConfigMap one reads who names it.
            indexes = {architecture_source.NAMED_BY: {}}
            kwargs = {"body": body, "type": "MODIFIED", "event": {}, **indexes}
            await invoke(handler.fn, kwargs=kwargs)
        await asyncio.sleep(0.05)
        await manager.stop()
        return loop_thread

    loop_thread = run(events())
    assert threads and set(threads) == {loop_thread}


def test_a_deployment_failing_thousands_of_times_keeps_its_worker():
    assert retry_delay(1) == 1.0 and retry_delay(5000) == RETRY_MAX

    class Failing:
        def __init__(self) -> None:
            self.views = FakeCluster().views
            self.settings = ControllerSettings(workers=1)
            self.counting_until: dict[Key, float] = {}
            self.calls = 0

        async def reconcile(self, key: Key) -> float | None:
            self.calls += 1
            raise RuntimeError("the spec makes the planner trip")

        def cancel_creations(self) -> None:
            """No creates are ever in flight here."""

    failing = Failing()
    manager = Manager(failing, OperatorMetrics())  # type: ignore[arg-type]
    key = (NS, "d")
    manager.seen.add(key)
    manager._failures[key] = 1100  # crash-looping for days

    async def work() -> None:
        manager.start()
        manager.enqueue(key)
        manager.enqueue((NS, "other"))
        await asyncio.sleep(0.1)
        assert all(not t.done() for t in manager._tasks.values())
        await manager.stop()

    run(work())
    assert failing.calls == 2 and manager._failures[key] == 1101


def test_a_worker_that_dies_is_logged_with_its_traceback_and_replaced(
    caplog: pytest.LogCaptureFixture,
):
    cluster = FakeCluster()
    manager = manager_of(cluster, workers=1)
    broken = {"once": True}
    done = manager.queue.done

    def done_that_breaks(key: Key) -> None:
        done(key)
        if broken.pop("once", False):
            raise KeyError("bookkeeping bug")

    manager.queue.done = done_that_breaks  # type: ignore[method-assign]

    async def work() -> None:
        manager.start()
        manager.enqueue((NS, "gone"))
        await asyncio.sleep(0.05)
        manager.enqueue((NS, "gone-too"))
        await asyncio.sleep(0.05)
        assert not manager._tasks["reconcile-0"].done()
        await manager.stop()

    with caplog.at_level(logging.ERROR, logger="paraserve.controller"):
        run(work())
    [record] = [r for r in caplog.records if "reconcile-0 ended" in r.getMessage()]
    assert record.exc_info is not None and "bookkeeping bug" in str(record.exc_info[1])


def test_nothing_is_reconciled_once_leadership_is_lost():
    cluster = FakeCluster()
    cluster.node("n0", 10)
    cluster.deployment(NS, "d", SPEC)
    cluster.deliver()
    leading = {"now": True}
    manager = manager_of(cluster)
    manager.acting = lambda: leading["now"]

    async def work() -> None:
        manager.start()
        leading["now"] = False
        manager.deployment_event((NS, "d"), deleted=False)
        await asyncio.sleep(0.1)
        await manager.stop()

    run(work())
    assert cluster.writes() == []


def test_one_deployment_is_never_reconciled_by_two_workers_at_once():
    active: set[Key] = set()
    overlaps: list[Key] = []

    class Slow:
        def __init__(self) -> None:
            self.views = FakeCluster().views
            self.settings = ControllerSettings(workers=4)
            self.counting_until: dict[Key, float] = {}
            self.count = 0

        async def reconcile(self, key: Key) -> float | None:
            if key in active:
                overlaps.append(key)
            active.add(key)
            await asyncio.sleep(0.01)
            active.discard(key)
            self.count += 1
            return None

        def cancel_creations(self) -> None:
            """No creates are ever in flight here."""

    slow = Slow()
    manager = Manager(slow, OperatorMetrics())  # type: ignore[arg-type]
    keys = [(NS, f"d{k}") for k in range(3)]
    manager.seen.update(keys)

    async def storm() -> None:
        manager.start()
        for _ in range(50):
            for key in keys:
                manager.enqueue(key)
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.1)
        await manager.stop()

    run(storm())
    assert overlaps == [] and slow.count >= 3


def test_the_work_queue_deduplicates_and_requeues_a_key_changed_while_processed():
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        first = await queue.get()
        queue.add(first)  # changed while being reconciled
        assert len(queue) == 1
        queue.done(first)
        order = [await queue.get(), await queue.get()]
        queue.add_after("c", 0.05)
        queue.add_after("c", 0.01)  # the earliest request wins
        order.append(await asyncio.wait_for(queue.get(), timeout=0.04))
        queue.close()
        return [first, *order]

    assert run(scenario()) == ["a", "b", "a", "c"]
