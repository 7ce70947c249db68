"""Time from create to all rank pods created and to all Running: the operator vs the baselines.

Run: .venv/bin/python bench/operator_bench.py [--sizes 8 64 256] [--nodes 64] [--no-loose]
     [--rounds 1] [--methods ...]

On the local control plane (started here) with a kwok pool of 64 nodes × 8 GPUs, for each
world size it creates, in turn and alone on the pool:

* an InferenceDeployment (PP = size/8 × TP = 8, one replica) served by `paraserve operator`,
  once with its TP groups kept within a node (the operator pins each group to a node) and once
  without, to tell the cost of placement from the rest;
* a bare client creating the same pods (the operator's renderer and placement, all but the
  owner reference) with 64 create requests in flight: what the API server itself allows, the
  floor for any controller;
* the same bare client after creating the operator's headless Service for those pods (what
  gives each its DNS name): the endpoints controllers then track every pod as the operator's
  do, so this is the floor for the same pods reachable by name;
* a StatefulSet with podManagementPolicy Parallel and `size` replicas, and an Indexed Job with
  `size` completions all in parallel, both from rank 0's pod as their template (the same env,
  ports, volumes and GPU; a single template cannot pin each TP group to its node);

and prints a table of seconds from the create request to the last pod created and to the last pod
Running (as a watch on the namespace sees them), with the operator's ratio to each baseline.
With `--rounds N` every method runs N times in turn (A B C, A B C, ...): the table gives each
method's median and range, and each ratio is the median of the N ratios taken round by round,
so that a comparison holds while the loaded machine's speed drifts.
kwok makes bound pods Running at once, so the numbers measure the control plane and the
controllers, not image pulls. One unrecorded round of size 8 warms every controller up first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
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


def operator_pods(
    name: str, namespace: str, size: int, selector: dict[str, str], nodes: list[str]
) -> list[dict[str, Any]]:
    """The rank pods the operator makes for `inference_deployment(name, size)`: its own
    renderer, its own placement of the TP groups on an empty pool. Only the owner is left out
    (an owner that does not exist would have the garbage collector delete them)."""
    from paraserve.api import InferenceDeploymentSpec
    from paraserve.controller.reconciling import owned_objects, placement

    spec = InferenceDeploymentSpec.model_validate(
        inference_deployment(name, size, selector)["spec"]
    )
    tensor = spec.parallelism.tensor
    groups = placement.place_groups(range(size // tensor), tensor, dict.fromkeys(nodes, 8))
    assert groups is not None, "the pool holds every group"
    pods = owned_objects.replica_pods(
        owned_objects.Owner(name=name, namespace=namespace, uid=""),
        spec,
        0,
        hash_=owned_objects.template_hash(spec, IMAGE),
        default_image=IMAGE,
        group_nodes=groups,
    )
    for pod in pods:
        del pod["metadata"]["ownerReferences"]
        pod["metadata"]["labels"]["bench"] = name
    return pods


def operator_service(
    name: str, namespace: str, size: int, selector: dict[str, str]
) -> dict[str, Any]:
    """The headless Service the operator makes for `inference_deployment(name, size)`, with no
    owner (as `operator_pods`)."""
    from paraserve.api import InferenceDeploymentSpec
    from paraserve.controller.reconciling import owned_objects

    spec = InferenceDeploymentSpec.model_validate(
        inference_deployment(name, size, selector)["spec"]
    )
    service = owned_objects.headless_service(
        owned_objects.Owner(name=name, namespace=namespace, uid=""), spec
    )
    del service["metadata"]["ownerReferences"]
    return service


def rank_template(
    name: str, namespace: str, selector: dict[str, str], nodes: list[str]
) -> dict[str, Any]:
    """A pod template for the controllers that stamp one template: rank 0's pod (its env,
    ports, volumes and GPU), less what differs by rank (name, hostname, the pinned node)."""
    pod = operator_pods(name, namespace, 8, selector, nodes)[0]
    spec = {k: v for k, v in pod["spec"].items() if k not in ("hostname", "subdomain", "affinity")}
    return {"spec": spec}


def stateful_set(name: str, size: int, template: dict[str, Any]) -> dict[str, Any]:
    spec = {**template["spec"], "restartPolicy": "Always"}  # the only policy a StatefulSet has
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": size,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"bench": name}},
            "template": {"metadata": {"labels": {"bench": name}}, "spec": spec},
        },
    }


def indexed_job(name: str, size: int, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": size,
            "parallelism": size,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {"bench": name}}, "spec": template["spec"]},
        },
    }


BARE_CONCURRENCY = 64


def create_bare(cluster: LocalCluster, namespace: str, bodies: list[dict[str, Any]]) -> None:
    """The pods, BARE_CONCURRENCY create requests in flight at a time, each body serialized and
    posted on the client's connection pool and nothing else (no model validation, no parsing
    of the answer): the floor for any client in Python."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = BARE_CONCURRENCY
    api = client.ApiClient(configuration)
    _, url, headers, _, _ = api.param_serialize(
        method="POST",
        resource_path=f"/api/v1/namespaces/{namespace}/pods",
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    pool_manager = api.rest_client.pool_manager

    def post(body: dict[str, Any]) -> None:
        answer = pool_manager.request("POST", url, body=json.dumps(body), headers=headers)
        if answer.status != 201:
            raise RuntimeError(f"create {body['metadata']['name']}: HTTP {answer.status}")

    with ThreadPoolExecutor(BARE_CONCURRENCY) as pool:
        list(pool.map(post, bodies))


def measure(
    cluster: LocalCluster,
    namespace: str,
    kind: str,
    body: dict[str, Any],
    size: int,
    pods: list[dict[str, Any]] | None = None,
) -> tuple[float, float]:
    clock = PodClock()
    stop = threading.Event()
    watcher = threading.Thread(target=watch_pods, args=(cluster, namespace, clock, stop))
    watcher.start()
    time.sleep(1.0)  # the watch is established before the clock starts
    clock.started = time.monotonic()
    name = body["metadata"]["name"]
    try:
        if kind != "pod":  # the bare client's Service goes first, as the operator's does
            cluster.apply(body, namespace=namespace)
        if kind in ("pod", "service"):
            create_bare(cluster, namespace, pods or [])
        cluster.wait_for(lambda: clock.done(size), timeout=900, interval=0.1, what=kind)
        return clock.result(size)
    finally:
        stop.set()
        # Not `--wait`: 1,024 pods take kwok longer to finish than kubectl's own timeout.
        if kind in ("pod", "service"):
            cluster.kubectl(
                "delete", "pods", "-l", f"bench={name}", "-n", namespace, "--wait=false"
            )
        if kind != "pod":
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


METHODS = (
    "inferencedeployment",
    "inferencedeployment/loose",
    "pod",
    "pod/service",
    "statefulset",
    "job",
)
# The resource each method creates and `measure` takes.
RESOURCES = {"pod/service": "service"}


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
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every method this many times, in turn"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, not {args.rounds}")
    if any(size % 8 or size > args.nodes * 8 for size in args.sizes):
        parser.error("each size must be a multiple of 8 and fit the pool")

    rows: list[tuple[int, str, int, float, float]] = []  # size, method, round, created, running
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
            selector, nodes = pool.node_selector, list(pool.nodes)
            template = rank_template("rank", namespace, selector, nodes)
            warm_pods = operator_pods("warm-up", namespace, 8, selector, nodes)
            for kind, body in (
                ("inferencedeployment", inference_deployment("warm-up", 8, selector)),
                ("pod", {"metadata": {"name": "warm-up"}}),
                ("statefulset", stateful_set("warm-up", 8, template)),
                ("job", indexed_job("warm-up", 8, template)),
            ):
                if any(method.split("/")[0] == kind for method in args.methods):
                    measure(cluster, namespace, kind, body, 8, pods=warm_pods)
            for size in args.sizes:
                for round_ in range(args.rounds):
                    tag = f"{size}" if args.rounds == 1 else f"{size}-r{round_}"
                    pinned = inference_deployment(f"infd-{tag}", size, selector)
                    loose = inference_deployment(f"loose-{tag}", size, selector, within_node=False)
                    cases = [
                        ("inferencedeployment", pinned),
                        ("inferencedeployment/loose", loose),
                        ("pod", {"metadata": {"name": f"bare-{tag}"}}),
                        (
                            "pod/service",
                            operator_service(f"bare-{tag}", namespace, size, selector),
                        ),
                        ("statefulset", stateful_set(f"sts-{tag}", size, template)),
                        ("job", indexed_job(f"job-{tag}", size, template)),
                    ]
                    if args.no_loose:
                        del cases[1]
                    cases = [case for case in cases if case[0] in args.methods]
                    for kind, body in cases:
                        resource = RESOURCES.get(kind, kind.split("/")[0])
                        pods = operator_pods(f"bare-{tag}", namespace, size, selector, nodes)
                        created, running = measure(
                            cluster, namespace, resource, body, size, pods=pods
                        )
                        rows.append((size, kind, round_, created, running))
                        print(f"{kind:>25} {size:>4} pods, round {round_ + 1}: created "
                              f"{created:6.2f} s, running {running:6.2f} s",
                              file=sys.stderr, flush=True)  # fmt: skip
    report(rows, args.sizes, args.rounds)
    return 0


