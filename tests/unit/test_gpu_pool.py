"""GPU pool descriptions for the local cluster: parsed, and rendered as kwok nodes (no cluster)."""

from __future__ import annotations

import pytest
from e2e.cluster.gpupool import parse_pool, render_nodes


@pytest.mark.parametrize(
    ("text", "nodes", "gpus", "product", "memory"),
    [
        ("2 x 4 x H100-80GB", 2, 4, "NVIDIA-H100-80GB", 81559),
        ("1 × 8 × A100-80GB", 1, 8, "NVIDIA-A100-80GB", 81920),
        ("3x2xB200-192GB", 3, 2, "NVIDIA-B200-192GB", 192 * 1024),
    ],
)
def test_pool_descriptions_parse(
    text: str, nodes: int, gpus: int, product: str, memory: int
) -> None:
    spec = parse_pool(text)
    assert (spec.nodes, spec.gpus_per_node, spec.product, spec.gpu_memory_mib) == (
        nodes,
        gpus,
        product,
        memory,
    )


def test_pool_yaml_with_taints_renders_kwok_nodes() -> None:
    spec = parse_pool(
        "nodes: 2\ngpusPerNode: 8\ngpu: L40S-48GB\ntaints: ['nvidia.com/gpu=present:NoSchedule']",
        taints=["dedicated:NoExecute"],
    )
    nodes = render_nodes("l40s", spec)
    assert [n["metadata"]["name"] for n in nodes] == ["l40s-0", "l40s-1"]
    assert nodes[0]["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert nodes[0]["metadata"]["labels"]["nvidia.com/gpu.memory"] == "46068"
    assert nodes[0]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert nodes[0]["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "", "effect": "NoExecute"},
    ]
    with pytest.raises(ValueError, match="memory"):
        parse_pool("1 x 1 x Mystery")
