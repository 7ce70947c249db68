"""The generated CRD on a real kube-apiserver: accepted, defaulted, validated, scaled, printed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.local import LocalCluster

from paraserve.api import (
    InferenceDeployment,
    InferenceDeploymentStatus,
    Phase,
    RanksStatus,
    load_nodes_and_pods,
    memory_column,
)
from paraserve.planner import Pool, plan

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "inferencedeployments.paraserve.dev.yaml"
EXAMPLES = REPO / "examples"
DEPLOYMENTS = [
    "review-pp4-tp2-sp2.yaml",
    "review-pp8-tp2-sp2.yaml",
    "llama-2-70b-exact.yaml",
    "deepseek-v3.yaml",  # experts, latent attention, fp8 blocks, EP
]


@pytest.fixture(scope="module")
def crd(cluster: LocalCluster) -> LocalCluster:
    # The directory, as a user types it: `kubectl apply -f crds/` must find only the CRD.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD.parent))
    cluster.kubectl(
        "wait",
        "crd/inferencedeployments.paraserve.dev",
        "--for=condition=Established",
        "--timeout=60s",
    )
    return cluster


@pytest.fixture
def namespace(crd: LocalCluster) -> Iterator[str]:
    with crd.namespace() as name:
        yield name


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def create(cluster: LocalCluster, namespace: str, document: dict[str, Any]) -> str:
    """`kubectl create --validate=strict`; returns stderr ('' on success)."""
    result = cluster.kubectl(
        "create",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(document),
        check=False,
    )
    return "" if result.returncode == 0 else result.stderr


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_examples_are_accepted_and_defaulted(crd: LocalCluster, namespace: str, name: str) -> None:
    document = example(name)
    assert create(crd, namespace, document) == ""
    stored = crd.get("infd", document["metadata"]["name"], namespace=namespace)
    spec = stored["spec"]
    assert spec["replicas"] == 1
    assert spec["metrics"] == {"port": 9400, "path": "/metrics", "profile": "paraserve"}
    assert spec["gpu"]["resourceName"] == "nvidia.com/gpu"
    # What the API server stored (defaults included) is what the models read back.
    assert InferenceDeployment.model_validate(stored).spec == (
        InferenceDeployment.model_validate(document).spec
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parallelism": {"tensor": 2, "sequence": 3}}, "sequence must be 1 or equal to tensor"),
        ({"parallelism": {"pipeline": 4, "tensor": 0}}, "should be greater than or equal to 1"),
        ({"paralelism": {"pipeline": 4}}, 'unknown field "spec.paralelism"'),
        ({"model": {"name": "m", "architecture": {"numLayers": 80}}}, "give model.parameters"),
        ({"model": {"name": "m", "parameters": "70B", "dtype": "fp16"}}, "Unsupported value"),
        ({"gpu": {"memory": 1.5}}, "spec.gpu.memory"),
        (
            {
                "model": {
                    "name": "m",
                    "architecture": {"numLayers": 2},
                    "architectureFrom": {"configMapKeyRef": {"name": "llama"}},
                }
            },
            "not both",
        ),
        # A world size beyond any cluster is refused, and so is what a user controls that every
        # rank pod would carry: each error names the field.
        (
            {"parallelism": {"pipeline": 1024, "tensor": 1024}},
            "pipeline × tensor (the ranks of one replica) must be at most 16384",
        ),
        ({"worker": {"args": ["x" * 1_000_000]}}, "spec.worker.args[0]: Too long"),
        ({"worker": {"args": ["--flag"] * 300}}, "spec.worker.args: Too many"),
        (
            {"worker": {"env": [{"name": "BIG", "value": "x" * 100_000}]}},
            "spec.worker.env[0].value",
        ),
        ({"worker": {"image": "r/" + "x" * 2000}}, "spec.worker.image: Too long"),
    ],
)
def test_invalid_objects_are_rejected(
    crd: LocalCluster, namespace: str, change: dict[str, Any], message: str
) -> None:
    document = example("review-pp4-tp2-sp2.yaml")
    document["spec"].update(change)
    error = create(crd, namespace, document)
    assert message in error, error


def test_quantities_accept_integers_and_strings(crd: LocalCluster, namespace: str) -> None:
    document = example("review-pp4-tp2-sp2.yaml")
    document["spec"]["gpu"]["memory"] = 80_000_000_000
    document["spec"]["model"]["parameters"] = 70_000_000_000
    document["spec"]["slo"] = {"prefillP99": 1, "decodeP99PerToken": "100ms"}
    assert create(crd, namespace, document) == ""


def test_status_columns_and_scale(crd: LocalCluster, namespace: str) -> None:
    document = example("review-pp4-tp2-sp2.yaml")
    assert create(crd, namespace, document) == ""
    name = document["metadata"]["name"]
    deployment = crd.get("infd", name, namespace=namespace)
    spec = InferenceDeployment.model_validate(deployment).spec
    nodes_file = EXAMPLES / "nodes-1x8-a100-80g.yaml"
    verdict = plan(
        spec, Pool.from_objects(*load_nodes_and_pods(nodes_file.read_text(), "nodes"), spec)
    )
    status = InferenceDeploymentStatus(
        phase=Phase.READY,
        world_size=verdict.world_size,
        gpus_required=verdict.gpus_required,
        replicas=1,
        selector=f"paraserve.dev/deployment={name}",
        ranks=RanksStatus.of(8, 8),
        memory=memory_column(
            verdict.memory.total_bytes, verdict.memory.gpu_memory_bytes, estimated=True
        ),
    )
    crd.kubectl(
        "patch",
        "infd",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status.to_wire()}),
    )
    table = crd.kubectl("get", "infd", name, "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PP", "TP", "SP", "GPUS", "READY", "PHASE", "MEM", "AGE"]
    assert row.split()[:7] == [name, "4", "2", "2", "8", "8/8", "Ready"]
    assert "~34.25 GB/80 GB (42.8%)" in row

    crd.kubectl("scale", "infd", name, "-n", namespace, "--replicas=2")
    assert crd.get("infd", name, namespace=namespace)["spec"]["replicas"] == 2
    scale = json.loads(
        crd.kubectl(
            "get",
            "--raw",
            f"/apis/paraserve.dev/v1alpha1/namespaces/{namespace}/inferencedeployments/{name}/scale",
        ).stdout
    )
    assert scale["spec"]["replicas"] == 2
    assert scale["status"] == {"replicas": 1, "selector": f"paraserve.dev/deployment={name}"}


def test_short_name_and_explain(crd: LocalCluster) -> None:
    def explained() -> str:
        result = crd.kubectl("explain", "infd.spec.parallelism", check=False)
        return result.stdout if result.returncode == 0 else ""

    text = crd.wait_for(explained, timeout=60, what="kubectl explain infd.spec.parallelism")
    assert "sequence" in text and "adds no GPUs" in text
