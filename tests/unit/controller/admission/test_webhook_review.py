"""The admission check: the reconcile's verdict, refused or admitted, and the kopf handler."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import kopf
import pytest
from tests.builders import review_document

from paraserve.controller.admission.review import (
    HANDLER_ID,
    PoolWatch,
    Review,
    register,
    review,
    spec_changed,
)
from paraserve.controller.reconciling import architecture_source
from paraserve.controller.reconciling.reconcile import ALL, ControllerSettings, Reconciler, Views
from paraserve.controller.running.cluster_io import Cluster
from paraserve.controller.running.operator_metrics import OperatorMetrics

POOL = {"paraserve.dev/pool": "a100-80g"}
NAMESPACE = "team"
REVIEW_MESSAGE = (
    'InsufficientGPUs: PP=8 × TP=2 = 16 GPUs required; pool "a100-80g" has 8 allocatable'
    " (1 node × 8)"
)


def raw_spec(**changes: Any) -> dict[str, Any]:
    """The review's coarse scenario, PP=4 × TP=2 × SP=2, as a user writes it."""
    return review_document(**({"gpu": {"memory": "80G", "maxMemoryUtilization": 0.85}} | changes))


def node(name: str = "gpu-node-0", gpus: int = 8) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {**POOL, "nvidia.com/gpu.memory": "81920"}},
        "spec": {"unschedulable": False, "taints": []},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def gpu_pod(name: str, gpus: int, deployment: str | None = None) -> dict[str, Any]:
    labels = {"paraserve.dev/deployment": deployment} if deployment else {}
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "nodeName": "gpu-node-0",
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
            "initContainers": [],
        },
        "status": {"phase": "Running"},
    }


def reconciler(
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]] | None = None,
    config_maps: dict[str, dict[str, str]] | None = None,
) -> Reconciler:
    views = Views()
    views.nodes = {ALL: nodes}
    views.gpu_pods = {ALL: pods or []}
    # The CONFIG_MAPS index: (namespace, name) → [what it keeps of the ConfigMap].
    views.model_config_maps = {
        key: [view]
        for name, data in (config_maps or {}).items()
        for key, view in architecture_source.config_map_entry(
            {"metadata": {"namespace": NAMESPACE, "name": name}, "data": data}
        ).items()
    }
    return Reconciler(Cluster(None), views, ControllerSettings(), OperatorMetrics())


def test_the_reviews_impossible_strategy_is_refused_with_the_arithmetic() -> None:
    answer = review(
        reconciler([node()]),
        (NAMESPACE, "pp8"),
        raw_spec(parallelism={"pipeline": 8, "tensor": 2, "sequence": 2}),
        pool_known=True,
    )
    assert answer.refusal is not None
    assert f"{answer.refusal.code}: {answer.refusal.message}".startswith(REVIEW_MESSAGE)
    assert answer.http_code == 403


def test_the_reviews_fitting_strategy_is_admitted_without_warnings() -> None:
    answer = review(reconciler([node()]), (NAMESPACE, "pp4"), raw_spec(), pool_known=True)
    assert answer == Review()


def test_insufficient_free_gpus_is_a_wait_admitted_with_a_warning() -> None:
    busy = reconciler([node()], [gpu_pod("someone-else", 4)])
    answer = review(busy, (NAMESPACE, "pp4"), raw_spec(), pool_known=True)
    assert answer.refusal is None
    assert len(answer.warnings) == 1 and answer.warnings[0].startswith("InsufficientFreeGPUs: ")


