"""Rendering of rank pods, the headless Service and the topology ConfigMap, without a cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.builders import TINY_ARCHITECTURE, golden

from paraserve.api import InferenceDeploymentSpec, Plan
from paraserve.controller.reconciling import owned_objects
from paraserve.planner import Pool, plan
from tests import builders

OWNER = owned_objects.Owner(name="llama", namespace="default", uid="1234-abcd")
IMAGE = "registry.example/paraserve:test"


# What a user adds to the review's scenario to run their own rank image.
WORKER = {
    "image": "worker:1",
    "command": ["paraserve", "worker"],
    "args": ["--serve"],
    "env": [{"name": "HF_HOME", "value": "/cache"}],
    "resources": {"requests": {"cpu": "4", "memory": "32Gi"}},
}


def review_spec(**changes: Any) -> InferenceDeploymentSpec:
    document = {"worker": WORKER, "metrics": {"port": 9400, "path": "/metrics"}} | changes
    return builders.review_spec(**document)


def node(name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"paraserve.dev/pool": "a100-80g", "kubernetes.io/hostname": name},
        },
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def planned(spec: InferenceDeploymentSpec, nodes: int = 1, gpus: int = 8) -> Plan:
    pool = Pool.from_objects([node(f"n{i}", gpus) for i in range(nodes)], [], spec)
    return plan(spec, pool)


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


@pytest.fixture
def review_pods() -> list[dict[str, Any]]:
    spec = review_spec()
    verdict = planned(spec)
    assert verdict.feasible, verdict.errors
    return owned_objects.replica_pods(OWNER, spec, 0, hash_="h1", default_image=IMAGE)


def test_review_scenario_has_eight_pods_in_megatron_order(review_pods: list[dict[str, Any]]):
    assert [p["metadata"]["name"] for p in review_pods] == [f"llama-0-{k}" for k in range(8)]
    coordinates = [
        (int(e["RANK"]), int(e["PARASERVE_PP_RANK"]), int(e["PARASERVE_TP_RANK"]))
        for e in map(env_of, review_pods)
    ]
    assert coordinates == [(pp * 2 + tp, pp, tp) for pp in range(4) for tp in range(2)]


def test_review_stage_layers(review_pods: list[dict[str, Any]]):
    layers = [env_of(p)["PARASERVE_STAGE_LAYERS"] for p in review_pods]
    assert layers == ["0:20", "0:20", "20:40", "20:40", "40:60", "40:60", "60:80", "60:80"]


def test_every_env_var_of_the_contract(review_pods: list[dict[str, Any]]):
    env = env_of(review_pods[3])
    assert env == {
        "WORLD_SIZE": "8",
        "RANK": "3",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "llama-0-0.llama.default.svc",
        "MASTER_PORT": "29500",
        "PARASERVE_PP_SIZE": "4",
        "PARASERVE_TP_SIZE": "2",
        "PARASERVE_SP_SIZE": "2",
        "PARASERVE_PP_RANK": "1",
        "PARASERVE_TP_RANK": "1",
        "PARASERVE_SP_RANK": "1",
        "PARASERVE_STAGE_LAYERS": "20:40",
        "PARASERVE_REPLICA": "0",
        "PARASERVE_TOPOLOGY": "/etc/paraserve/topology.json",
        "PARASERVE_METRICS_PORT": "9400",
        "PARASERVE_METRICS_PATH": "/metrics",
        "HF_HOME": "/cache",
    }
    # The user's variables come last, after the contract.
    assert review_pods[3]["spec"]["containers"][0]["env"][-1] == {
        "name": "HF_HOME",
        "value": "/cache",
    }


def test_sp_rank_is_zero_without_sequence_parallelism():
    spec = review_spec(parallelism={"pipeline": 4, "tensor": 2, "sequence": 1})
    pods = owned_objects.replica_pods(OWNER, spec, 1, hash_="h", default_image=IMAGE)
    assert {env_of(p)["PARASERVE_SP_RANK"] for p in pods} == {"0"}
    assert {env_of(p)["MASTER_ADDR"] for p in pods} == {"llama-1-0.llama.default.svc"}
    assert {env_of(p)["PARASERVE_REPLICA"] for p in pods} == {"1"}


def test_labels_identity_and_affinity(review_pods: list[dict[str, Any]]):
    pod = review_pods[5]
    labels = pod["metadata"]["labels"]
    assert labels == {
        "paraserve.dev/deployment": "llama",
        "paraserve.dev/replica": "0",
        "paraserve.dev/rank": "5",
        "paraserve.dev/pp-rank": "2",
        "paraserve.dev/tp-rank": "1",
        "paraserve.dev/tp-group": "0-2",
        "paraserve.dev/template-hash": "h1",
        "app.kubernetes.io/managed-by": "paraserve-operator",
    }
    spec = pod["spec"]
    assert spec["hostname"] == "llama-0-5" and spec["subdomain"] == "llama"
    assert spec["restartPolicy"] == "Never"
    term = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {
        "paraserve.dev/deployment": "llama",
        "paraserve.dev/tp-group": "0-2",
    }
    # The two ranks of a stage share the group; the next stage does not.
    assert review_pods[4]["metadata"]["labels"]["paraserve.dev/tp-group"] == "0-2"
    assert review_pods[6]["metadata"]["labels"]["paraserve.dev/tp-group"] == "0-3"
    assert spec["nodeSelector"] == {"paraserve.dev/pool": "a100-80g"}


def test_no_affinity_when_tensor_groups_may_span_nodes():
    spec = review_spec(placement={"tensorParallelWithinNode": False})
    pods = owned_objects.replica_pods(OWNER, spec, 0, hash_="h", default_image=IMAGE)
    assert all("affinity" not in p["spec"] for p in pods)


def test_container_gpu_volumes_ports_and_owner(review_pods: list[dict[str, Any]]):
    pod = review_pods[0]
    container = pod["spec"]["containers"][0]
    assert container["image"] == "worker:1"
    assert container["command"] == ["paraserve", "worker"] and container["args"] == ["--serve"]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "32Gi"},
        "limits": {"nvidia.com/gpu": 1},
    }
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in container["ports"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert volumes["topology"]["configMap"]["name"] == "llama-topology-h1"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/dev/shm", "/etc/paraserve"}
    assert pod["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "paraserve.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "name": "llama",
            "uid": "1234-abcd",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_default_image_and_tolerations():
    spec = review_spec(
        worker={},
        placement={
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm"}],
        },
    )
    pod = owned_objects.rank_pod(
        OWNER,
        spec,
        0,
        owned_objects.ranks(spec.parallelism)[0],
        hash_="h",
        default_image=IMAGE,
    )
    assert pod["spec"]["containers"][0]["image"] == IMAGE
    assert "command" not in pod["spec"]["containers"][0]
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "llm"}]


def test_headless_service():
    service = owned_objects.headless_service(OWNER, review_spec())
    assert service["metadata"]["name"] == "llama"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"paraserve.dev/deployment": "llama"}
    assert [p["port"] for p in service["spec"]["ports"]] == [29500, 9400]
    assert service["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"


def test_topology_document_matches_the_worker_contract():
    spec = InferenceDeploymentSpec.model_validate(
        {
            "model": {"name": "tiny", "dtype": "float32", "architecture": TINY_ARCHITECTURE},
            "parallelism": {"pipeline": 2, "tensor": 2, "sequence": 2},
            "serving": {"maxBatchSize": 4, "maxSequenceLength": 64},
            "gpu": {"memory": "80G"},
        }
    )
    verdict = planned(spec)
    configmap = owned_objects.topology_configmap(OWNER, spec, verdict.stages, "h2")
    assert configmap["metadata"]["name"] == "llama-topology-h2"
    assert configmap["metadata"]["labels"]["paraserve.dev/template-hash"] == "h2"
    document = json.loads(configmap["data"]["topology.json"])
    # The worker's tests parse the same file (tests/unit/worker/test_worker_topology.py).
    assert document == golden("topology-pp2-tp2-sp2.json")


def test_topology_omits_a_missing_architecture():
    spec = review_spec(
        model={"name": "m", "dtype": "float16", "parameters": "7B"},
        parallelism={"pipeline": 1, "tensor": 1},
    )
    document = owned_objects.topology(OWNER, spec, planned(spec).stages)
    assert "architecture" not in document["model"]
    assert document["model"]["kvCacheDtype"] == "float16"


def test_template_hash_ignores_what_no_pod_is_made_from():
    base = review_spec()
    same = review_spec(
        replicas=3,
        slo={"prefillP99": "1s"},
        gpu={"memory": "81559Mi", "maxMemoryUtilization": 0.9},
        memory={"overheadPerGpu": "10G"},
    )
    other = review_spec(worker={"image": "worker:2"})
    assert owned_objects.template_hash(base, IMAGE) == owned_objects.template_hash(same, IMAGE)
    assert owned_objects.template_hash(base, IMAGE) != owned_objects.template_hash(other, IMAGE)
    assert owned_objects.template_hash(base, IMAGE) != owned_objects.template_hash(
        base, "other:image"
    )
    serving = review_spec(serving={"maxBatchSize": 32})
    assert owned_objects.template_hash(base, IMAGE) != owned_objects.template_hash(serving, IMAGE)


def test_name_problem_for_hostnames_longer_than_a_dns_label():
    spec = review_spec()
    assert owned_objects.name_problem("llama", spec) is None
    assert "63" in (owned_objects.name_problem("x" * 60, spec) or "")
    assert "letter" in (owned_objects.name_problem("7b-model", spec) or "")


def test_each_template_version_mounts_its_own_topology():
    """A rolling update writes the new topology beside the old, never over it."""
    old, new = review_spec(), review_spec(serving={"maxBatchSize": 64})
    old_hash, new_hash = (owned_objects.template_hash(s, IMAGE) for s in (old, new))
    assert old_hash != new_hash
    names = []
    for spec, hash_ in ((old, old_hash), (new, new_hash)):
        stages = planned(spec).stages
        [pod] = owned_objects.replica_pods(
            OWNER, spec, 0, hash_=hash_, default_image=IMAGE, only_ranks=[0]
        )
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "topology")
        configmap = owned_objects.topology_configmap(OWNER, spec, stages, hash_)
        assert volume["configMap"]["name"] == configmap["metadata"]["name"]
        names.append(configmap["metadata"]["name"])
    assert names[0] != names[1]
