"""One operator, 1,000 InferenceDeployments and 10,000 rank pods, on the local control plane.

Run: .venv/bin/python bench/scale.py [--deployments 1000] [--rest 30]

Starts the local control plane with a kwok pool large enough for every rank (8 GPUs a node, 5 %
spare), one `paraserve operator` with its admission webhook (self-managed, URL mode), and
creates the deployments, a mix of sizes, 16 create requests at a time:

    50 % PP=1 × TP=4 (4 ranks), 30 % PP=1 × TP=8 (8), 15 % PP=2 × TP=8 (16), 5 % PP=8 × TP=8 (64)

which at 1,000 deployments is 10,000 rank pods. It prints:

* seconds from the first create to every rank pod created, to every one Running (as a watch on
  the namespace sees them), and to every deployment's status Ready; how far each deployment's
  status trailed its last pod Running (p50, p99, max), and the three furthest behind;
* the reconciles by result (ok, conflict, error) and the API's 409 answers to the operator;
* the operator's watch-event-to-reconcile latency under that load (its queue-wait histogram:
  from a watch event queueing a deployment to a worker starting its reconcile), its reconcile
  time, its API calls' wait for a thread and time in flight by lane, and the worst event-loop
  lag it sampled;
* the webhook's admission latency while busy, as the API server measured its calls
  (apiserver_admission_webhook_admission_duration_seconds), and the client's create latency;
* at rest: the operator's resident memory and its API requests per second;
* a restarted operator: seconds from its start to every deployment reconciled once more, no pod
  created or deleted (the same pod UIDs) and every status still Ready and current.

kwok makes bound pods Running at once, so the figures measure the control plane and the
operator, not image pulls.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e.cluster.local import LocalCluster, running_cluster  # noqa: E402

from paraserve.controller.running import loop_stalls  # noqa: E402

CRD = ROOT / "crds" / "inferencedeployments.paraserve.dev.yaml"
IMAGE = "registry.invalid/paraserve/worker:bench"
GROUP, VERSION, PLURAL = "paraserve.dev", "v1alpha1", "inferencedeployments"
WEBHOOK = "validate-spec.inferencedeployments.paraserve.dev"
# (share, pipeline, tensor): 10 ranks per deployment on average.
MIX = [(0.50, 1, 4), (0.30, 1, 8), (0.15, 2, 8), (0.05, 8, 8)]
CREATE_CONCURRENCY = 16


def mix(deployments: int) -> list[tuple[str, int, int]]:
    """(name, pipeline, tensor) of every deployment, sizes interleaved."""
    counts = [round(share * deployments) for share, _, _ in MIX]
    counts[0] += deployments - sum(counts)
    kinds = [(p, t) for count, (_, p, t) in zip(counts, MIX, strict=True) for _ in range(count)]
    # Interleave so that big and small deployments arrive throughout the run.
    kinds = [kinds[i] for i in sorted(range(len(kinds)), key=lambda i: (i * 7919) % len(kinds))]
    return [(f"d{i:04d}-pp{p}-tp{t}", p, t) for i, (p, t) in enumerate(kinds)]


def inference_deployment(name: str, pipeline: int, tensor: int, selector: dict[str, str]) -> Any:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "bench", "dtype": "float16", "parameters": "7B"},
            "parallelism": {"pipeline": pipeline, "tensor": tensor, "sequence": 1},
            "gpu": {"memory": "80G"},
            "placement": {"nodeSelector": selector},
            "worker": {"image": IMAGE},
        },
    }


# -- watching --------------------------------------------------------------------------------


@dataclass
class World:
    """What watches of the namespace's pods and deployments saw, and when."""

    started: float = field(default_factory=time.monotonic)
    pod_created: dict[str, float] = field(default_factory=dict)
    pod_running: dict[str, float] = field(default_factory=dict)
    pod_uid: dict[str, str] = field(default_factory=dict)
    pod_events: int = 0
    ready: dict[str, float] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    generation: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def see_pod(self, kind: str, pod: dict[str, Any]) -> None:
        now = time.monotonic()
        name = pod["metadata"]["name"]
        with self.lock:
            self.pod_events += 1
            if kind == "DELETED":
                self.pod_uid.pop(name, None)
                return
            self.pod_created.setdefault(name, now)
            self.pod_uid[name] = pod["metadata"]["uid"]
            if (pod.get("status") or {}).get("phase") == "Running":
                self.pod_running.setdefault(name, now)

    def see_deployment(self, kind: str, body: dict[str, Any]) -> None:
        now = time.monotonic()
        name = body["metadata"]["name"]
        with self.lock:
            if kind == "DELETED":
                return
            status = body.get("status") or {}
            self.status[name] = status
            self.generation[name] = body["metadata"].get("generation", 0)
            if status.get("phase") == "Ready":
                self.ready.setdefault(name, now)

    def counts(self) -> tuple[int, int, int]:
        with self.lock:
            return len(self.pod_created), len(self.pod_running), len(self.ready)

    def current(self, names: list[str]) -> bool:
        """Every deployment Ready, its status of its latest generation."""
        with self.lock:
            return all(
                self.status.get(n, {}).get("phase") == "Ready"
                and self.status[n].get("observedGeneration") == self.generation.get(n)
                for n in names
            )


