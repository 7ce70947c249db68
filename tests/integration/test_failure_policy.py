"""spec.failurePolicy end to end: a hung replica is restarted as a gang, then stopped, then
started again by an edit of the spec.

As in test_measured.py, the operator runs as a subprocess against the local control plane and
e2e/rankrunner.py runs each kwok rank pod's own `paraserve worker` command and env as a local
process. The worker's own load generator (`--rate`) sends the requests; `--stall-after N` makes
rank 0 keep accepting them but generate nothing after N: the hang the operator looks for
(docs/measurement.md, "Hang detection"; docs/operator.md, "Failure policy").

What is checked is what a user sees with kubectl: the stall report in status.measured, new pod
uids, the `ReplicaStalled` Event, status.restarts, then phase `Failed` with reason
`RestartLimitExceeded` and no pods, then Ready again after the edit. The times are printed,
not asserted.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest
from e2e.cluster.local import LocalCluster
from e2e.rankrunner import RankRunner
from test_measured import crd, operator, status_of, tiny_deployment, wait

from paraserve.api.labels import LABEL_DEPLOYMENT
from paraserve.controller.measurement.exposition import parse
from paraserve.controller.measurement.metric_profiles import PARASERVE, read

__all__ = ["crd"]

pytestmark = pytest.mark.timeout(1200)

NAME = "tiny-stall"
STALL_AFTER = 16  # requests rank 0 serves before it hangs (2 s at --rate 8)
STALL_TIMEOUT = 5  # seconds of requests and no token: a stall
MAX_RESTARTS = 1  # so the second stall stops the replica
LOAD = ["worker", "--rate", "8", "--prompt-length", "16", "--output-tokens", "8"]
GANG_ANNOTATION = "paraserve.dev/gang"
T = TypeVar("T")


def until(
    cluster: LocalCluster,
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    logs: Callable[[], str],
) -> T:
    """test_measured's wait, typed: the first value of `condition` that is not None."""
    value = wait(cluster, condition, timeout, what, logs)
    assert value is not None
    return value


def document(pool_selector: dict[str, str], stall_after: int | None) -> dict[str, Any]:
    body = tiny_deployment(NAME, pool_selector)
    body["spec"].pop("slo")  # not what this test is about
    stall = ["--stall-after", str(stall_after)] if stall_after else []
    body["spec"]["worker"] = {"args": [*LOAD, *stall]}
    body["spec"]["failurePolicy"] = {
        "stallTimeout": f"{STALL_TIMEOUT}s",
        "maxRestarts": MAX_RESTARTS,
        "restartWindow": "10m",
    }
    return body


# -- what happened when: sampled twice a second, beside the test's own checks -----------------


@dataclass
class Head:
    """A rank-0 process as its /metrics showed it (monotonic times)."""

    pod: str
    uid: str
    tokens: float | None = None
    waiting: float | None = None
    first_progress: float | None = None  # first sample with a token generated
    # First sample showing the counter's current value: the last token was generated at
    # most one sampling interval before (unless the head was first read after it hung).
    last_progress: float | None = None


