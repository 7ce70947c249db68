"""status.measured end to end: the operator scrapes real ranks and writes what they report.

The operator runs as a subprocess (`paraserve operator`) against the local control plane. kwok
pods run no containers, so e2e/rankrunner.py runs each rank pod's `paraserve worker` as a local
process with that pod's env and points the operator at it with the
`paraserve.dev/metrics-address` annotation; the second test serves chosen exposition text
there instead and changes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from e2e.cluster.local import LocalCluster
from e2e.rankrunner import RankRunner, annotate
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from tests.builders import TINY_ARCHITECTURE

from paraserve.api import InferenceDeploymentSpec
from paraserve.controller.measurement.exposition import parse
from paraserve.controller.measurement.metric_profiles import PARASERVE, read
from paraserve.planner.memory import stage_memory, stage_shapes

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "inferencedeployments.paraserve.dev.yaml"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(900)

# Fast loop for tests: scrape every second over a 6 s window, rewrite at least every 30 s.
MEASURE_ENV = {
    "PARASERVE_MEASURE_INTERVAL": "1",
    "PARASERVE_MEASURE_WINDOW": "6",
    "PARASERVE_MEASURE_TIMEOUT": "1",
    "PARASERVE_MEASURE_REFRESH": "30",
    # The harness's ranks serve on 127.0.0.1 ports named by the pod annotation.
    "PARASERVE_MEASURE_ADDRESS_ANNOTATION": "true",
}


@pytest.fixture(scope="module")
def crd(cluster: LocalCluster) -> Path:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD.stem}")
    return CRD


@contextlib.contextmanager
def operator(cluster: LocalCluster, namespace: str, log_path: Path) -> Iterator[Callable[[], str]]:
    """`paraserve operator` for one namespace, without leader election; yields its log tail."""
    args = [
        sys.executable,
        "-m",
        "paraserve.cli",
        "operator",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "-n",
        namespace,
        "--no-leader-elect",
        "--metrics-port",
        "0",
        "--health-port",
        "0",
        "--worker-image",
        "registry.invalid/paraserve/worker:test",
        "--log-format",
        "plain",
    ]
    env = {**os.environ, **cluster.env, **MEASURE_ENV, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def tail() -> str:
        lines = log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-30:])

    try:
        yield tail
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait(
    cluster: LocalCluster,
    condition: Callable[[], T],
    timeout: float,
    what: str,
    logs: Callable[[], str],
) -> T:
    try:
        return cluster.wait_for(condition, timeout=timeout, interval=1.0, what=what)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n--- operator log ---\n{logs()}") from None


def status_of(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    body = cluster.get("inferencedeployments.paraserve.dev", name, namespace=namespace)
    return dict(body.get("status") or {})


def meets_slo(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == "MeetsSLO"), None)


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return str(response.read().decode())


# -- the acceptance: a real PP=2 × TP=2 × SP=2 replica ---------------------------------------


def tiny_deployment(name: str, pool_selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "paraserve.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny-llama", "dtype": "float32", "architecture": TINY_ARCHITECTURE},
            "parallelism": {"pipeline": 2, "tensor": 2, "sequence": 2},
            "serving": {"maxBatchSize": 4, "maxSequenceLength": 64},
            "memory": {"overheadPerGpu": "64Mi"},
            "placement": {"nodeSelector": pool_selector},
            "worker": {
                "args": ["worker", "--rate", "8", "--prompt-length", "16", "--output-tokens", "8"]
            },
            "slo": {"prefillP99": "5s", "decodeP99PerToken": "1s", "minThroughputRPS": 1},
        },
    }


def test_a_real_replica_is_measured_and_meets_its_slo(
    cluster: LocalCluster, crd: Path, tmp_path: Path
) -> None:
    name = "tiny"
    with contextlib.ExitStack() as stack:
        namespace = stack.enter_context(cluster.namespace())
        pool = stack.enter_context(cluster.gpu_pool("1 x 4 x H100-80GB"))
        logs = stack.enter_context(operator(cluster, namespace, tmp_path / "operator.log"))
        runner = stack.enter_context(RankRunner(cluster.kubeconfig, namespace, name, tmp_path))
        document = tiny_deployment(name, pool.node_selector)
        cluster.apply(document, namespace=namespace)

        wait(cluster, lambda: len(runner.addresses()) == 4, 120, "4 rank processes", logs)

        def measured_and_judged() -> dict[str, Any] | None:
            status = status_of(cluster, namespace, name)
            measured = status.get("measured") or {}
            condition = meets_slo(status) or {}
            complete = all(
                measured.get(k) is not None
                for k in (
                    "maxMemoryBytesPerGpu",
                    "prefillP99Seconds",
                    "decodeP99PerTokenSeconds",
                    "throughputRps",
                )
            )
            if complete and measured.get("ranksScraped") == 4 and condition.get("status") == "True":
                return status
            assert not runner.exited, f"a rank exited: {runner.exited[0].log_path.read_text()}"
            return None

        status = wait(cluster, measured_and_judged, 300, "measured status, MeetsSLO=True", logs)
        shown = cluster.kubectl("get", "infd", name, "-n", namespace, "-o", "yaml").stdout
        (tmp_path / "infd.yaml").write_text(shown)
        print(f"\n--- kubectl get infd {name} -o yaml ---\n{shown}")

        # The memory is the worst rank's own figure, read from the ranks, not the estimate.
        # A rank's activation peak can still grow with a longer prompt after the status was
        # written, so compare a fresh status with fresh readings until the loop has caught up.
        def status_matches_the_ranks() -> tuple[dict[str, Any], dict[str, Any]] | None:
            readings = {
                pod: read(PARASERVE, parse(scrape(address)))
                for pod, address in runner.addresses().items()
            }
            worst = max(r.memory_used_bytes or 0 for r in readings.values())
            latest = status_of(cluster, namespace, name)
            shown = (latest.get("measured") or {}).get("maxMemoryBytesPerGpu") or 0
            return (latest, readings) if shown == pytest.approx(worst, rel=0.1) else None

        status, readings = wait(
            cluster, status_matches_the_ranks, 60, "status memory = the worst rank's", logs
        )
        measured = status["measured"]
        assert measured["maxMemoryBytesPerGpu"] != status["plan"]["memory"]["totalBytes"]
        assert measured["ranksUnreachable"] == 0 and measured["profile"] == "paraserve"
        assert not status["memory"].startswith("~")  # the MEM column shows the measurement

        # The figure: parameters + KV cache each rank holds vs the planner's estimate.
        spec = InferenceDeploymentSpec.model_validate(document["spec"])
        par = spec.parallelism
        estimates = [
            stage_memory(spec, par, stage, None)
            for stage in stage_shapes(TINY_ARCHITECTURE["numLayers"], par.pipeline)  # type: ignore[arg-type]
        ]
        rows = [
            "| rank | pp | tp | parameters measured / estimated (B) "
            "| KV cache measured / estimated (B) | (params + KV) ratio |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for pod in sorted(readings, key=lambda p: int(p.rsplit("-", 1)[1])):
            rank = int(pod.rsplit("-", 1)[1])
            pp_rank, tp_rank = divmod(rank, par.tensor)
            r, e = readings[pod], estimates[pp_rank]
            params, kv = int(r.parameters_bytes or 0), int(r.kv_cache_bytes or 0)
            ratio = (params + kv) / (e.weights_bytes + e.kv_cache_bytes)
            rows.append(
                f"| {rank} | {pp_rank} | {tp_rank} | {params:,} / {e.weights_bytes:,} "
                f"| {kv:,} / {e.kv_cache_bytes:,} | {ratio:.3f} |"
            )
            assert 0.8 < ratio < 1.25, rows
        figure = "\n".join(rows)
        (tmp_path / "figure.md").write_text(figure + "\n")
        print(f"\n--- measured vs estimate ---\n{figure}")

        # A stricter SLO is judged against the same measurements: MeetsSLO turns False.
        cluster.kubectl(
            "patch", "infd", name, "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"slo": {"prefillP99": "0.0001"}}}),
        )  # fmt: skip

        def missed() -> dict[str, Any] | None:
            condition = meets_slo(status_of(cluster, namespace, name)) or {}
            return condition if condition.get("reason") == "ObjectivesMissed" else None

        condition = wait(cluster, missed, 60, "MeetsSLO=False", logs)
        assert condition["status"] == "False" and "prefill P99" in condition["message"]
        print(f"\n--- MeetsSLO after prefillP99: 100µs ---\n{json.dumps(condition, indent=1)}")

        # A gang restart: the harness stops the old ranks and runs the new pods, which meet
        # on a new port; the operator measures all four again.
        before = {rank.uid for rank in runner.ranks.values()}
        cluster.kubectl("delete", "pod", f"{name}-0-3", "-n", namespace, "--wait=false")

        def remeasured() -> dict[str, Any] | None:
            uids = {rank.uid for rank in runner.ranks.values()}
            status = status_of(cluster, namespace, name)
            fresh = len(uids) == 4 and not uids & before
            scraped = (status.get("measured") or {}).get("ranksScraped") == 4
            return status if fresh and scraped and status.get("restarts", 0) >= 1 else None

        restarted = wait(cluster, remeasured, 240, "the recreated replica measured", logs)
        assert restarted["measured"]["ranksUnreachable"] == 0

        # Deleting the deployment deletes its pods; the harness stops their processes.
        cluster.kubectl("delete", "infd", name, "-n", namespace, "--wait=false")
        wait(cluster, lambda: not runner.addresses(), 120, "rank processes stopped", logs)


# -- status follows the endpoint -------------------------------------------------------------


class SyntheticRank:
    """A rank endpoint with chosen figures: each scrape adds 10 requests at `latency`."""

    def __init__(self, memory: float, latency: float) -> None:
        self.memory, self.latency = memory, latency
        self.registry = CollectorRegistry()
        self._memory = Gauge("paraserve_rank_memory_used_bytes", "m", registry=self.registry)
        self._prefill = Histogram(
            "paraserve_prefill_latency_seconds",
            "p",
            buckets=(0.05, 0.1, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self._decode = Histogram(
            "paraserve_decode_token_latency_seconds",
            "d",
            buckets=(0.01, 0.05, 0.1),
            registry=self.registry,
        )
        self._requests = Counter("paraserve_requests", "r", registry=self.registry)
        rank = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = rank.exposition()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def exposition(self) -> bytes:
        self._memory.set(self.memory)
        for _ in range(10):
            self._prefill.observe(self.latency)
            self._decode.observe(0.02)
        self._requests.inc(10)
        return generate_latest(self.registry)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_status_follows_what_the_ranks_report(
    cluster: LocalCluster, crd: Path, tmp_path: Path
) -> None:
    name = "synthetic"
    ranks = [SyntheticRank(memory=1e9, latency=0.03), SyntheticRank(memory=2e9, latency=0.03)]
    with contextlib.ExitStack() as stack:
        for rank in ranks:
            stack.callback(rank.close)
        namespace = stack.enter_context(cluster.namespace())
        pool = stack.enter_context(cluster.gpu_pool("1 x 2 x H100-80GB"))
        logs = stack.enter_context(operator(cluster, namespace, tmp_path / "operator.log"))
        cluster.apply(
            {
                "apiVersion": "paraserve.dev/v1alpha1",
                "kind": "InferenceDeployment",
                "metadata": {"name": name},
                "spec": {
                    "model": {"name": "m", "dtype": "float16", "parameters": "1B"},
                    "parallelism": {"pipeline": 1, "tensor": 2},
                    "placement": {"nodeSelector": pool.node_selector},
                    "slo": {"prefillP99": "1s"},
                },
            },
            namespace=namespace,
        )

        def pods_ready() -> list[str] | None:
            pods = cluster.get("pods", namespace=namespace)["items"]
            names = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
            return sorted(names) if len(names) == 2 else None

        pods = wait(cluster, pods_ready, 120, "2 running rank pods", logs)
        from kubernetes import client

        api = cluster.api_client()
        stack.callback(api.close)
        core = client.CoreV1Api(api)
        for pod, rank in zip(pods, ranks, strict=True):
            annotate(core, namespace, pod, rank.address)

        def shows(memory: float, slo: str) -> Callable[[], dict[str, Any] | None]:
            def check() -> dict[str, Any] | None:
                status = status_of(cluster, namespace, name)
                measured = status.get("measured") or {}
                condition = meets_slo(status) or {}
                ok = (
                    measured.get("maxMemoryBytesPerGpu") == memory
                    and condition.get("status") == slo
                )
                return status if ok else None

            return check

        first = wait(cluster, shows(2e9, "True"), 90, "memory 2 GB, MeetsSLO True", logs)
        assert first["measured"]["prefillP99Seconds"] <= 0.05
        assert first["measured"]["ranksScraped"] == 2
        assert first["memory"] == "2 GB/85.52 GB (2.3%)"

        # The ranks now report more memory and slow prefills: status follows.
        ranks[1].memory, ranks[0].latency, ranks[1].latency = 5e9, 2.0, 2.0
        slow = wait(cluster, shows(5e9, "False"), 60, "memory 5 GB, MeetsSLO False", logs)
        assert 1.0 < slow["measured"]["prefillP99Seconds"] <= 2.5
        assert meets_slo(slow)["reason"] == "ObjectivesMissed"  # type: ignore[index]

        # And back: the window forgets the slow requests once they are older than it.
        ranks[1].memory, ranks[0].latency, ranks[1].latency = 1.5e9, 0.03, 0.03
        recovered = wait(cluster, shows(1.5e9, "True"), 60, "memory 1.5 GB, MeetsSLO True", logs)
        assert recovered["measured"]["throughputRps"] > 0

        # An unreachable rank is counted, not fatal.
        ranks[1].close()
        ranks.pop()

        def one_unreachable() -> dict[str, Any] | None:
            measured = status_of(cluster, namespace, name).get("measured") or {}
            return measured if measured.get("ranksUnreachable") == 1 else None

        partial = wait(cluster, one_unreachable, 60, "one rank unreachable", logs)
        assert partial["ranksScraped"] == 1 and partial["maxMemoryBytesPerGpu"] == 1e9
