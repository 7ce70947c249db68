"""The node pool of a spec, built from plain Node and Pod objects (Kubernetes API dicts)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Final

from paraserve.api import GPU_MEMORY_LABEL, InferenceDeploymentSpec, Toleration, parse_bytes

_TERMINATED = ("Succeeded", "Failed")
_REPELLING = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class PoolNode:
    """A node of the pool and its GPUs."""

    name: str
    allocatable: int
    free: int
    gpu_memory_bytes: int | None = None


@dataclass(frozen=True)
class Exclusions:
    """Why nodes seen were left out of the pool (for the NoMatchingNodes message)."""

    not_selected: int = 0
    cordoned: int = 0
    tainted: int = 0
    without_gpus: int = 0

    @property
    def total(self) -> int:
        return self.not_selected + self.cordoned + self.tainted + self.without_gpus


@dataclass(frozen=True)
class Pool:
    """The nodes that can run ranks: selected, schedulable, tolerated, with GPUs."""

    name: str
    nodes: tuple[PoolNode, ...]
    excluded: Exclusions = field(default_factory=Exclusions)

    @classmethod
    def from_objects(
        cls,
        nodes: Iterable[Mapping[str, Any]],
        pods: Iterable[Mapping[str, Any]],
        spec: InferenceDeploymentSpec,
    ) -> Pool:
        """The pool of ``spec`` among ``nodes``; ``pods`` (non-terminated) use up free GPUs."""
        resource = spec.gpu.resource_name
        selector = spec.placement.node_selector
        used = gpus_requested_by_node(pods, resource)
        members, excluded = pool_nodes(nodes, resource, selector, spec.placement.tolerations, used)
        return cls(name=pool_name(selector), nodes=tuple(members), excluded=excluded)

    @cached_property
    def allocatable(self) -> int:
        return sum(node.allocatable for node in self.nodes)

    @cached_property
    def free(self) -> int:
        return sum(node.free for node in self.nodes)

    @cached_property
    def largest_node(self) -> int:
        """Allocatable GPUs of the largest node."""
        return max((node.allocatable for node in self.nodes), default=0)

    @cached_property
    def allocatable_shape(self) -> Counter[int]:
        """How many nodes have each allocatable GPU count."""
        return Counter(node.allocatable for node in self.nodes)

    @cached_property
    def free_shape(self) -> Counter[int]:
        return Counter(node.free for node in self.nodes)

    @cached_property
    def gpu_memory_bytes(self) -> int | None:
        """The smallest nvidia.com/gpu.memory label of the pool, in bytes."""
        labelled = [n.gpu_memory_bytes for n in self.nodes if n.gpu_memory_bytes is not None]
        return min(labelled, default=None)

    def groups_that_fit(self, tensor: int, *, free: bool = False) -> int:
        """Tensor-parallel groups that fit when each stays within a node: Σ ⌊GPUs / tensor⌋."""
        shape = self.free_shape if free else self.allocatable_shape
        return sum(nodes * (gpus // tensor) for gpus, nodes in shape.items())

    def describe(self, *, free: bool = False) -> str:
        """``1 node × 8`` or ``2 nodes × 8 + 1 node × 4``, largest first."""
        # Remembered: every plan's capacity checks say it, and suggest makes hundreds of plans.
        return self._free_description if free else self._description

    @cached_property
    def _description(self) -> str:
        return _described(self.allocatable_shape)

    @cached_property
    def _free_description(self) -> str:
        return _described(self.free_shape)


def _described(shape: Counter[int]) -> str:
    parts = [
        f"{nodes} node{'s' if nodes != 1 else ''} × {gpus}"
        for gpus, nodes in sorted(shape.items(), reverse=True)
    ]
    return " + ".join(parts) if parts else "no nodes"


def pool_member(
    node: Mapping[str, Any],
    resource: str,
    selector: Mapping[str, str],
    tolerations: list[Toleration],
) -> tuple[str, int, int | None] | str:
    """(name, allocatable GPUs, GPU memory) of a node in the pool, or why it is not in it
    (an `Exclusions` field name)."""
    # Loops, not any()/all() over generators: this runs for every node of a large pool.
    metadata = _mapping(node.get("metadata"))
    node_spec = _mapping(node.get("spec"))
    labels = _mapping(metadata.get("labels"))
    for key, value in selector.items():
        if labels.get(key) != value:
            return "not_selected"
    if node_spec.get("unschedulable"):
        return "cordoned"
    for taint in _list(node_spec.get("taints")):
        if not _tolerated(taint, tolerations):
            return "tainted"
    allocatable = _gpus(_mapping(_mapping(node.get("status")).get("allocatable")), resource)
    if allocatable <= 0:
        return "without_gpus"
    name = str(metadata.get("name", ""))
    return name, allocatable, _gpu_memory(labels.get(GPU_MEMORY_LABEL))


def pool_nodes(
    nodes: Iterable[Mapping[str, Any]],
    resource: str,
    selector: Mapping[str, str],
    tolerations: list[Toleration],
    used: Mapping[str, int],
) -> tuple[list[PoolNode], Exclusions]:
    """The nodes in the pool, in node order, with the GPUs ``used`` (by node) leaves free; and
    why the others are not in it."""
    members: list[PoolNode] = []
    counts: Counter[str] = Counter()
    for node in nodes:
        member = pool_member(node, resource, selector, tolerations)
        if isinstance(member, str):
            counts[member] += 1
        else:
            members.append(pool_node(member, used))
    return members, Exclusions(**counts)


def pool_node(member: tuple[str, int, int | None], used: Mapping[str, int]) -> PoolNode:
    """A `pool_member` with the GPUs ``used`` (by node) leaves free."""
    name, allocatable, memory = member
    return PoolNode(
        name=name,
        allocatable=allocatable,
        free=max(0, allocatable - used.get(name, 0)),
        gpu_memory_bytes=memory,
    )


def pool_name(selector: Mapping[str, str]) -> str:
    """A name for messages: the selector's value, ``k=v,…`` for several, or ``all nodes``."""
    if not selector:
        return "all nodes"
    if len(selector) == 1:
        return next(iter(selector.values()))
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def gpus_requested_by_node(pods: Iterable[Mapping[str, Any]], resource: str) -> dict[str, int]:
    """GPUs requested by the non-terminated pods bound to each node."""
    used: dict[str, int] = {}
    for pod in pods:
        status = _mapping(pod.get("status"))
        spec = _mapping(pod.get("spec"))
        node = spec.get("nodeName")
        if not node or status.get("phase") in _TERMINATED:
            continue
        request = pod_gpu_request(spec, resource)
        if request:
            used[node] = used.get(node, 0) + request
    return used