def watch(
    cluster: LocalCluster,
    path: str,
    see: Callable[[str, dict[str, Any]], None],
    stop: threading.Event,
) -> None:
    """A raw watch (json per line, no model classes: 10,000 pods cost the bench little)."""
    from kubernetes import client

    api = client.ApiClient(cluster.api_client().configuration)
    version = ""
    while not stop.is_set():
        try:
            query = [("watch", "true"), ("timeoutSeconds", "10"), ("allowWatchBookmarks", "true")]
            if version:
                query.append(("resourceVersion", version))
            response = api.call_api(
                *api.param_serialize(
                    method="GET",
                    resource_path=path,
                    query_params=query,
                    auth_settings=["BearerToken"],
                )[:3],
                _request_timeout=30,
            ).response
            for line in response:
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    version = ""
                    break
                version = obj["metadata"].get("resourceVersion", version)
                if event["type"] != "BOOKMARK":
                    see(event["type"], obj)
                if stop.is_set():
                    break
        except Exception:  # a watch expires or the server is busy; start again
            time.sleep(0.2)


# -- the operator ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Operator:
    cluster: LocalCluster
    namespace: str
    log: Path
    metrics_port: int = field(default_factory=free_port)
    webhook_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        args = [
            sys.executable, "-m", "paraserve.cli", "operator",
            "--kubeconfig", str(self.cluster.kubeconfig), "--no-leader-elect",
            "--namespace", self.namespace,
            "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
            "--health-port", str(free_port()), "--health-address", "127.0.0.1",
            "--log-format", "plain",
            "--webhook", "self-managed", "--webhook-address", "127.0.0.1",
            "--webhook-host", "127.0.0.1", "--webhook-port", str(self.webhook_port),
        ]  # fmt: skip
        env = {**os.environ, **self.cluster.env, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            started = time.monotonic()
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        return started

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by its name and labels, as written."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return parse_metrics(response.read().decode())

    def rss_bytes(self) -> int:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k == prefix or k.startswith(prefix + "{"))


