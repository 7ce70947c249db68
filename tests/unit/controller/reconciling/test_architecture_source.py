"""model.architectureFrom in the operator: the ConfigMap index, the resolution, the phase."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._core.engines.indexing import OperatorIndexer

from paraserve.api import InferenceDeploymentSpec
from paraserve.controller.reconciling import architecture_source
from paraserve.controller.reconciling.reconcile import ALL, ControllerSettings, Reconciler, Views
from paraserve.controller.running import watches
from paraserve.controller.running.operator_metrics import OperatorMetrics
from paraserve.planner import architecture_from_text

CONFIGS = Path(__file__).resolve().parents[4] / "examples" / "configs"
LLAMA_8B = (CONFIGS / "llama-3.1-8b.json").read_text()
LLAMA_70B = (CONFIGS / "llama-3.1-70b.json").read_text()
NAMESPACE = "team"


def config_map(name: str, data: Mapping[str, str], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", **metadata},
        "data": dict(data),
    }


def raw_spec(config_map_name: str = "llama", **changes: Any) -> dict[str, Any]:
    return {
        "model": {
            "name": "meta-llama/Llama-3.1-8B",
            "architectureFrom": {"configMapKeyRef": {"name": config_map_name}},
        },
        "parallelism": {"pipeline": 1, "tensor": 1},
        "serving": {"maxBatchSize": 4, "maxSequenceLength": 4096},
        "gpu": {"memory": "80G"},
        **changes,
    }


def indexed(*bodies: Mapping[str, Any]) -> Mapping[Any, Any]:
    """A CONFIG_MAPS index as kopf keeps it (the real kopf index, fed our entries)."""
    indexer = OperatorIndexer()
    for body in bodies:
        meta = body["metadata"]
        indexer.replace((meta["namespace"], meta["name"], meta["uid"]), _entry(body))
    return indexer.index


def _entry(body: Mapping[str, Any]) -> dict[Any, Any]:
    return architecture_source.config_map_entry(body)


# -- what the index keeps --------------------------------------------------------------------


def test_the_index_keeps_the_text_of_model_configs_only() -> None:
    body = config_map(
        "llama", {"config.json": LLAMA_8B, "README": "weights at s3://…", "app.yaml": "a: 1"}
    )
    body["binaryData"] = {"tokenizer.model": "AAEC"}
    [(key, view)] = architecture_source.config_map_entry(body).items()
    assert key == (NAMESPACE, "llama")
    assert view == {
        "data": {
            "config.json": LLAMA_8B,
            "README": None,
            "app.yaml": None,
            "tokenizer.model": None,
        }
    }
    # The operator's own topology ConfigMaps are not indexed at all.
    own = config_map("d-topology", {"topology.json": "{}"})
    own["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "paraserve-operator"}
    assert architecture_source.config_map_entry(own) == {}
    helm = config_map("from-helm", {"config.json": LLAMA_8B})
    helm["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "Helm"}
    assert architecture_source.config_map_entry(helm)


def test_an_entry_that_stops_matching_leaves_the_index() -> None:
    # kopf keeps an object's previous value when its indexing function returns None, so the
    # entries are empty mappings: the real kopf index then forgets the object.
    indexer = OperatorIndexer()
    key = (NAMESPACE, "d", "uid-d")
    named = {"metadata": {"namespace": NAMESPACE, "name": "d"}, "spec": raw_spec("llama")}
    indexer.replace(key, architecture_source.named_by_entry(named))
    assert architecture_source.deployments_naming(indexer.index, NAMESPACE, "llama") == [
        (NAMESPACE, "d")
    ]
    plain = {"metadata": {"namespace": NAMESPACE, "name": "d"}, "spec": {"model": {"name": "m"}}}
    indexer.replace(key, architecture_source.named_by_entry(plain))
    assert architecture_source.deployments_naming(indexer.index, NAMESPACE, "llama") == []
    assert (NAMESPACE, "llama") not in indexer.index


def test_deployments_naming_a_config_map_in_its_namespace_only() -> None:
    indexer = OperatorIndexer()
    for namespace, name, source in [
        (NAMESPACE, "a", "llama"),
        (NAMESPACE, "b", "llama"),
        (NAMESPACE, "c", "qwen"),
        ("other", "a", "llama"),
    ]:
        body = {"metadata": {"namespace": namespace, "name": name}, "spec": raw_spec(source)}
        indexer.replace((namespace, name, name), architecture_source.named_by_entry(body))
    naming = architecture_source.deployments_naming(indexer.index, NAMESPACE, "llama")
    assert naming == [(NAMESPACE, "a"), (NAMESPACE, "b")]
    assert architecture_source.deployments_naming(indexer.index, NAMESPACE, "none") == []


@pytest.mark.parametrize(
    "spec",
    [{}, {"model": None}, {"model": {"architectureFrom": {"configMapKeyRef": {"name": ""}}}}],
)
def test_a_raw_spec_naming_nothing(spec: dict[str, Any]) -> None:
    assert architecture_source.named_config_map(spec) is None


# -- the resolution (planner.resolve_architecture on the index) ------------------------------


def resolved(index: Mapping[Any, Any], spec: dict[str, Any] | None = None) -> Any:
    parsed = InferenceDeploymentSpec.model_validate(spec or raw_spec())

    def lookup(namespace: str, name: str) -> Any:
        return architecture_source.config_map_data(index, namespace, name)

    return architecture_source.resolve(parsed, NAMESPACE, lookup)


def test_the_architecture_is_read_from_the_index() -> None:
    spec, finding = resolved(indexed(config_map("llama", {"config.json": LLAMA_8B})))
    assert finding is None
    assert spec.model.exact and spec.model.architecture_from is None
    assert spec.model.architecture == architecture_from_text(LLAMA_8B)


@pytest.mark.parametrize(
    ("maps", "code", "message"),
    [
        (
            [],
            "ConfigMapNotFound",
            "model.architectureFrom: ConfigMap 'llama' not found; it should hold key"
            " 'config.json' (kubectl create configmap llama --from-file=config.json)",
        ),
        (
            [config_map("llama", {"llama.json": LLAMA_8B})],
            "InvalidModelConfig",
            "model.architectureFrom: ConfigMap 'llama' has no key 'config.json'"
            " (keys: llama.json)",
        ),
        (
            [config_map("llama", {"config.json": '{"model_type": "llama", "hidden_size": 4096'})],
            "InvalidModelConfig",
            "model.architectureFrom: ConfigMap 'llama' key 'config.json': not JSON:"
            " Expecting ',' delimiter at line 1",
        ),
        (
            [config_map("llama", {"config.json": "num_layers: 32"})],
            "InvalidModelConfig",
            "model.architectureFrom: ConfigMap 'llama' key 'config.json' holds no"
            ' "model_type": not a Hugging Face config.json',
        ),
        (
            [config_map("llama", {"config.json": '{"model_type": "bert"}'})],
            "InvalidModelConfig",
            "model.architectureFrom: ConfigMap 'llama' key 'config.json': model_type 'bert'"
            " is not supported; supported: ",
        ),
        (
            # In another namespace: not this deployment's.
            [{**config_map("llama", {"config.json": LLAMA_8B}), "metadata": {
                "name": "llama", "namespace": "other", "uid": "u"}}],
            "ConfigMapNotFound",
            "ConfigMap 'llama' not found",
        ),
    ],
)  # fmt: skip
def test_what_is_wrong_is_one_line_naming_the_config_map_and_key(
    maps: list[dict[str, Any]], code: str, message: str
) -> None:
    spec, finding = resolved(indexed(*maps))
    assert spec.model.architecture_from is not None  # unresolved, returned as it was
    assert finding.code == code
    assert message in finding.message and "\n" not in finding.message


def test_a_key_other_than_config_json() -> None:
    maps = indexed(config_map("qwen", {"qwen3-32b.json": LLAMA_8B}))
    spec = raw_spec()
    spec["model"]["architectureFrom"] = {"configMapKeyRef": {"name": "qwen", "key": "x.json"}}
    _, finding = resolved(indexed(), spec)
    assert "--from-file=x.json=config.json" in finding.message
    spec["model"]["architectureFrom"]["configMapKeyRef"]["key"] = "qwen3-32b.json"
    assert resolved(maps, spec)[1] is None


# -- the reconcile: Waiting, Rejected, planned, re-planned ------------------------------------


class Writes:
    """A ClusterWrites that records the reconcile's writes."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.created: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []

    async def patch_deployment(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        resource_version: str | None,
        subresource: str | None = None,
        **_: Any,
    ) -> dict[str, Any] | None:
        if subresource == "status":
            for key, value in patch["status"].items():
                if value is None:
                    self.status.pop(key, None)
                else:
                    self.status[key] = value
        return {"metadata": {"resourceVersion": "2"}}

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]:
        self.created += [dict(o) for o in objs]
        return [True] * len(objs)

    async def apply(self, obj: Mapping[str, Any]) -> None:
        return None

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None:
        return None

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str
    ) -> None:
        self.events.append((type_, reason, message))


