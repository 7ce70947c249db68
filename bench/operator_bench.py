"""Time from create to all rank pods created and to all Running: the operator vs the baselines.

Run: .venv/bin/python bench/operator_bench.py [--sizes 8 64 256] [--nodes 64] [--no-loose]

On the local control plane (started here) with a kwok pool of 64 nodes × 8 GPUs, for each
world size it creates, in turn and alone on the pool:

* an InferenceDeployment (PP = size/8 × TP = 8, one replica) served by `paraserve operator`,
  once with its TP groups kept within a node (required pod affinity, the default) and once
  without, to tell the scheduler's affinity cost from the operator's own;
* a bare client creating `size` one-GPU pods at once (64 concurrent requests): what the API
  server itself allows, the floor for any controller;
* a StatefulSet with podManagementPolicy Parallel and `size` replicas of one GPU each;
* an Indexed Job with `size` completions, all in parallel, one GPU each;

and prints a table of seconds from the create request to the last pod created and to the last pod
Running (as a watch on the namespace sees them), with the operator's ratio to each baseline.
kwok makes bound pods Running at once, so the numbers measure the control plane and the
controllers, not image pulls. One unrecorded round of size 8 warms every controller up first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e.cluster.local import LocalCluster, running_cluster  # noqa: E402

CRD = ROOT / "crds" / "inferencedeployments.paraserve.dev.yaml"
IMAGE = "registry.invalid/paraserve/worker:bench"
GPU = "nvidia.com/gpu"


@dataclass
class PodClock:
    """First time each pod was seen, and first time it was Running (or already done)."""

    started: float = field(default_factory=time.monotonic)
    created: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def see(self, name: str, phase: str | None) -> None:
        now = time.monotonic()
        with self.lock:
            self.created.setdefault(name, now)
            if phase in ("Running", "Succeeded"):
                self.running.setdefault(name, now)

    def done(self, count: int) -> bool:
        with self.lock:
            return len(self.running) >= count

    def result(self, count: int) -> tuple[float, float]:
        with self.lock:
            created = sorted(self.created.values())[:count]
            running = sorted(self.running.values())[:count]
        return created[-1] - self.started, running[-1] - self.started


def watch_pods(
    cluster: LocalCluster, namespace: str, clock: PodClock, stop: threading.Event
) -> None:
    from kubernetes import client, watch

    api = client.CoreV1Api(cluster.api_client())
    while not stop.is_set():
        stream = watch.Watch()
        try:
            for event in stream.stream(
                api.list_namespaced_pod, namespace=namespace, timeout_seconds=5
            ):
                pod = event["object"]
                clock.see(pod.metadata.name, pod.status.phase if pod.status else None)
                if stop.is_set():
                    stream.stop()
                    break
        except Exception:  # the namespace may be going away; the loop ends with stop
            time.sleep(0.2)


def gpu_container(name: str) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "resources": {"limits": {GPU: 1}}}


def inference_deployment(
    name: str, size: int, selector: dict[str, str], *, within_node: bool = True
) -> dict[str, Any]:
    return {
        "apiVersion": "paraserve.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "bench",
                "dtype": "float16",
                "parameters": "70B",
                # A layer per stage at least: PP = size/8 reaches 128 at 1,024 ranks.
                "architecture": {"numLayers": max(80, size // 8)},
            },
            "parallelism": {"pipeline": size // 8, "tensor": 8, "sequence": 1},
            "gpu": {"memory": "80G"},
            "placement": {"nodeSelector": selector, "tensorParallelWithinNode": within_node},
            "worker": {"image": IMAGE},
        },
    }


def stateful_set(name: str, size: int, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": size,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"bench": name}},
            "template": {
                "metadata": {"labels": {"bench": name}},
                "spec": {"nodeSelector": selector, "containers": [gpu_container("rank")]},
            },
        },
    }


def indexed_job(name: str, size: int, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": size,
            "parallelism": size,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": selector,
                    "containers": [gpu_container("rank")],
                }
            },
        },
    }


BARE_CONCURRENCY = 64


def bare_pod(name: str, index: int, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-{index}", "labels": {"bench": name}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": selector,
            # The client's models want quantities as strings.
            "containers": [{**gpu_container("rank"), "resources": {"limits": {GPU: "1"}}}],
        },
    }


def create_bare(cluster: LocalCluster, namespace: str, name: str, size: int, selector: Any) -> None:
    """`size` pods, BARE_CONCURRENCY create requests in flight at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = BARE_CONCURRENCY
    api = client.CoreV1Api(client.ApiClient(configuration))
    bodies = [bare_pod(name, i, selector) for i in range(size)]
    with ThreadPoolExecutor(BARE_CONCURRENCY) as pool:
        list(
            pool.map(
                lambda body: api.create_namespaced_pod(namespace, body, _preload_content=False),
                bodies,
            )
        )