def quantiles(samples: dict[str, float], name: str, match: str = "") -> tuple[float, float, int]:
    """p50 and p99 of a Prometheus histogram (interpolated within buckets), and its count."""
    buckets: dict[float, float] = {}
    for key, value in samples.items():
        if key.startswith(name + "_bucket{") and match in key:
            bound = re.search(r'le="([^"]+)"', key).group(1)  # type: ignore[union-attr]
            upper = math.inf if bound == "+Inf" else float(bound)
            buckets[upper] = buckets.get(upper, 0.0) + value
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    count = counts[-1] if counts else 0.0

    def quantile(q: float) -> float:
        if not count:
            return math.nan
        rank = q * count
        i = bisect.bisect_left(counts, rank)
        upper = bounds[i]
        lower = bounds[i - 1] if i else 0.0
        below = counts[i - 1] if i else 0.0
        if math.isinf(upper):
            return lower
        inside = counts[i] - below
        return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)

    return quantile(0.5), quantile(0.99), int(count)


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Counters and histograms as they moved between two scrapes (gauges as after)."""
    return {key: value - before.get(key, 0.0) if _counts(key) else value
            for key, value in after.items()}  # fmt: skip


def _counts(key: str) -> bool:
    name = key.split("{", 1)[0]
    return name.endswith(("_bucket", "_count", "_sum", "_total"))


def worst_bucket(samples: dict[str, float], name: str) -> tuple[float, float]:
    """The histogram bucket (lower, upper bound) that holds its largest observation."""
    bounds = []
    for key, value in samples.items():
        if key.startswith(name + "_bucket{"):
            bound = re.search(r'le="([^"]+)"', key).group(1)  # type: ignore[union-attr]
            bounds.append((math.inf if bound == "+Inf" else float(bound), value))
    bounds.sort()
    everything = bounds[-1][1] if bounds else 0.0
    lower = 0.0
    for bound, count in bounds:
        if everything and count >= everything:
            return lower, bound
        lower = bound
    return math.nan, math.nan


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


# -- the run ---------------------------------------------------------------------------------


def wait_for(what: str, condition: Callable[[], bool], timeout: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def progress(world: World, total_pods: int, deployments: int) -> Iterator[str]:
    created, running, ready = world.counts()
    yield (
        f"  t={time.monotonic() - world.started:6.1f}s pods created {created}/{total_pods},"
        f" running {running}/{total_pods}, deployments ready {ready}/{deployments}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--rest", type=float, default=30.0, help="seconds measured at rest")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)

    plan = mix(args.deployments)
    ranks = sum(p * t for _, p, t in plan)
    nodes = math.ceil(ranks / 8 * 1.05)
    print(f"{args.deployments} deployments, {ranks} rank pods, {nodes} nodes × 8 GPUs", flush=True)
    log = sys.stderr
    # 1,313 kwok nodes: with leases of 40 s kwok fell behind renewing them on two saturated
    # cores and nodes went NotReady under the operator (a run of 2026-12-02): the harness.
    with running_cluster(node_lease_seconds=600) as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD.stem}")
        begun = time.monotonic()
        with (
            cluster.gpu_pool(f"{nodes} x 8 x H100-80GB", ready_timeout=900) as pool,
            cluster.namespace("scale") as namespace,
        ):
            print(f"pool of {nodes} nodes Ready in {time.monotonic() - begun:.0f} s", file=log)
            operator = Operator(cluster, namespace, cluster.workdir / "scale-operator.log")
            operator.start()
            try:
                run(cluster, namespace, pool.node_selector, operator, plan, ranks, args)
            finally:
                operator.stop()
                cluster.kubectl(
                    "delete", "validatingwebhookconfiguration", "paraserve.dev",
                    "--ignore-not-found",
                )  # fmt: skip
    return 0


def run(
    cluster: LocalCluster,
    namespace: str,
    selector: dict[str, str],
    operator: Operator,
    plan: list[tuple[str, int, int]],
    ranks: int,
    args: argparse.Namespace,
) -> None:
    from kubernetes import client

    names = [name for name, _, _ in plan]
    log = sys.stderr
    wait_for("the operator's metrics", lambda: _answers(operator), 120)
    # The webhook has registered itself once its configuration names our namespace.
    wait_for(
        "the webhook configuration",
        lambda: (
            cluster.kubectl(
                "get", "validatingwebhookconfiguration", "paraserve.dev", check=False
            ).returncode
            == 0
        ),
        120,
    )
    world = World()
    stop = threading.Event()
    watchers = [
        threading.Thread(
            target=watch,
            args=(cluster, f"/api/v1/namespaces/{namespace}/pods", world.see_pod, stop),
            daemon=True,
        ),
        threading.Thread(
            target=watch,
            args=(
                cluster,
                f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                world.see_deployment,
                stop,
            ),
            daemon=True,
        ),
    ]
    for watcher in watchers:
        watcher.start()
    time.sleep(2.0)

    api = client.CustomObjectsApi(cluster.api_client())
    create_seconds: list[float] = []

    def create(item: tuple[str, int, int]) -> None:
        name, pipeline, tensor = item
        body = inference_deployment(name, pipeline, tensor, selector)
        start = time.monotonic()
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, _preload_content=False
        )
        create_seconds.append(time.monotonic() - start)

    idle = operator.metrics()  # the load's figures are what changed from here
    world.started = time.monotonic()
    with ThreadPoolExecutor(CREATE_CONCURRENCY) as pool:
        list(pool.map(create, plan))
    created_all_deployments = time.monotonic() - world.started
    print(f"  {len(plan)} deployments created in {created_all_deployments:.1f} s", file=log)

    def report() -> None:
        for line in progress(world, ranks, len(plan)):
            print(line, file=log, flush=True)

    last = [0.0]

    def settled() -> bool:
        if time.monotonic() - last[0] > 15:
            report()
            last[0] = time.monotonic()
        _, running, ready = world.counts()
        return running >= ranks and ready >= len(plan)

    try:
        wait_for("every pod Running and every deployment Ready", settled, args.timeout, 0.5)
    finally:
        report()
    busy = difference(operator.metrics(), idle)
    apiserver = parse_metrics(cluster.kubectl("get", "--raw", "/metrics").stdout)

    with world.lock:
        t_created = max(world.pod_created.values()) - world.started
        t_running = max(world.pod_running.values()) - world.started
        t_ready = max(world.ready.values()) - world.started
        lag = []
        behind: list[tuple[float, str, float, float]] = []  # lag, name, last created, Running
        for name in names:
            prefix = name + "-"
            own = [t for pod, t in world.pod_running.items() if pod.startswith(prefix)]
            made = [t for pod, t in world.pod_created.items() if pod.startswith(prefix)]
            lag.append(world.ready[name] - max(own))
            behind.append((lag[-1], name, max(made) - world.started, max(own) - world.started))
        uids = dict(world.pod_uid)
        events = world.pod_events
    print()
    print(f"{len(plan)} InferenceDeployments, {ranks} rank pods; one run")
    print(f"  all deployments created (16 at a time)        {created_all_deployments:8.1f} s")
    print(f"  all rank pods created                          {t_created:8.1f} s")
    print(f"  all rank pods Running                          {t_running:8.1f} s")
    print(f"  all deployments Ready (status)                 {t_ready:8.1f} s")
    print(
        f"  status behind its last pod Running: p50 {percentile(lag, 0.5):.2f} s,"
        f" p99 {percentile(lag, 0.99):.2f} s, max {max(lag):.2f} s"
    )
    print("  furthest behind (status Ready s after its last pod Running; last pod created, Running"
          " at):")  # fmt: skip
    for late, name, made, ran in sorted(behind, reverse=True)[:3]:
        print(f"    {name}: {late:.1f} s (created {made:.1f} s, Running {ran:.1f} s)")
    results = {
        result: total(busy, f'paraserve_operator_reconciles_total{{result="{result}"}}')
        for result in ("ok", "conflict", "error")
    }
    refused = sum(
        value
        for key, value in busy.items()
        if key.startswith("paraserve_operator_api_calls_total{") and 'code="409"' in key
    )
    print(f"  reconciles: {', '.join(f'{k} {v:.0f}' for k, v in results.items())};"
          f" API answers 409: {refused:.0f}")  # fmt: skip
    p50, p99, count = quantiles(busy, "paraserve_operator_queue_wait_seconds")
    print(f"  watch event → reconcile (queue wait), load: p50 {p50 * 1000:.1f} ms, p99"
          f" {p99 * 1000:.1f} ms ({count} reconciles)")  # fmt: skip
    p50, p99, count = quantiles(busy, "paraserve_operator_reconcile_duration_seconds")
    print(f"  reconcile time, load: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    for lane in ("pods", "deployments", "other"):
        label = f'lane="{lane}"'
        w50, w99, count = quantiles(busy, "paraserve_operator_api_call_wait_seconds", label)
        c50, c99, _ = quantiles(busy, "paraserve_operator_api_call_duration_seconds", label)
        print(f"  API calls, {lane} lane: waited for a thread p50 {w50 * 1000:.1f} ms, p99"
              f" {w99 * 1000:.1f} ms; took p50 {c50 * 1000:.1f} ms, p99 {c99 * 1000:.1f} ms"
              f" ({count} calls)")  # fmt: skip
    p50, p99, count = quantiles(busy, "paraserve_operator_event_loop_lag_seconds")
    low, high = worst_bucket(busy, "paraserve_operator_event_loop_lag_seconds")
    print(f"  event-loop lag, load: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, worst"
          f" {low * 1000:.0f}–{high * 1000:.0f} ms ({count} samples, every 0.1 s)")  # fmt: skip
    p50, p99, count = quantiles(
        apiserver, "apiserver_admission_webhook_admission_duration_seconds", f'name="{WEBHOOK}"'
    )
    print(f"  webhook admission (API server's measure), busy: p50 {p50 * 1000:.1f} ms,"
          f" p99 {p99 * 1000:.1f} ms ({count} calls)")  # fmt: skip
    print(
        f"  create request incl. webhook, client side: p50"
        f" {percentile(create_seconds, 0.5) * 1000:.0f} ms,"
        f" p99 {percentile(create_seconds, 0.99) * 1000:.0f} ms"
    )
    calls_run = total(busy, "paraserve_operator_api_calls_total")
    print(f"  operator API calls during the run: {calls_run:.0f}; pod events seen: {events}")

    # -- at rest ---------------------------------------------------------------------------
    time.sleep(10)
    before = operator.metrics()
    time.sleep(args.rest)
    after = operator.metrics()
    calls = total(after, "paraserve_operator_api_calls_total") - total(
        before, "paraserve_operator_api_calls_total"
    )
    worst = total(after, "paraserve_operator_event_loop_lag_max_seconds")
    print(
        f"  at rest: operator RSS {operator.rss_bytes() / 2**20:.0f} MiB,"
        f" API requests {calls / args.rest:.2f}/s over {args.rest:.0f} s"
        " (no leader election: no Lease renewals)"
    )
    print(f"  event-loop lag, worst since the operator started (its first listing"
          f" included): {worst * 1000:.0f} ms")  # fmt: skip
    # The garbage collector holds the whole process: a full collection walks every object.
    longest = total(after, "paraserve_operator_gc_pause_max_seconds")
    spent = total(after, "paraserve_operator_gc_pause_seconds_sum")
    full = 'generation="2"'
    full_count = after.get(f"paraserve_operator_gc_pause_seconds_count{{{full}}}", 0.0)
    full_spent = after.get(f"paraserve_operator_gc_pause_seconds_sum{{{full}}}", 0.0)
    print(f"  garbage collector since the start: longest pause {longest * 1000:.0f} ms;"
          f" {full_count:.0f} full collections, {full_spent:.2f} s; all {spent:.2f} s")  # fmt: skip
    stalls = held_loop(operator.log)
    print(f"  event loop held for 1 s or more: {len(stalls)} times; the longest, with the stacks"
          " the watchdog found it in:")  # fmt: skip
    for seconds, found in sorted(stalls, reverse=True)[:STALLS_SHOWN]:
        print(f"    {seconds:.2f} s: {found}")

    # -- restart ---------------------------------------------------------------------------
    operator.stop()
    started = operator.start()

    def resynced() -> bool:
        samples = _answers(operator)
        if not samples:
            return False
        reconciled = total(samples, "paraserve_operator_reconciles_total")
        return (
            reconciled >= len(plan)
            and total(samples, "paraserve_operator_queue_depth") == 0
            and world.current(names)
        )

    wait_for("a full resync", resynced, 600, 0.1)
    resync = time.monotonic() - started
    samples = operator.metrics()
    time.sleep(2)
    with world.lock:
        same = world.pod_uid == uids
    print(
        f"  restarted operator: every deployment reconciled and current {resync:.1f} s after"
        f" its start; pods created {total(samples, 'paraserve_operator_pods_created_total'):.0f};"
        f" same pod UIDs: {same} ({len(uids)} pods)"
    )
    stop.set()


STALLS_SHOWN = 5


def held_loop(log: Path) -> list[tuple[float, str]]:
    """The operator's own lines on each stall of its event loop (`loop_stalls`): seconds, where."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = loop_stalls.LOGGED.search(line)
        if match:
            found.append((float(match.group(1)), match.group(2)))
    return found


def _answers(operator: Operator) -> dict[str, float] | None:
    try:
        return operator.metrics()
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
