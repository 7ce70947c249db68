"""Describe a pool of fake GPU nodes (`2 x 4 x H100-80GB`) and render its kwok Node objects."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from e2e.cluster.controlplane import KWOK_NODE_ANNOTATION

POOL_LABEL = "paraserve.dev/pool"
GPU_RESOURCE = "nvidia.com/gpu"

# Memory in MiB as GPU feature discovery reports it (nvidia-smi's total), for common parts.
_KNOWN_GPU_MEMORY_MIB = {
    "H100-80GB": 81559,
    "H200-141GB": 143771,
    "A100-80GB": 81920,
    "A100-40GB": 40960,
    "L40S-48GB": 46068,
    "L4-24GB": 23034,
    "A10-24GB": 23028,
    "T4-16GB": 15360,
}

_SPEC = re.compile(
    r"^\s*(?P<nodes>\d+)\s*[x×*]\s*(?P<gpus>\d+)\s*[x×*]\s*(?P<model>[A-Za-z0-9][\w.-]*)\s*$"
)
_MEMORY_SUFFIX = re.compile(r"-(\d+)G[Bi]?$", re.IGNORECASE)


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    @classmethod
    def parse(cls, text: str) -> Taint:
        """`key=value:Effect` or `key:Effect`, as `kubectl taint` writes them."""
        key_value, _, effect = text.partition(":")
        key, _, value = key_value.partition("=")
        return cls(key, value, effect or "NoSchedule")

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}


@dataclass(frozen=True)
class PoolSpec:
    """`nodes` nodes, each with `gpus_per_node` GPUs of one model."""

    nodes: int
    gpus_per_node: int
    model: str
    gpu_memory_mib: int
    taints: tuple[Taint, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu: str = "64"
    memory: str = "512Gi"
    pods: str = "110"

    @property
    def product(self) -> str:
        """The `nvidia.com/gpu.product` label, as GPU feature discovery writes it."""
        return self.model if self.model.upper().startswith("NVIDIA") else f"NVIDIA-{self.model}"

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def gpu_memory_mib(model: str) -> int:
    if model in _KNOWN_GPU_MEMORY_MIB:
        return _KNOWN_GPU_MEMORY_MIB[model]
    if match := _MEMORY_SUFFIX.search(model):
        return int(match.group(1)) * 1024
    raise ValueError(f"cannot tell the memory of GPU model {model!r}; name it like H100-80GB")


def parse_pool(
    spec: str | Mapping[str, Any] | PoolSpec,
    taints: Sequence[str | Taint] = (),
    labels: Mapping[str, str] | None = None,
) -> PoolSpec:
    """A PoolSpec from `2 x 4 x H100-80GB`, or from YAML/mapping with the same fields.

    The mapping form: `{nodes: 2, gpusPerNode: 4, gpu: H100-80GB, gpuMemoryMiB: 81559,
    taints: ["nvidia.com/gpu=present:NoSchedule"], labels: {...}, cpu: "64", memory: 512Gi}`.
    """
    extra_taints = tuple(t if isinstance(t, Taint) else Taint.parse(t) for t in taints)
    if isinstance(spec, PoolSpec):
        return PoolSpec(
            **{
                **spec.__dict__,
                "taints": spec.taints + extra_taints,
                "labels": {**spec.labels, **(labels or {})},
            }
        )
    if isinstance(spec, str) and (match := _SPEC.match(spec)):
        model = match["model"]
        return PoolSpec(
            nodes=int(match["nodes"]),
            gpus_per_node=int(match["gpus"]),
            model=model,
            gpu_memory_mib=gpu_memory_mib(model),
            taints=extra_taints,
            labels=dict(labels or {}),
        )
    data = yaml.safe_load(spec) if isinstance(spec, str) else dict(spec)
    if not isinstance(data, dict):
        raise ValueError(f"not a pool spec: {spec!r} (want e.g. '2 x 4 x H100-80GB')")
    model = str(data["gpu"])
    return PoolSpec(
        nodes=int(data["nodes"]),
        gpus_per_node=int(data["gpusPerNode"]),
        model=model,
        gpu_memory_mib=int(data.get("gpuMemoryMiB") or gpu_memory_mib(model)),
        taints=tuple(Taint.parse(t) for t in data.get("taints", ())) + extra_taints,
        labels={**data.get("labels", {}), **(labels or {})},
        cpu=str(data.get("cpu", "64")),
        memory=str(data.get("memory", "512Gi")),
        pods=str(data.get("pods", "110")),
    )


def node_names(pool: str, spec: PoolSpec) -> list[str]:
    return [f"{pool}-{i}" for i in range(spec.nodes)]


def render_nodes(pool: str, spec: PoolSpec) -> list[dict[str, Any]]:
    """The Node objects of a pool; kwok makes them Ready and runs the pods bound to them."""
    resources = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "pods": spec.pods,
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(spec.gpus_per_node),
    }
    key, value = KWOK_NODE_ANNOTATION
    nodes = []
    for name in node_names(pool, spec):
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            POOL_LABEL: pool,
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": spec.product,
            "nvidia.com/gpu.memory": str(spec.gpu_memory_mib),
            "nvidia.com/gpu.count": str(spec.gpus_per_node),
            **spec.labels,
        }
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": {key: value}},
                "spec": {"taints": [t.as_dict() for t in spec.taints]},
                "status": {"capacity": dict(resources), "allocatable": dict(resources)},
            }
        )
    return nodes