def measure(
    cluster: LocalCluster,
    namespace: str,
    kind: str,
    body: dict[str, Any],
    size: int,
    selector: dict[str, str] | None = None,
) -> tuple[float, float]:
    clock = PodClock()
    stop = threading.Event()
    watcher = threading.Thread(target=watch_pods, args=(cluster, namespace, clock, stop))
    watcher.start()
    time.sleep(1.0)  # the watch is established before the clock starts
    clock.started = time.monotonic()
    name = body["metadata"]["name"]
    try:
        if kind == "pod":
            create_bare(cluster, namespace, name, size, selector)
        else:
            cluster.apply(body, namespace=namespace)
        cluster.wait_for(lambda: clock.done(size), timeout=900, interval=0.1, what=kind)
        return clock.result(size)
    finally:
        stop.set()
        # Not `--wait`: 1,024 pods take kwok longer to finish than kubectl's own timeout.
        if kind == "pod":
            cluster.kubectl(
                "delete", "pods", "-l", f"bench={name}", "-n", namespace, "--wait=false"
            )
        else:
            cluster.kubectl("delete", kind, name, "-n", namespace, "--wait=false")
        cluster.wait_for(
            lambda: not cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout,
            timeout=900,
            what="pods deleted",
        )
        watcher.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def operator(cluster: LocalCluster, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    args = [
        sys.executable, "-m", "paraserve.cli", "operator",
        "--kubeconfig", str(cluster.kubeconfig), "--no-leader-elect",
        "--metrics-port", str(_free_port()), "--health-port", str(_free_port()),
        "--log-format", "plain",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
    try:
        time.sleep(3)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


METHODS = ("inferencedeployment", "inferencedeployment/loose", "pod", "statefulset", "job")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument(
        "--no-loose", action="store_true", help="skip the InferenceDeployment without affinity"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(METHODS),
        default=sorted(METHODS),
        help="time only these (e.g. two operator builds beside the bare client, in turn)",
    )
    args = parser.parse_args(argv)
    if any(size % 8 or size > args.nodes * 8 for size in args.sizes):
        parser.error("each size must be a multiple of 8 and fit the pool")

    rows: list[tuple[int, str, float, float]] = []
    with running_cluster() as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD.stem}")
        with (
            cluster.gpu_pool(f"{args.nodes} x 8 x H100-80GB", ready_timeout=300) as pool,
            cluster.namespace("bench") as namespace,
            operator(cluster, cluster.workdir / "bench-operator.log"),
        ):
            # One unrecorded round first: every controller (ours and kube's) has its connections,
            # caches and code paths warm before anything is timed.
            for kind, body in (
                ("inferencedeployment", inference_deployment("warm-up", 8, pool.node_selector)),
                ("pod", {"metadata": {"name": "warm-up"}}),
                ("statefulset", stateful_set("warm-up", 8, pool.node_selector)),
                ("job", indexed_job("warm-up", 8, pool.node_selector)),
            ):
                measure(cluster, namespace, kind, body, 8, selector=pool.node_selector)
            for size in args.sizes:
                selector = pool.node_selector
                loose = inference_deployment(f"loose-{size}", size, selector, within_node=False)
                cases = [
                    ("inferencedeployment", inference_deployment(f"infd-{size}", size, selector)),
                    ("inferencedeployment/loose", loose),
                    ("pod", {"metadata": {"name": f"bare-{size}"}}),
                    ("statefulset", stateful_set(f"sts-{size}", size, selector)),
                    ("job", indexed_job(f"job-{size}", size, selector)),
                ]
                if args.no_loose:
                    del cases[1]
                cases = [case for case in cases if case[0] in args.methods]
                for kind, body in cases:
                    resource = kind.split("/")[0]
                    created, running = measure(
                        cluster, namespace, resource, body, size, selector=selector
                    )
                    rows.append((size, kind, created, running))
                    print(f"{kind:>20} {size:>4} pods: created {created:6.2f} s, "
                          f"running {running:6.2f} s", file=sys.stderr, flush=True)  # fmt: skip

    print(f"{'pods':>5}  {'method':<34} {'all created':>12} {'all Running':>12}")
    names = {
        "inferencedeployment": "InferenceDeployment",
        "inferencedeployment/loose": "InferenceDeployment, no affinity",
        "pod": "bare client (64 concurrent creates)",
        "statefulset": "StatefulSet (Parallel)",
        "job": "Indexed Job",
    }
    for size, kind, created, running in rows:
        print(f"{size:>5}  {names[kind]:<34} {created:>10.2f} s {running:>10.2f} s")
    print()
    print("operator time / baseline time (below 1: the operator is faster)")
    for size in args.sizes:
        ours = {k: (c, r) for s, k, c, r in rows if s == size}
        for mine in ("inferencedeployment", "inferencedeployment/loose"):
            if mine not in ours:
                continue
            for kind in ("pod", "statefulset", "job"):
                if kind not in ours:
                    continue
                created = ours[mine][0] / ours[kind][0]
                running = ours[mine][1] / ours[kind][1]
                print(
                    f"{size:>5}  {names[mine]:<34} vs {names[kind]:<23}"
                    f" created ×{created:.2f}   Running ×{running:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
