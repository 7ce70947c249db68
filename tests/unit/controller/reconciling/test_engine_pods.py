"""Rank pods of rendered engines, the client Service, and engine refusals in the verdict."""

from __future__ import annotations

from typing import Any

from paraserve.api import InferenceDeploymentSpec
from paraserve.api.labels import LABEL_DEPLOYMENT, LABEL_RANK
from paraserve.api.rank_env import parse_rank_env
from paraserve.controller.reconciling import owned_objects
from paraserve.engines import ENGINE_ARGUMENT_CONFLICT, with_engine_checks
from paraserve.planner import Pool, plan

OWNER = owned_objects.Owner(name="llama", namespace="serving", uid="u-1")
IMAGE = "registry.example/paraserve:test"
HEAD = "llama-1-0.llama.serving.svc"


def engine_spec(name: str = "vllm", **fields: Any) -> InferenceDeploymentSpec:
    document: dict[str, Any] = {
        "model": {
            "name": "meta-llama/Llama-3.1-8B",
            "parameters": "8B",
            "source": {"persistentVolumeClaim": {"claimName": "weights", "path": "llama"}},
        },
        "parallelism": {"pipeline": 2, "tensor": 2},
        "replicas": 2,
        "engine": {"name": name},
        **fields,
    }
    return InferenceDeploymentSpec.model_validate(document)


def pods(spec: InferenceDeploymentSpec, replica: int = 1) -> list[dict[str, Any]]:
    return owned_objects.replica_pods(OWNER, spec, replica, hash_="h", default_image=IMAGE)


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return only


def test_each_rank_runs_the_command_rendered_from_its_own_env() -> None:
    for k, pod in enumerate(pods(engine_spec())):
        c = container(pod)
        env = parse_rank_env({e["name"]: e["value"] for e in c["env"] if "value" in e})
        assert (env.rank, env.master_addr) == (k, HEAD)
        argv = [*c["command"], *c["args"]]
        assert argv[:3] == ["vllm", "serve", "/models/llama"]
        assert argv[argv.index("--node-rank") + 1] == str(k)
        assert argv[argv.index("--master-addr") + 1] == HEAD
        assert ("--headless" in argv) == (k > 0)
        assert c["image"] == "vllm/vllm-openai:v0.32.0"


def test_only_the_head_is_probed_on_health() -> None:
    head, *rest = pods(engine_spec())
    probe = container(head)["readinessProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": "http"}
    assert all("readinessProbe" not in container(p) for p in rest)


def test_the_api_port_replaces_the_metrics_port() -> None:
    ports = container(pods(engine_spec("sglang"))[0])["ports"]
    assert [(p["name"], p["containerPort"]) for p in ports] == [
        ("http", 30000),
        ("rendezvous", 29500),
    ]


def test_weights_are_mounted_read_only_in_every_rank() -> None:
    for pod in pods(engine_spec()):
        assert {"name": "weights", "mountPath": "/models", "readOnly": True} in container(pod)[
            "volumeMounts"
        ]
        assert {
            "name": "weights",
            "persistentVolumeClaim": {"claimName": "weights", "readOnly": True},
        } in pod["spec"]["volumes"]


def test_a_worker_image_overrides_the_engines() -> None:
    spec = engine_spec(worker={"image": "my/vllm:cpu"})
    assert container(pods(spec)[0])["image"] == "my/vllm:cpu"


def test_the_reference_worker_pod_is_unchanged_by_engines() -> None:
    spec = engine_spec("paraserve")
    c = container(pods(spec)[0])
    assert "command" not in c and "readinessProbe" not in c and c["image"] == IMAGE
    assert owned_objects.api_service(OWNER, spec) is None


def test_the_client_service_selects_the_heads() -> None:
    service = owned_objects.api_service(OWNER, engine_spec(engine={"name": "vllm", "port": 8080}))
    assert service is not None
    assert service["metadata"]["name"] == "llama-api"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == {LABEL_DEPLOYMENT: "llama", LABEL_RANK: "0"}
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["metadata"]["ownerReferences"] == [OWNER.reference]


def test_the_engine_is_part_of_the_template() -> None:
    plain = owned_objects.template_hash(engine_spec(), IMAGE)
    extra = engine_spec(engine={"name": "vllm", "args": ["--enforce-eager"]})
    assert owned_objects.template_hash(extra, IMAGE) != plain


def test_engine_refusals_make_the_verdict_infeasible() -> None:
    spec = engine_spec(engine={"name": "vllm", "args": ["--tensor-parallel-size", "4"]})
    node = {
        "metadata": {"name": "n", "labels": {}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }
    verdict = with_engine_checks(plan(spec, Pool.from_objects([node], [], spec)), spec)
    assert not verdict.feasible and not verdict.schedulable_now
    (error,) = verdict.errors
    assert error.code == ENGINE_ARGUMENT_CONFLICT
    assert "'--tensor-parallel-size 4' contradicts parallelism.tensor" in error.message
