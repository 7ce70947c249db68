"""A real vLLM deployment on the local control plane: Ready, answering, measured, restarted.

The operator renders each rank's `vllm serve` command into its kwok pod; e2e/enginerunner.py
runs exactly that command and env (with the overrides it documents) from vLLM's cached CPU
build, against the tiny random-weight Llama made locally. The operator reads latency and
throughput from the head's /metrics and per-rank memory from a dcgm-exporter — here the
DCGM-format STAND-IN, which reports each rank process's resident memory in dcgm-exporter's
format (CPU ranks have no framebuffer).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e.cluster.local import LocalCluster
from e2e.enginerunner import EngineRunner
from e2e.engines import install, tiny_model
from test_measured import crd, operator, status_of, wait

__all__ = ["crd"]

pytestmark = pytest.mark.timeout(1500)

NAME = "tiny-vllm"


def deployment(
    model: Path, pool_selector: dict[str, str], name: str = NAME, pipeline: int = 1
) -> dict[str, Any]:
    # TP runs eagerly; PP fails under --enforce-eager on CPU and is compiled (~90 s per start).
    engine = {"name": "vllm", "args": ["--enforce-eager"] if pipeline == 1 else []}
    return {
        "apiVersion": "paraserve.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": str(model),
                "parameters": "13M",
                "architecture": {"numLayers": 4, "numAttentionHeads": 8, "numKeyValueHeads": 8},
            },
            "parallelism": {"pipeline": pipeline, "tensor": 2 // pipeline},
            "serving": {"maxBatchSize": 4, "maxSequenceLength": 512},
            "memory": {"overheadPerGpu": "4Gi"},
            "placement": {"nodeSelector": pool_selector},
            "engine": engine,
            "slo": {"prefillP99": "120s", "decodeP99PerToken": "30s"},
        },
    }


def complete(address: str, model: Path, prompt: str, tokens: int = 8) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{address}/v1/completions",
        data=json.dumps(
            {"model": str(model), "prompt": prompt, "max_tokens": tokens, "temperature": 0}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return dict(json.loads(answer.read()))


@contextlib.contextmanager
def traffic(address: str, model: Path) -> Any:
    """Requests one after another until the block ends, so counters move between scrapes."""
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.is_set():
            with contextlib.suppress(OSError):
                complete(address, model, f"paraserve pod {i}", tokens=8)
            i += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=150)


def test_a_vllm_deployment_serves_is_measured_and_restarts_as_a_gang(
    cluster: LocalCluster, crd: Path, tmp_path: Path
) -> None:
    engine = install.install_vllm()
    model = tiny_model.ensure(install.engines_root(), engine.python)
    with contextlib.ExitStack() as stack:
        namespace = stack.enter_context(cluster.namespace())
        pool = stack.enter_context(cluster.gpu_pool("1 x 2 x H100-80GB"))
        logs = stack.enter_context(operator(cluster, namespace, tmp_path / "operator.log"))
        runner = stack.enter_context(
            EngineRunner(cluster.kubeconfig, namespace, NAME, tmp_path, engine)
        )

        def engine_logs() -> str:
            tails = [
                f"--- {p.pod} ---\n" + "\n".join(p.log_path.read_text().splitlines()[-25:])
                for p in runner.by_pod().values()
            ]
            return logs() + "\n" + "\n".join(tails)

        cluster.apply(deployment(model, pool.node_selector), namespace=namespace)

        def head_healthy() -> Any:
            assert not runner.exited, runner.exited[0].log_path.read_text()[-4000:]
            heads = runner.heads()
            if len(runner.by_pod()) == 2 and heads and all(h.healthy() for h in heads.values()):
                return next(iter(heads.values()))
            return None

        head = wait(cluster, head_healthy, 600, "head and headless vLLM, /health 200", engine_logs)
        argvs = {p.pod: p.argv for p in runner.by_pod().values()}
        print(f"\n--- engine processes (the pods' own commands + overrides) ---\n{argvs}")
        assert "--headless" in argvs[f"{NAME}-0-1"] and "--headless" not in argvs[f"{NAME}-0-0"]

        def ready() -> dict[str, Any] | None:
            status = status_of(cluster, namespace, NAME)
            return status if status.get("phase") == "Ready" else None

        wait(cluster, ready, 120, "phase Ready", engine_logs)
        answer = complete(str(head.address), model, "the model rank")
        print(f"\n--- /v1/completions ---\n{json.dumps(answer)}")
        assert answer["object"] == "text_completion" and answer["choices"][0]["text"] is not None
        assert answer["usage"]["completion_tokens"] == 8

        def measured() -> dict[str, Any] | None:
            status = status_of(cluster, namespace, NAME)
            m = status.get("measured") or {}
            wanted = (
                "prefillP99Seconds",
                "decodeP99PerTokenSeconds",
                "throughputRps",
                "maxMemoryBytesPerGpu",
            )
            if all(m.get(k) is not None for k in wanted) and m.get("throughputRps", 0) > 0:
                return status
            return None

        with traffic(str(head.address), model):
            status = wait(cluster, measured, 300, "TTFT, ITL, throughput and memory", engine_logs)
        shown = cluster.kubectl("get", "infd", "-n", namespace).stdout
        print(f"\n--- kubectl get infd ---\n{shown}")
        print(f"\n--- status.measured ---\n{json.dumps(status['measured'], indent=1)}")
        m = status["measured"]
        assert m["profile"] == "vllm" and m["ranksScraped"] == 1 and m["ranksUnreachable"] == 0
        assert "memoryNotMeasured" not in m
        # The stand-in's figure is the fuller process's resident memory: hundreds of MiB at least.
        assert m["maxMemoryBytesPerGpu"] > 200 * 2**20
        (tmp_path / "measured.json").write_text(json.dumps(status, indent=1))

        # Killing the headless process fails its pod; the operator recreates the replica whole.
        headless = runner.by_pod()[f"{NAME}-0-1"]
        before = {p.uid for p in runner.by_pod().values()}
        os.kill(headless.process.pid, signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            status = status_of(cluster, namespace, NAME)
            uids = {p.uid for p in runner.by_pod().values()}
            fresh = len(uids) == 2 and not uids & before
            heads = runner.heads()
            healthy = bool(heads) and all(h.healthy() for h in heads.values())
            if fresh and healthy and status.get("restarts", 0) >= 1:
                return status
            return None

        runner.exited.clear()
        status = wait(cluster, restarted, 600, "the replica recreated and healthy", engine_logs)
        print(f"\n--- after killing the headless rank: restarts={status['restarts']} ---")
        print(cluster.kubectl("get", "infd", "-n", namespace).stdout)
        events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
        reasons = {e["reason"] for e in json.loads(events)["items"]}
        assert "ReplicaRestart" in reasons, reasons


def test_a_vllm_pp2_deployment_serves_and_is_measured(
    cluster: LocalCluster, crd: Path, tmp_path: Path
) -> None:
    """The same with PP=2 × TP=1: two pipeline stages, rank 1 headless, compiled on CPU."""
    engine = install.install_vllm()
    model = tiny_model.ensure(install.engines_root(), engine.python)
    name = "tiny-vllm-pp2"
    with contextlib.ExitStack() as stack:
        namespace = stack.enter_context(cluster.namespace())
        pool = stack.enter_context(cluster.gpu_pool("1 x 2 x H100-80GB"))
        logs = stack.enter_context(operator(cluster, namespace, tmp_path / "operator.log"))
        runner = stack.enter_context(
            EngineRunner(cluster.kubeconfig, namespace, name, tmp_path, engine)
        )
        cluster.apply(deployment(model, pool.node_selector, name, pipeline=2), namespace=namespace)

        def head_healthy() -> Any:
            assert not runner.exited, runner.exited[0].log_path.read_text()[-4000:]
            heads = runner.heads()
            if len(runner.by_pod()) == 2 and heads and all(h.healthy() for h in heads.values()):
                return next(iter(heads.values()))
            return None

        head = wait(cluster, head_healthy, 900, "PP=2 head and headless stage, /health", logs)
        argv = runner.by_pod()[f"{name}-0-1"].argv
        assert argv[argv.index("--pipeline-parallel-size") + 1] == "2" and "--headless" in argv
        answer = complete(str(head.address), model, "the model rank")
        print(f"\n--- PP=2 /v1/completions ---\n{json.dumps(answer)}")
        assert answer["usage"]["completion_tokens"] == 8

        def measured() -> dict[str, Any] | None:
            status = status_of(cluster, namespace, name)
            m = status.get("measured") or {}
            keys = ("prefillP99Seconds", "decodeP99PerTokenSeconds", "maxMemoryBytesPerGpu")
            ready = status.get("phase") == "Ready"
            return status if ready and all(m.get(k) is not None for k in keys) else None

        with traffic(str(head.address), model):
            status = wait(cluster, measured, 300, "PP=2 measured", logs)
        print(cluster.kubectl("get", "infd", "-n", namespace).stdout)
        print(f"\n--- PP=2 status.measured ---\n{json.dumps(status['measured'], indent=1)}")