def test_an_update_counts_the_deployments_own_ranks_as_free() -> None:
    own = [gpu_pod(f"pp4-0-{k}", 1, deployment="pp4") for k in range(8)]
    answer = review(reconciler([node()], own), (NAMESPACE, "pp4"), raw_spec(), pool_known=True)
    assert answer == Review()


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"parallelism": {"pipeline": 4, "tensor": 2, "sequence": 4}}, "InvalidParallelism"),
        ({"gpu": {"memory": "80G", "maxMemoryUtilization": 0.1}}, "MemoryLimitExceeded"),
        ({"placement": {"nodeSelector": {"paraserve.dev/pool": "h100"}}}, "NoMatchingNodes"),
        ({"parallelism": {"pipeline": 1, "tensor": 16}}, "TensorParallelExceedsNode"),
    ],
)
def test_every_planner_error_is_refused(changes: dict[str, Any], code: str) -> None:
    answer = review(reconciler([node()]), (NAMESPACE, "d"), raw_spec(**changes), True)
    assert answer.refusal is not None and answer.refusal.code == code
    assert answer.refusal.message


def test_spec_parse_errors_name_the_field() -> None:
    answer = review(
        reconciler([node()]),
        (NAMESPACE, "typo"),
        raw_spec(parallelism={"pipeline": 4, "tensr": 2}),
        pool_known=True,
    )
    assert answer.refusal is not None and answer.refusal.code == "InvalidSpec"
    assert (
        answer.refusal.message == "spec.parallelism: unknown field 'tensr'; did you mean 'tensor'?"
    )
    assert answer.http_code == 422

    bad_quantity = review(
        reconciler([node()]), (NAMESPACE, "q"), raw_spec(gpu={"memory": "80GiBs"}), True
    )
    assert bad_quantity.refusal is not None
    assert bad_quantity.refusal.message.startswith("spec.gpu.memory: ")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"maxRestarts": -1}, "spec.failurePolicy.maxRestarts: Input should be greater than or"),
        ({"maxRestarts": 101}, "spec.failurePolicy.maxRestarts: Input should be less than or"),
        ({"restartWindow": "0s"}, "spec.failurePolicy.restartWindow: Input should be greater"),
        ({"stallTimeout": "soon"}, "spec.failurePolicy.stallTimeout: 'soon' is not a duration"),
        ({"maxRestart": 3}, "spec.failurePolicy: unknown field 'maxRestart'; did you mean"),
    ],
)
def test_a_bad_failure_policy_is_refused_in_one_line_naming_the_field(
    policy: dict[str, Any], message: str
) -> None:
    answer = review(reconciler([node()]), (NAMESPACE, "p"), raw_spec(failurePolicy=policy), True)
    assert answer.refusal is not None and answer.refusal.code == "InvalidSpec"
    assert answer.refusal.message.startswith(message) and "\n" not in answer.refusal.message
    assert answer.http_code == 422


def test_a_failure_policy_is_admitted_without_warnings() -> None:
    policy = {"maxRestarts": 3, "restartWindow": "30m", "stallTimeout": "5m"}
    answer = review(reconciler([node()]), (NAMESPACE, "p"), raw_spec(failurePolicy=policy), True)
    assert answer.refusal is None and not answer.warnings


def test_a_name_too_long_for_pod_hostnames_is_refused() -> None:
    answer = review(reconciler([node()]), (NAMESPACE, "x" * 60), raw_spec(), pool_known=True)
    assert answer.refusal is not None and answer.refusal.code == "InvalidName"


def test_before_the_pool_is_known_only_spec_errors_are_refused() -> None:
    # An empty index at start is not "no nodes": admit, the reconcile will decide.
    empty = reconciler([])
    waiting = review(empty, (NAMESPACE, "d"), raw_spec(), pool_known=False)
    assert waiting.refusal is None
    assert "NoMatchingNodes not checked yet" in waiting.warnings[0]
    invalid = raw_spec(parallelism={"pipeline": 4, "tensor": 2, "sequence": 4})
    refused = review(empty, (NAMESPACE, "d"), invalid, pool_known=False)
    assert refused.refusal is not None and refused.refusal.code == "InvalidParallelism"


# -- model.architectureFrom: the same index and resolution as the reconcile ---------------------