def node() -> dict[str, Any]:
    return {
        "metadata": {"name": "gpu-0", "labels": {}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }


class Operator:
    """A Reconciler on in-memory indexes, one deployment `d` naming ConfigMap `llama`."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.writes = Writes()
        self.views = Views()
        self.views.nodes = {ALL: [node()]}
        self.views.gpu_pods = {ALL: []}
        self.maps: list[dict[str, Any]] = []
        self.spec = spec or raw_spec()
        settings, metrics = ControllerSettings(), OperatorMetrics()
        self.reconciler = Reconciler(self.writes, self.views, settings, metrics)

    def reconcile(self) -> dict[str, Any]:
        self.views.model_config_maps = indexed(*self.maps)
        body = {
            "metadata": {"name": "d", "namespace": NAMESPACE, "uid": "u", "generation": 1},
            "spec": self.spec,
            "status": dict(self.writes.status),
        }
        self.views.deployments = {(NAMESPACE, "d"): [body]}
        asyncio.run(self.reconciler.reconcile((NAMESPACE, "d")))
        return self.writes.status


def validated(status: Mapping[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Validated")


def test_a_missing_config_map_waits_and_its_arrival_plans_the_deployment() -> None:
    operator = Operator()
    status = operator.reconcile()
    assert status["phase"] == "Waiting"
    assert validated(status)["reason"] == "ConfigMapNotFound"
    assert "ConfigMap 'llama' not found" in validated(status)["message"]
    assert "plan" not in status and not operator.writes.created
    assert operator.writes.events[-1][:2] == ("Warning", "ConfigMapNotFound")

    operator.maps = [config_map("llama", {"config.json": LLAMA_8B})]
    status = operator.reconcile()
    assert status["phase"] == "Scheduling"
    assert status["plan"]["mode"] == "exact"
    assert status["plan"]["memory"]["weightsBytes"] == 16_060_522_496  # 8.03B × 2 B
    assert "worst rank uses 25.9 % of its GPU" in validated(status)["message"]
    (pod,) = operator.writes.created
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["PARASERVE_STAGE_LAYERS"] == "0:32"


def test_a_bad_config_map_is_rejected_and_an_impossible_one_shows_the_arithmetic() -> None:
    operator = Operator()
    operator.maps = [config_map("llama", {"config.json": '{"model_type": "llama",'})]
    status = operator.reconcile()
    assert status["phase"] == "Rejected"
    assert validated(status)["reason"] == "InvalidModelConfig"
    assert validated(status)["message"] == (
        "model.architectureFrom: ConfigMap 'llama' key 'config.json': not JSON:"
        " Expecting property name enclosed in double quotes at line 1"
    )
    operator.maps = [config_map("llama", {"config.json": LLAMA_70B})]
    status = operator.reconcile()
    assert status["phase"] == "Rejected"
    assert validated(status)["reason"] == "MemoryLimitExceeded"
    assert "141.11 GB weights" in validated(status)["message"]
    assert "150.3 GB / 80 GB = 187.9 % > 85 % maxMemoryUtilization" in validated(status)["message"]
    assert status["plan"]["mode"] == "exact" and not operator.writes.created


def hashes(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["labels"]["paraserve.dev/template-hash"] for p in pods}


def test_a_changed_config_map_re_plans_and_rolls_the_ranks() -> None:
    operator = Operator(raw_spec(parallelism={"pipeline": 1, "tensor": 4}))
    operator.maps = [config_map("llama", {"config.json": LLAMA_8B})]
    before = operator.reconcile()["plan"]["memory"]["weightsBytes"]
    first = hashes(operator.writes.created)
    operator.maps = [config_map("llama", {"config.json": LLAMA_70B})]
    operator.writes.created.clear()
    status = operator.reconcile()
    after = status["plan"]["memory"]["weightsBytes"]
    assert (before, after) == (4_015_529_984, 35_278_831_616)  # 8.03B and 70.55B × 2 B / TP=4
    assert status["plan"]["stages"][0]["layers"] == [0, 80]
    # The ranks are sized for the architecture: another one is another pod template. (A fresh
    # operator renders it: this one still expects the pods it created, which no watch shows.)
    fresh = Operator(raw_spec(parallelism={"pipeline": 1, "tensor": 4}))
    fresh.maps = operator.maps
    fresh.reconcile()
    second = hashes(fresh.writes.created)
    assert len(first) == len(second) == 1 and first != second


# -- the watch: a ConfigMap event queues the deployments naming it ---------------------------


class Queue:
    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []

    def enqueue(self, key: tuple[str, str]) -> None:
        self.keys.append(key)


def test_a_config_map_event_queues_exactly_the_deployments_naming_it() -> None:
    registry = kopf.OperatorRegistry()
    queue = Queue()
    watches.register(registry, queue)  # type: ignore[arg-type]
    (handler,) = [h for h in registry._watching.get_all_handlers() if h.id == "configmap-changed"]
    indexer = OperatorIndexer()
    for name, source in [("a", "llama"), ("b", "qwen")]:
        body = {"metadata": {"namespace": NAMESPACE, "name": name}, "spec": raw_spec(source)}
        indexer.replace((NAMESPACE, name, name), architecture_source.named_by_entry(body))
    event = kopf.Body(config_map("llama", {"config.json": LLAMA_8B}))
    asyncio.run(handler.fn(body=event, architecture_sources=indexer.index))
    assert queue.keys == [(NAMESPACE, "a")]
    other = kopf.Body(config_map("kube-root-ca.crt", {"ca.crt": "…"}))
    asyncio.run(handler.fn(body=other, architecture_sources=indexer.index))
    assert queue.keys == [(NAMESPACE, "a")]