class Timeline(threading.Thread):
    """Samples the heads' metrics, the rank pods and the deployment's status every 0.5 s, and
    keeps when each thing was first seen, for the figures."""

    def __init__(self, cluster: LocalCluster, namespace: str, runner: RankRunner) -> None:
        super().__init__(name="timeline", daemon=True)
        self.cluster, self.namespace, self.runner = cluster, namespace, runner
        self.heads: dict[str, Head] = {}  # by pod uid
        self.pod_seen: dict[str, float] = {}  # pod uid → first seen
        self.pod_gone: dict[str, float] = {}  # pod uid → first seen terminating or absent
        self.reports: dict[str, tuple[float, dict[str, Any]]] = {}  # head uid → stall report
        self.phases: list[tuple[float, str]] = []  # phase changes
        self.errors: list[str] = []
        self._done = threading.Event()

    def __enter__(self) -> Timeline:
        from kubernetes import client

        self._api = self.cluster.api_client()
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self.join(timeout=30)
        self._api.close()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.sample(time.monotonic())
            except Exception as error:  # the API server may be busy: the next sample tells
                self.errors.append(repr(error))
            self._done.wait(0.5)

    def sample(self, now: float) -> None:
        for _ in range(3):  # the runner's thread may change its dict meanwhile
            with contextlib.suppress(RuntimeError):
                ranks = [r for r in list(self.runner.ranks.values()) if r.rank == 0]
                break
        else:
            ranks = []
        for rank in ranks:
            head = self.heads.setdefault(rank.uid, Head(rank.pod, rank.uid))
            try:
                url = f"http://{rank.address}/metrics"
                with urllib.request.urlopen(url, timeout=2) as response:
                    reading = read(PARASERVE, parse(response.read().decode()))
            except (OSError, ValueError):
                continue  # not serving yet, or being stopped
            if reading.tokens is None:
                continue
            if reading.tokens > 0 and head.first_progress is None:
                head.first_progress = now
            if reading.tokens != head.tokens:
                head.last_progress = now
            head.tokens, head.waiting = reading.tokens, reading.waiting
        pods = self._core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_DEPLOYMENT}={NAME}"
        ).items
        alive = {
            str(p.metadata.uid)
            for p in pods
            if p.metadata is not None and p.metadata.deletion_timestamp is None
        }
        for uid in alive:
            self.pod_seen.setdefault(uid, now)
        for uid in self.pod_seen:
            if uid not in alive:
                self.pod_gone.setdefault(uid, now)
        body: dict[str, Any] = self._custom.get_namespaced_custom_object(  # type: ignore[assignment]
            "paraserve.dev", "v1alpha1", self.namespace, "inferencedeployments", NAME
        )
        status = body.get("status") or {}
        for report in (status.get("measured") or {}).get("stalledReplicas") or []:
            self.reports.setdefault(report["headUid"], (now, report))
        phase = status.get("phase")
        if phase and (not self.phases or self.phases[-1][1] != phase):
            self.phases.append((now, phase))

    def first_phase(self, phase: str, after: float) -> float | None:
        return next((t for t, p in self.phases if p == phase and t >= after), None)


def earliest(times: dict[str, float], uids: set[str]) -> float | None:
    return min((times[u] for u in uids if u in times), default=None)


def seconds(start: float | None, end: float | None) -> str:
    return f"{end - start:.1f} s" if start is not None and end is not None else "n/a"


# -- what kubectl shows ---------------------------------------------------------------------