CONFIGS = Path(__file__).resolve().parents[4] / "examples" / "configs"


def from_config_map(name: str = "llama") -> dict[str, Any]:
    """Llama 3.1 at PP=1 × TP=1 on one 80 GB GPU, its architecture in ConfigMap `name`."""
    source = {"configMapKeyRef": {"name": name}}
    return raw_spec(
        model={"name": "meta-llama/Llama-3.1", "architectureFrom": source},
        parallelism={"pipeline": 1, "tensor": 1},
        serving={"maxBatchSize": 4, "maxSequenceLength": 4096},
        memory={},
    )


def config(name: str) -> dict[str, str]:
    return {"config.json": (CONFIGS / f"{name}.json").read_text()}


def test_an_architecture_from_a_config_map_is_planned_exactly() -> None:
    fits = reconciler([node()], config_maps={"llama": config("llama-3.1-8b")})
    assert review(fits, (NAMESPACE, "llama"), from_config_map(), pool_known=True) == Review()
    judgement = fits.judge((NAMESPACE, "llama"), from_config_map())
    assert judgement.plan is not None and judgement.plan.exact


def test_an_impossible_architecture_from_a_config_map_is_refused_with_the_arithmetic() -> None:
    too_big = reconciler([node()], config_maps={"llama": config("llama-3.1-70b")})
    answer = review(too_big, (NAMESPACE, "llama"), from_config_map(), pool_known=True)
    assert answer.refusal is not None and answer.refusal.code == "MemoryLimitExceeded"
    assert answer.refusal.message == (
        "worst rank (stage 0): 141.11 GB weights + 5.37 GB KV cache + 2.75 GB activations"
        " + 1.07 GB overhead = 150.3 GB; 150.3 GB / 80 GB = 187.9 % > 85 % maxMemoryUtilization"
    )
    assert answer.http_code == 403


def test_a_missing_config_map_is_admitted_with_a_warning() -> None:
    for known in (True, False):
        answer = review(reconciler([node()]), (NAMESPACE, "d"), from_config_map(), known)
        assert answer.refusal is None
        assert answer.warnings == (
            "ConfigMapNotFound: model.architectureFrom: ConfigMap 'llama' not found; it should"
            " hold key 'config.json' (kubectl create configmap llama --from-file=config.json)",
        )


def test_a_bad_config_map_is_refused_even_before_the_pool_is_known() -> None:
    broken = reconciler([], config_maps={"llama": {"config.json": '{"model_type": "llama"'}})
    answer = review(broken, (NAMESPACE, "d"), from_config_map(), pool_known=False)
    assert answer.refusal is not None and answer.refusal.code == "InvalidModelConfig"
    assert answer.refusal.message.startswith(
        "model.architectureFrom: ConfigMap 'llama' key 'config.json': not JSON: "
    )
    assert answer.http_code == 422


def test_only_a_changed_spec_is_checked() -> None:
    body = {"metadata": {"name": "d"}, "spec": raw_spec()}
    relabelled = copy.deepcopy(body)
    relabelled["metadata"]["annotations"] = {"paraserve.dev/gang": "{}"}
    assert spec_changed(None, body)
    assert not spec_changed(body, relabelled)
    rescaled = copy.deepcopy(body)
    rescaled["spec"]["parallelism"]["pipeline"] = 8
    assert spec_changed(body, rescaled)


# -- the kopf handler ---------------------------------------------------------------------


def handler_of(registry: kopf.OperatorRegistry) -> Any:
    (handler,) = [h for h in registry._webhooks.get_all_handlers() if h.id == HANDLER_ID]
    return handler


def registered(pool_known: bool = True) -> Any:
    registry = kopf.OperatorRegistry()
    register(registry, reconciler([node()]), PoolWatch(known=pool_known))
    return handler_of(registry)


