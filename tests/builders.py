"""Builders the tests share: the review's specs, Node and Pod objects, the tiny model, goldens.

One place, so a scenario means the same thing in every test that names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from paraserve.api import InferenceDeploymentSpec
from paraserve.planner import Pool
from paraserve.worker.shape import TINY_ARCHITECTURE

__all__ = [
    "LLAMA_2_70B",
    "POOL_LABEL",
    "TINY_ARCHITECTURE",
    "exact_spec",
    "golden",
    "node",
    "pod",
    "pool_of",
    "review_document",
    "review_spec",
    "spec",
]

GOLDEN = Path(__file__).parent / "golden"

POOL_LABEL = "paraserve.dev/pool"

LLAMA_2_70B = {
    "numLayers": 80,
    "hiddenSize": 8192,
    "numAttentionHeads": 64,
    "numKeyValueHeads": 8,
    "headDim": 128,
    "intermediateSize": 28672,
    "vocabSize": 32000,
}


def spec(**overrides: Any) -> InferenceDeploymentSpec:
    """The review's coarse scenario (PP=4 × TP=2 × SP=2), with camelCase overrides merged in."""
    document: dict[str, Any] = {
        "model": {
            "name": "meta-llama/Llama-2-70b-hf",
            "dtype": "float16",
            "parameters": "70B",
            "architecture": {"numLayers": 80},
        },
        "parallelism": {"pipeline": 4, "tensor": 2, "sequence": 2},
        "gpu": {"memory": "80G"},
        "memory": {"overheadPerGpu": "16.75G"},
        "placement": {"nodeSelector": {POOL_LABEL: "a100-80g"}},
    }
    _merge(document, overrides)
    return InferenceDeploymentSpec.model_validate(document)


def review_document(**changes: Any) -> dict[str, Any]:
    """The review's coarse scenario as a user writes it; top-level keys replaced by ``changes``.

    Unlike ``spec``, a key given replaces the whole block (``placement={}`` drops the pool).
    """
    document: dict[str, Any] = {
        "model": {
            "name": "meta-llama/Llama-2-70b-hf",
            "dtype": "float16",
            "parameters": "70B",
            "architecture": {"numLayers": 80, "numAttentionHeads": 64, "numKeyValueHeads": 8},
        },
        "parallelism": {"pipeline": 4, "tensor": 2, "sequence": 2},
        "gpu": {"memory": "80G"},
        "memory": {"overheadPerGpu": "16.75G"},
        "placement": {"nodeSelector": {POOL_LABEL: "a100-80g"}},
    }
    document.update(changes)
    return document


def review_spec(**changes: Any) -> InferenceDeploymentSpec:
    """``review_document`` as the validated model."""
    return InferenceDeploymentSpec.model_validate(review_document(**changes))


def golden(name: str) -> Any:
    """A JSON document under tests/golden/ that producer and consumer tests both assert on."""
    return json.loads((GOLDEN / name).read_text())


def exact_spec(**overrides: Any) -> InferenceDeploymentSpec:
    """Llama-2-70B in exact mode on the same pool."""
    document: dict[str, Any] = {
        "model": {"name": "llama", "dtype": "float16", "architecture": dict(LLAMA_2_70B)},
        "parallelism": {"pipeline": 4, "tensor": 2, "sequence": 2},
        "serving": {"maxBatchSize": 16, "maxSequenceLength": 4096},
        "placement": {"nodeSelector": {POOL_LABEL: "a100-80g"}},
    }
    _merge(document, overrides)
    return InferenceDeploymentSpec.model_validate(document)


def node(
    name: str = "gpu-node-0",
    gpus: int | str | None = 8,
    *,
    pool: str | None = "a100-80g",
    memory_mib: int | None = 81920,
    unschedulable: bool = False,
    taints: list[dict[str, Any]] | None = None,
    resource: str = "nvidia.com/gpu",
) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if pool is not None:
        labels[POOL_LABEL] = pool
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    allocatable: dict[str, Any] = {"cpu": "64", "memory": "512Gi"}
    if gpus is not None:
        allocatable[resource] = str(gpus)
    node_spec: dict[str, Any] = {}
    if unschedulable:
        node_spec["unschedulable"] = True
    if taints:
        node_spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": node_spec,
        "status": {"allocatable": allocatable, "capacity": dict(allocatable)},
    }


def pod(
    node_name: str | None,
    gpus: int = 1,
    *,
    phase: str = "Running",
    name: str = "user-pod",
    limits_only: bool = False,
    init_gpus: int = 0,
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if not limits_only:
        resources["requests"] = {"nvidia.com/gpu": str(gpus)}
    pod_spec: dict[str, Any] = {"containers": [{"name": "main", "resources": resources}]}
    if node_name:
        pod_spec["nodeName"] = node_name
    if init_gpus:
        pod_spec["initContainers"] = [
            {"name": "init", "resources": {"requests": {"nvidia.com/gpu": str(init_gpus)}}}
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": pod_spec,
        "status": {"phase": phase},
    }


def pool_of(
    target: InferenceDeploymentSpec,
    nodes: list[dict[str, Any]] | None = None,
    pods: list[dict[str, Any]] | None = None,
) -> Pool:
    """The pool of ``target`` over ``nodes`` (default: one node of 8 GPUs)."""
    return Pool.from_objects([node()] if nodes is None else nodes, pods or [], target)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and value and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
