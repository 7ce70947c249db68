"""Two deployments reconciled back to back never get the same free GPUs."""

from __future__ import annotations

from typing import Any

from paraserve.api import InferenceDeploymentSpec
from paraserve.controller.rank_pods import RankPod
from paraserve.controller.reconciling import owned_objects
from paraserve.controller.reconciling.gang import GangState
from paraserve.controller.reconciling.reconcile import ALL, ControllerSettings, Reconciler, Views
from paraserve.controller.running.cluster_io import Cluster
from paraserve.controller.running.operator_metrics import OperatorMetrics
from paraserve.planner import Pool

SPEC = InferenceDeploymentSpec.model_validate(
    {
        "model": {"name": "m", "parameters": "7B"},
        "parallelism": {"pipeline": 2, "tensor": 2},
        "gpu": {"memory": "80G"},
    }
)


def node(name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": gpus}},
    }


def test_placements_not_yet_seen_by_the_watch_hold_their_gpus():
    views = Views()
    views.nodes = {ALL: [node("a", 2), node("b", 2), node("c", 2)]}
    views.gpu_pods = {ALL: []}
    reconciler = Reconciler(Cluster(None), views, ControllerSettings(), OperatorMetrics())
    pool = Pool.from_objects(views.all_nodes(), [], SPEC)

    first, first_nodes = reconciler._decide(("ns", "one"), SPEC, pool, [], GangState())
    assert first.create == ((0, None),)
    # The watch has not delivered "one"'s pods: the second sees the planner's pool as free
    # (3 groups fit), but only one node is left for its two groups.
    second, _ = reconciler._decide(("ns", "two"), SPEC, pool, [], GangState())
    assert second.create == () and second.waiting == (0,)
    used = set(first_nodes[0].values())
    assert len(used) == 2


def test_a_reservation_ends_once_the_watch_shows_the_pod():
    """Shown, then deleted (a restart or a roll): the same names placed again find the GPUs."""
    views = Views()
    views.nodes = {ALL: [node("a", 2), node("b", 2)]}
    views.gpu_pods = {ALL: []}
    reconciler = Reconciler(Cluster(None), views, ControllerSettings(), OperatorMetrics())
    pool = Pool.from_objects(views.all_nodes(), [], SPEC)
    first, placed = reconciler._decide(("ns", "one"), SPEC, pool, [], GangState())
    assert first.create == ((0, None),)

    hash_ = owned_objects.template_hash(SPEC, ControllerSettings().default_image)
    shown = [
        {
            "metadata": {"name": f"one-0-{rank}", "namespace": "ns", "labels": {}},
            "spec": {
                "nodeName": placed[0][rank // 2],
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": 1}}}],
            },
            "status": {"phase": "Running"},
        }
        for rank in range(4)
    ]
    views.gpu_pods = {ALL: shown}
    running = [
        RankPod(name=f"one-0-{r}", uid=f"u{r}", replica=0, rank=r, template_hash=hash_,
                phase="Running", node=placed[0][r // 2])
        for r in range(4)
    ]  # fmt: skip
    # A reconcile that places nothing (every rank runs) still lets the reservations go.
    settled, _ = reconciler._decide(("ns", "one"), SPEC, pool, running, GangState())
    assert settled.create == ()
    views.gpu_pods = {ALL: []}  # the pods are deleted
    again, _ = reconciler._decide(("ns", "one"), SPEC, pool, [], GangState())
    assert again.create == ((0, None),)
