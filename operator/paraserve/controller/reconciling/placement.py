"""Pure gang placement: which node each tensor-parallel group of a replica goes to.

The scheduler places pods one at a time, and a required pod affinity only binds a group's later
members to wherever its first member landed. When free GPUs are scattered over nodes, first
members of different groups can take the slots each other's peers need, and the replica never
runs. So the operator picks a node for every group before it creates the pods (best fit over
the free GPUs it sees), and pins the group there; the scheduler still checks everything.
"""

from __future__ import annotations

import bisect
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


class FreeGpus:
    """Free GPUs by node, also grouped by how many are free, so that the best fit for a group
    is found without looking at every node (a reconcile may place hundreds of groups on
    thousands of nodes; scanning them all per group cost seconds)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts  # kept up to date as GPUs are taken
        self._by_count: dict[int, list[str]] = {}  # free count → node names, sorted
        for name, count in counts.items():
            self._by_count.setdefault(count, []).append(name)
        for names in self._by_count.values():
            names.sort()

    def best_fit(self, tensor: int) -> str | None:
        """The node with the fewest free GPUs that still hold `tensor` (the first by name)."""
        fitting = [count for count, names in self._by_count.items() if count >= tensor and names]
        return self._by_count[min(fitting)][0] if fitting else None

    def take(self, node: str, gpus: int) -> None:
        """Take (or, negative, give back) `gpus` of `node`."""
        count = self.counts[node]
        names = self._by_count[count]
        del names[bisect.bisect_left(names, node)]
        self.counts[node] = count - gpus
        bisect.insort(self._by_count.setdefault(count - gpus, []), node)


def place_groups(
    groups: Iterable[int], tensor: int, free: dict[str, int] | FreeGpus
) -> dict[int, str] | None:
    """Best fit: each group to the node with the fewest free GPUs that still hold it.

    Takes the GPUs it assigns out of `free`; returns None (and takes nothing) when some group
    does not fit anywhere.
    """
    gpus = free if isinstance(free, FreeGpus) else FreeGpus(free)
    chosen: dict[int, str] = {}
    for group in groups:
        node = gpus.best_fit(tensor)
        if node is None:
            for taken in chosen.values():
                gpus.take(taken, -tensor)
            return None
        gpus.take(node, tensor)
        chosen[group] = node
    return chosen
