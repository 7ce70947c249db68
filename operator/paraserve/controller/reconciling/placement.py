"""Pure gang placement: which node each tensor-parallel group of a replica goes to.

The scheduler places pods one at a time, and a required pod affinity only binds a group's later
members to wherever its first member landed. When free GPUs are scattered over nodes, first
members of different groups can take the slots each other's peers need, and the replica never
runs. So the operator picks a node for every group before it creates the pods (best fit over
the free GPUs it sees), and pins the group there; the scheduler still checks everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from paraserve.api.labels import PLANNED_NODE_ANNOTATION
from paraserve.planner import Pool, pod_gpu_request


def free_by_node(pool: Pool, pods: Iterable[Mapping[str, Any]], resource: str) -> dict[str, int]:
    """Free GPUs of each pool node, also counting pods placed there but not yet bound.

    `pool` is built from every GPU pod (its free already counts the bound ones).
    """
    free = {node.name: node.free for node in pool.nodes}
    for pod in pods:
        spec = pod.get("spec") or {}
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        target = annotations.get(PLANNED_NODE_ANNOTATION)
        if spec.get("nodeName") or target not in free:
            continue
        free[target] = max(0, free[target] - pod_gpu_request(spec, resource))
    return free


def place_groups(groups: Iterable[int], tensor: int, free: dict[str, int]) -> dict[int, str] | None:
    """Best fit: each group to the node with the fewest free GPUs that still hold it.

    Takes the GPUs it assigns out of `free`; returns None (and takes nothing) when some group
    does not fit anywhere.
    """
    trial = dict(free)
    chosen: dict[int, str] = {}
    for group in groups:
        candidates = [(count, name) for name, count in trial.items() if count >= tensor]
        if not candidates:
            return None
        _, node = min(candidates)
        trial[node] -= tensor
        chosen[group] = node
    free.update(trial)
    return chosen