def pod_gpu_request(pod_spec: Mapping[str, Any], resource: str) -> int:
    """Effective request: max(Σ containers, max init container), as the scheduler counts it."""
    containers = 0
    for container in _list(pod_spec.get("containers")):
        containers += _container_gpus(container, resource)
    init = 0  # a container's count is never negative
    initial = pod_spec.get("initContainers")
    if initial:
        for container in _list(initial):
            init = max(init, _container_gpus(container, resource))
    return max(containers, init)


def _container_gpus(container: Any, resource: str) -> int:
    resources = _mapping(_mapping(container).get("resources"))
    # Extended resources have requests == limits; a limit alone implies the request.
    return _gpus(_mapping(resources.get("requests")), resource) or _gpus(
        _mapping(resources.get("limits")), resource
    )


def _gpus(resources: Mapping[str, Any], resource: str) -> int:
    value = resources.get(resource)
    if value is None:
        return 0
    if type(value) is str:
        # A pool repeats a handful of quantities ("8", "1") over thousands of objects.
        count = _QUANTITIES.get(value)
        if count is None:
            count = _quantity(value)
            if len(_QUANTITIES) < _QUANTITIES_KEPT:
                _QUANTITIES[value] = count
        return count
    return _quantity(value)


_QUANTITIES: dict[str, int] = {}
_QUANTITIES_KEPT: Final = 4096


def _quantity(value: Any) -> int:
    try:
        return parse_bytes(value)
    except ValueError:
        return 0


def _gpu_memory(label: Any) -> int | None:
    try:
        mib = int(str(label))
    except ValueError:
        return None
    return mib * 2**20 if mib > 0 else None


def _tolerated(taint: Any, tolerations: list[Toleration]) -> bool:
    taint = _mapping(taint)
    if taint.get("effect") not in _REPELLING:
        return True
    return any(t.tolerates(taint) for t in tolerations)


def _mapping(value: Any) -> Mapping[str, Any]:
    if type(value) is dict:  # the common case, without the ABC's isinstance
        return value
    return value if isinstance(value, Mapping) else _EMPTY


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
