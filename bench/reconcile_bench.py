"""How long one reconcile holds the operator's event loop: planning, placement and pod rendering.

Run: .venv/bin/python bench/reconcile_bench.py [--repeat 5]

No cluster: the reconcile runs against in-memory views and a cluster whose writes return at
once, so every figure is time the event loop was held. Two pools: 128 nodes × 8 GPUs, empty
(the creation-at-the-limit run), and 5,000 nodes × 8 GPUs holding 10,000 one-GPU pods. For
each it times

* the pool a reconcile plans against and the free GPUs placement starts from, built as the
  operator first did (`Pool.from_objects` over every node and pod, twice, and a scan of every
  pod for those placed but not bound) and as it does now (`LivePool`, kept from the watch);
* placing the 128 TP=8 groups of a 1,024-rank replica: best fit by scanning every node for
  every group (as first written) and from free-GPU buckets (now);
* a whole reconcile that creates that 1,024-rank replica (plan, gang decision, placement, the
  1,024 pod manifests), and one that finds it all created (what most reconciles are);
* one node event and one GPU-pod event applied to the live pool.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from paraserve.api import InferenceDeploymentSpec  # noqa: E402
from paraserve.api.labels import PLANNED_NODE_ANNOTATION  # noqa: E402
from paraserve.controller.rank_pods import RankPod  # noqa: E402
from paraserve.controller.reconciling import owned_objects, placement  # noqa: E402
from paraserve.controller.reconciling.reconcile import (  # noqa: E402
    ControllerSettings,
    Reconciler,
    Views,
)
from paraserve.controller.running.operator_metrics import OperatorMetrics  # noqa: E402
from paraserve.planner import Pool, pod_gpu_request  # noqa: E402
from paraserve.planner.live_pool import LivePool  # noqa: E402

SPEC = {
    "model": {"name": "bench", "dtype": "float16", "parameters": "70B"},
    "parallelism": {"pipeline": 128, "tensor": 8, "sequence": 1},
    "gpu": {"memory": "80G"},
}


def node(i: int) -> dict[str, Any]:
    name = f"gpu-{i:05d}"
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"unschedulable": False, "taints": []},
        "status": {"allocatable": {"cpu": "127", "nvidia.com/gpu": "8"}},
    }


def pod(i: int, nodes: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"job-{i}", "namespace": "other", "labels": {}, "annotations": {}},
        "spec": {
            "nodeName": f"gpu-{(i // 8) % nodes:05d}",  # whole nodes taken, the rest free
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}],
            "initContainers": [],
        },
        "status": {"phase": "Running"},
    }


class NoWrites:
    """Every write succeeds at once (the reconcile's own time is what is measured)."""

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]:
        return [True] * len(objs)

    async def apply(self, obj: Mapping[str, Any]) -> None:
        return None

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None:
        return None

    async def patch_deployment(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        return {"metadata": {"resourceVersion": "2"}}

    async def post_event(self, *args: Any, **kwargs: Any) -> None:
        return None


def timed(repeat: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def old_pool_and_free(
    spec: InferenceDeploymentSpec, nodes: list[Any], pods: list[Any]
) -> dict[str, int]:
    """What a pinned reconcile first did: two pools from every pod and a scan of them all."""
    Pool.from_objects(nodes, pods, spec)  # pool_for: the deployment's own view
    full = Pool.from_objects(nodes, pods, spec)
    free = {n.name: n.free for n in full.nodes}
    for p in pods:
        target = (p["metadata"].get("annotations") or {}).get(PLANNED_NODE_ANNOTATION)
        if not p["spec"].get("nodeName") and target in free:
            free[target] = max(0, free[target] - pod_gpu_request(p["spec"], "nvidia.com/gpu"))
    return free


def scan_place(groups: range, tensor: int, free: dict[str, int]) -> dict[int, str] | None:
    """Best fit as first written: every node looked at for every group."""
    trial = dict(free)
    chosen = {}
    for group in groups:
        candidates = [(count, name) for name, count in trial.items() if count >= tensor]
        if not candidates:
            return None
        _, best = min(candidates)
        trial[best] -= tensor
        chosen[group] = best
    return chosen


def report(label: str, seconds: float) -> None:
    print(f"  {label:<62} {seconds * 1000:9.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    spec = InferenceDeploymentSpec.model_validate(SPEC)
    print(f"python {sys.version.split()[0]}; medians of {args.repeat}")
    for node_count, pod_count in ((128, 0), (5000, 10_000)):
        one_pool(spec, node_count, pod_count, args.repeat)
    return 0


def one_pool(spec: InferenceDeploymentSpec, node_count: int, pod_count: int, repeat: int) -> None:
    nodes = [node(i) for i in range(node_count)]
    pods = [pod(i, node_count) for i in range(pod_count)]
    print(f"\n{node_count} nodes × 8 GPUs, {pod_count} GPU pods; PP=128 × TP=8 (1,024 ranks)")
    live = LivePool()
    for n in nodes:
        live.put_node(n)
    for p in pods:
        live.put_pod(p)

    def new_pool_and_free(live: LivePool = live) -> dict[str, int]:
        live.pool(spec, without=("bench", "infd"))
        return live.free_by_node(spec)

    report(
        "pool + free GPUs, from every node and pod (before)",
        timed(repeat, lambda: old_pool_and_free(spec, nodes, pods)),
    )
    report("pool + free GPUs, from the live pool (now)", timed(repeat, new_pool_and_free))
    free = old_pool_and_free(spec, nodes, pods)
    report(
        "place 128 groups of 8: scan every node per group (before)",
        timed(repeat, lambda: scan_place(range(128), 8, free)),
    )
    report(
        "place 128 groups of 8: free-GPU buckets (now)",
        timed(repeat, lambda: placement.place_groups(range(128), 8, dict(free))),
    )
    creating, settled = reconcile_times(spec, live, repeat)
    report("whole reconcile creating the replica (1,024 pod manifests)", creating)
    report("whole reconcile with every rank created (nothing to do)", settled)
    event = pods[0] if pods else pod(0, node_count)
    moved = {**event, "spec": {**event["spec"], "nodeName": "gpu-00001"}}
    report(
        "one GPU-pod event on the live pool",
        timed(repeat * 20, lambda: (live.put_pod(moved), live.put_pod(event))) / 2,
    )
    changed = {**nodes[0], "metadata": {**nodes[0]["metadata"], "labels": {"x": "y"}}}
    report(
        "one node event changing labels, and the next pool built",
        timed(
            repeat,
            lambda: (live.put_node(changed), live.put_node(nodes[0]), live.pool(spec)),
        )
        / 2,
    )


def reconcile_times(
    spec: InferenceDeploymentSpec, live: LivePool, repeat: int
) -> tuple[float, float]:
    """A reconcile that creates the 1,024 ranks, and one that finds them all (medians)."""
    body = {
        "metadata": {"name": "infd", "namespace": "bench", "uid": "u", "generation": 1,
                     "resourceVersion": "1", "annotations": {}},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": {},
    }  # fmt: skip
    key = ("bench", "infd")

    def reconciler(pods: list[RankPod]) -> Reconciler:
        views = Views()
        views.live = live
        views.deployments = {key: [body]}
        views.rank_pods = {key: pods}
        return Reconciler(NoWrites(), views, ControllerSettings(), OperatorMetrics())

    loop = asyncio.new_event_loop()
    creating = timed(repeat, lambda: loop.run_until_complete(reconciler([]).reconcile(key)))
    hash_ = owned_objects.template_hash(spec, ControllerSettings().default_image)
    ranks = [
        RankPod(name=f"infd-0-{r}", uid=f"u{r}", replica=0, rank=r, template_hash=hash_,
                phase="Running", ready=True, node=f"gpu-{r // 8:05d}", owner_uid="u")
        for r in range(1024)
    ]  # fmt: skip
    settled = timed(repeat, lambda: loop.run_until_complete(reconciler(ranks).reconcile(key)))
    loop.close()
    return creating, settled


if __name__ == "__main__":
    sys.exit(main())