def body_of(name: str, spec: dict[str, Any], **metadata: Any) -> kopf.Body:
    return kopf.Body({"metadata": {"name": name, "namespace": NAMESPACE, **metadata}, "spec": spec})


def test_the_handler_is_registered_for_spec_writes_only_and_fails_open() -> None:
    handler = registered()
    assert set(handler.operations) == {"CREATE", "UPDATE"}
    assert handler.subresource is None  # not /status, not /scale
    assert handler.ignore_failures is True
    assert not handler.side_effects


def test_the_handler_refuses_with_the_arithmetic() -> None:
    handler = registered()
    bad = body_of("pp8", raw_spec(parallelism={"pipeline": 8, "tensor": 2, "sequence": 2}))
    with pytest.raises(kopf.AdmissionError) as refused:
        asyncio.run(handler.fn(body=bad, old=None, new=bad, warnings=[]))
    assert str(refused.value).startswith(REVIEW_MESSAGE)
    assert refused.value.code == 403


def test_the_handler_admits_metadata_updates_and_deletions_of_bad_specs() -> None:
    handler = registered()
    bad = raw_spec(parallelism={"pipeline": 8, "tensor": 2, "sequence": 2})
    old = body_of("pp8", bad)
    new = body_of("pp8", bad, annotations={"paraserve.dev/gang": "{}"})
    asyncio.run(handler.fn(body=new, old=old, new=new, warnings=[]))
    deleting = body_of("pp8", bad, deletionTimestamp="2026-01-01T00:00:00Z")
    asyncio.run(handler.fn(body=deleting, old=None, new=deleting, warnings=[]))


def test_the_handler_passes_warnings_to_kubectl() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, reconciler([node()], [gpu_pod("other", 4)]), PoolWatch(known=True))
    good = body_of("pp4", raw_spec())
    warnings: list[str] = []
    asyncio.run(handler_of(registry).fn(body=good, old=None, new=good, warnings=warnings))
    assert warnings and warnings[0].startswith("InsufficientFreeGPUs: ")


def test_the_handler_fails_open_on_its_own_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = kopf.OperatorRegistry()
    broken = reconciler([node()])
    calls: list[object] = []

    def boom(*args: Any) -> None:
        calls.append(args)
        raise RuntimeError("a bug")

    monkeypatch.setattr(broken, "pool_for", boom)
    register(registry, broken, PoolWatch(known=True))
    good = body_of("pp4", raw_spec())
    asyncio.run(handler_of(registry).fn(body=good, old=None, new=good, warnings=[]))
    assert calls, "the check never ran, so nothing failed open"


def test_the_pool_becomes_known_on_the_first_node_event() -> None:
    registry = kopf.OperatorRegistry()
    watch = PoolWatch()
    register(registry, reconciler([]), watch)
    (event,) = [h for h in registry._watching.get_all_handlers() if h.id == "webhook-pool-known"]
    asyncio.run(event.fn())
    assert watch.known


def test_every_answer_is_counted_in_the_operators_metrics() -> None:
    registry = kopf.OperatorRegistry()
    owner = reconciler([node()])
    register(registry, owner, PoolWatch(known=True))
    handler = handler_of(registry)
    bad = body_of("pp8", raw_spec(parallelism={"pipeline": 8, "tensor": 2, "sequence": 2}))
    good = body_of("pp4", raw_spec())
    with pytest.raises(kopf.AdmissionError):
        asyncio.run(handler.fn(body=bad, old=None, new=bad, warnings=[]))
    asyncio.run(handler.fn(body=good, old=None, new=good, warnings=[]))
    asyncio.run(handler.fn(body=good, old=good, new=good, warnings=[]))

    def count(result: str, code: str = "") -> float | None:
        return owner.metrics.registry.get_sample_value(
            "paraserve_operator_admission_reviews_total", {"result": result, "code": code}
        )

    assert count("refused", "InsufficientGPUs") == 1
    assert count("admitted") == 1 and count("unchanged") == 1