NAMES = {
    "inferencedeployment": "InferenceDeployment",
    "inferencedeployment/loose": "InferenceDeployment, no affinity",
    "pod": "bare client, the same pods",
    "pod/service": "bare client + headless Service",
    "statefulset": "StatefulSet (Parallel)",
    "job": "Indexed Job",
}


def _spread(values: list[float]) -> str:
    """The median, and the range when there is more than one run."""
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:>8.2f} s"
    return f"{middle:>8.2f} s ({min(values):.2f}–{max(values):.2f})"


def report(rows: list[tuple[int, str, int, float, float]], sizes: list[int], rounds: int) -> None:
    title = "all created" if rounds == 1 else f"all created, median of {rounds}"
    print(f"{'pods':>5}  {'method':<34} {title:>26} {'all Running':>26}")
    for size in sizes:
        for kind in NAMES:
            created = [c for s, k, _, c, _ in rows if (s, k) == (size, kind)]
            running = [r for s, k, _, _, r in rows if (s, k) == (size, kind)]
            if created:
                print(f"{size:>5}  {NAMES[kind]:<34} {_spread(created):>26} "
                      f"{_spread(running):>26}")  # fmt: skip
    print()
    print("operator time / baseline time (below 1: the operator is faster)"
          + ("" if rounds == 1 else f", the median of {rounds} rounds' ratios"))  # fmt: skip
    for size in sizes:
        by_round = {(k, n): (c, r) for s, k, n, c, r in rows if s == size}
        for mine in ("inferencedeployment", "inferencedeployment/loose"):
            for kind in ("pod", "pod/service", "statefulset", "job"):
                pairs = [
                    (by_round[(mine, n)], by_round[(kind, n)])
                    for n in range(rounds)
                    if (mine, n) in by_round and (kind, n) in by_round
                ]
                if not pairs:
                    continue
                created_ratio = statistics.median(ours[0] / theirs[0] for ours, theirs in pairs)
                running_ratio = statistics.median(ours[1] / theirs[1] for ours, theirs in pairs)
                print(
                    f"{size:>5}  {NAMES[mine]:<34} vs {NAMES[kind]:<30}"
                    f" created ×{created_ratio:.2f}   Running ×{running_ratio:.2f}"
                )


if __name__ == "__main__":
    sys.exit(main())