def alive_pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    listing = cluster.get("pods", namespace=namespace)["items"]
    return [
        p
        for p in listing
        if (p["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT) == NAME
        and not p["metadata"].get("deletionTimestamp")
    ]


def events(cluster: LocalCluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = cluster.get("events", namespace=namespace)["items"]
    return [
        e
        for e in items
        if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") == NAME
    ]


def operator_events(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    """The operator's Events on the deployment, oldest first (not the Service's, whose
    kwok pod IPs the endpoints controller refuses)."""
    items = cluster.get("events", namespace=namespace)["items"]
    ours = [
        e
        for e in items
        if (e.get("source") or {}).get("component") == "paraserve-operator"
        and (e.get("involvedObject") or {}).get("name") == NAME
    ]
    return sorted(ours, key=lambda e: int(e["metadata"]["resourceVersion"]))  # write order


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def gang_annotation(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    body = cluster.get("inferencedeployments.paraserve.dev", NAME, namespace=namespace)
    return dict(json.loads((body["metadata"].get("annotations") or {}).get(GANG_ANNOTATION, "{}")))


def test_a_hung_replica_is_restarted_then_stopped_until_the_spec_is_edited(
    cluster: LocalCluster, crd: Path, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        namespace = stack.enter_context(cluster.namespace())
        pool = stack.enter_context(cluster.gpu_pool("1 x 4 x H100-80GB"))
        logs = stack.enter_context(operator(cluster, namespace, tmp_path / "operator.log"))
        runner = stack.enter_context(RankRunner(cluster.kubeconfig, namespace, NAME, tmp_path))
        cluster.apply(document(pool.node_selector, STALL_AFTER), namespace=namespace)
        timeline = stack.enter_context(Timeline(cluster, namespace, runner))

        def gang(excluding: set[str]) -> set[str] | None:
            """The uids of 4 rank processes of pods none of which is in `excluding`."""
            uids = {rank.uid for rank in list(runner.ranks.values())}
            # Ranks of a gang being deleted may exit first, when their peers are stopped.
            exited = [r for r in runner.exited if r.uid not in excluding]
            assert not exited, f"a rank exited: {exited[0].log_path.read_text()}"
            return uids if len(uids) == 4 and not uids & excluding else None

        first = until(cluster, lambda: gang(set()), 180, "4 rank processes", logs)
        first_head = next(r.uid for r in list(runner.ranks.values()) if r.rank == 0)

        # 1. The head serves STALL_AFTER requests, then hangs; the operator reports it and
        # restarts the replica as a gang: all four pods new.
        def restarted() -> tuple[set[str], dict[str, Any]] | None:
            status = status_of(cluster, namespace, NAME)
            uids = gang(first)
            pods = {p["metadata"]["uid"] for p in alive_pods(cluster, namespace)}
            if uids is None or pods != uids or status.get("restarts", 0) < 1:
                return None
            return uids, status

        second, status = until(cluster, restarted, 300, "the stalled replica recreated", logs)
        stalled_events = events(cluster, namespace, "ReplicaStalled")
        assert len(stalled_events) == 1, stalled_events
        assert stalled_events[0]["type"] == "Warning"
        assert "failurePolicy.stallTimeout" in stalled_events[0]["message"]
        assert status["restarts"] == 1
        assert first_head in timeline.reports, "no stalledReplicas report was seen in status"
        seen_at, report = timeline.reports[first_head]
        assert report["replica"] == 0 and report["head"] == f"{NAME}-0-0"
        second_head = next(r.uid for r in list(runner.ranks.values()) if r.rank == 0)

        head = timeline.heads.get(first_head)
        stall_1 = head.last_progress if head else None
        deleted_1 = earliest(timeline.pod_gone, first)
        created_2 = earliest(timeline.pod_seen, second)
        print(
            "\n--- stall 1: restarted as a gang ---"
            f"\nhead {NAME}-0-0 stopped generating at {head.tokens if head else '?'} tokens"
            f" with {head.waiting if head else '?'} requests waiting"
            f"\nstatus.measured.stalledReplicas: {json.dumps(report)}"
            f"\nEvent {stalled_events[0]['reason']}: {stalled_events[0]['message']}"
            f"\nlast token → stall reported in status: {seconds(stall_1, seen_at)}"
            f"\nlast token → old pods deleted (the restart): {seconds(stall_1, deleted_1)}"
            f"\nold pods deleted → new pods created: {seconds(deleted_1, created_2)}"
            f"\nstatus.restarts: {status['restarts']}; pod uids all new: {not first & second}"
        )

        # 2. The new gang serves, hangs again: the second failure within 10m is more than
        # maxRestarts 1, so the replica is stopped and the deployment is Failed.
        def stopped() -> dict[str, Any] | None:
            status = status_of(cluster, namespace, NAME)
            ready = condition(status, "Ready")
            failed = status.get("phase") == "Failed"
            return status if failed and ready.get("reason") == "RestartLimitExceeded" else None

        status = until(cluster, stopped, 300, "phase Failed, RestartLimitExceeded", logs)
        failed_at = timeline.first_phase("Failed", after=created_2 or 0.0)
        message = condition(status, "Ready")["message"]
        assert condition(status, "Ready")["status"] == "False"
        assert condition(status, "Scheduled")["reason"] == "RestartLimitExceeded"
        assert f"failed {MAX_RESTARTS + 1} times within 10m" in message, message
        assert "edit the spec to start it again" in message
        limit_events = events(cluster, namespace, "RestartLimitExceeded")
        assert len(limit_events) == 1, limit_events
        assert "failurePolicy.stallTimeout" in limit_events[0]["message"]  # the last cause
        assert len(events(cluster, namespace, "ReplicaStalled")) == 1  # the stop is not one
        assert status["restarts"] == 1  # restarts, not failures: the stop restarts nothing

        wait(cluster, lambda: not alive_pods(cluster, namespace), 90, "no rank pods", logs)
        wait(cluster, lambda: not runner.addresses(), 60, "rank processes stopped", logs)
        gone_at = time.monotonic()
        for _ in range(10):  # and they stay gone: nothing recreates a stopped replica
            time.sleep(2)
            assert not alive_pods(cluster, namespace), "a stopped replica's pod came back"
            assert status_of(cluster, namespace, NAME)["phase"] == "Failed"
        annotation = gang_annotation(cluster, namespace)
        replica = annotation["replicas"]["0"]
        assert replica.get("stopped") is True and len(replica["failures"]) == MAX_RESTARTS + 1
        head = timeline.heads.get(second_head)
        stall_2 = head.last_progress if head else None
        first_token_2 = head.first_progress if head else None
        shown = cluster.kubectl("get", "infd", NAME, "-n", namespace).stdout
        print(
            "\n--- stall 2: restart limit exceeded ---"
            f"\nthe second gang's head stopped generating at {head.tokens if head else '?'}"
            f" tokens with {head.waiting if head else '?'} requests waiting"
            f"\nnew pods created → first token: {seconds(created_2, first_token_2)}"
            f"\nlast token of the second gang → phase Failed: {seconds(stall_2, failed_at)}"
            f"\nfailures counted in {GANG_ANNOTATION}: {len(replica['failures'])};"
            f" status.restarts: {status['restarts']}"
            f"\nReady: {message}"
            f"\nEvent RestartLimitExceeded: {limit_events[0]['message']}"
            f"\nno rank pods for {time.monotonic() - gone_at:.0f} s after they went"
            f"\n$ kubectl get infd {NAME}\n{shown}"
        )

        # 3. An edit of the spec (the worker no longer hangs) starts the replica again.
        generation = cluster.get("infd", NAME, namespace=namespace)["metadata"]["generation"]
        edited_at = time.monotonic()
        cluster.kubectl(
            "patch", "infd", NAME, "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"worker": {"args": LOAD}}}),
        )  # fmt: skip

        def ready_again() -> tuple[set[str], dict[str, Any]] | None:
            status = status_of(cluster, namespace, NAME)
            uids = gang(first | second)
            if uids is None or status.get("phase") != "Ready":
                return None
            return (uids, status) if condition(status, "Ready").get("status") == "True" else None

        third, status = until(cluster, ready_again, 300, "Ready after the edit", logs)
        ready_at = time.monotonic()
        assert status["observedGeneration"] > generation

        def measured_without_stall() -> dict[str, Any] | None:
            status = status_of(cluster, namespace, NAME)
            measured = status.get("measured") or {}
            heads = [timeline.heads.get(u) for u in third]
            moving = any(h is not None and (h.tokens or 0) > 8 * STALL_AFTER for h in heads)
            fresh = measured.get("ranksScraped") == 4 and not measured.get("stalledReplicas")
            return status if fresh and moving else None

        # It serves past the point where the old worker hung, and keeps serving.
        wait(cluster, measured_without_stall, 180, "measured, serving, no stall", logs)
        time.sleep(2 * STALL_TIMEOUT)
        status = status_of(cluster, namespace, NAME)
        assert status["phase"] == "Ready" and status["restarts"] == 1
        assert not (status.get("measured") or {}).get("stalledReplicas")
        assert len(events(cluster, namespace, "ReplicaStalled")) == 1
        assert "stopped" not in gang_annotation(cluster, namespace)["replicas"].get("0", {})
        shown = cluster.kubectl("get", "infd", NAME, "-n", namespace).stdout
        story = "\n".join(
            f"{e['type']:<8} {e['reason']:<21} {e['message']}"
            for e in operator_events(cluster, namespace)
        )
        print(
            "\n--- after the edit ---"
            f"\nedit → Ready with new pods: {seconds(edited_at, ready_at)}"
            f"\n$ kubectl get infd {NAME}\n{shown}"
            f"\n$ kubectl get events --field-selector source=paraserve-operator\n{story}"
            f"\nphases: {' → '.join(p for _, p in timeline.phases)}"
            f"\n(sampled every 0.5 s; {len(timeline.errors)} samples failed)"
        )

        # Deleting the deployment deletes its pods; the harness stops their processes.
        cluster.kubectl("delete", "infd", NAME, "-n", namespace, "--wait=false")
        wait(cluster, lambda: not runner.addresses(), 120, "rank processes stopped", logs)
