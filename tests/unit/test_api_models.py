"""The InferenceDeployment models: camelCase wire format, defaults, unknown fields, modes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from tests.builders import LLAMA_2_70B, pool_of, spec

from paraserve.api import (
    API_VERSION,
    KIND,
    Architecture,
    Condition,
    Dtype,
    InferenceDeployment,
    InferenceDeploymentSpec,
    InferenceDeploymentStatus,
    MeasuredStatus,
    Phase,
    PlanStatus,
    RanksStatus,
    describe_validation_error,
    memory_column,
)
from paraserve.planner import plan


def validation_message(document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        InferenceDeploymentSpec.model_validate(document)
    return describe_validation_error(caught.value, "spec")


MINIMAL = {"model": {"name": "m", "parameters": "7B"}}


def test_defaults_follow_design() -> None:
    s = InferenceDeploymentSpec.model_validate(MINIMAL)
    assert (s.parallelism.pipeline, s.parallelism.tensor, s.parallelism.sequence) == (1, 1, 1)
    assert s.replicas == 1
    assert s.gpu.resource_name == "nvidia.com/gpu"
    assert s.gpu.memory is None
    assert s.gpu.max_memory_utilization == 0.85
    assert s.memory.overhead_per_gpu == 2**30
    assert s.placement.tensor_parallel_within_node is True
    assert s.metrics.port == 9400 and s.metrics.path == "/metrics"
    assert s.metrics.profile.value == "paraserve"
    assert s.model.kv_dtype is s.model.dtype


def test_camel_case_on_the_wire_and_snake_case_in_python() -> None:
    s = spec(slo={"prefillP99": "1s", "decodeP99PerToken": "100ms", "minThroughputRPS": 8})
    wire = s.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["memory"] == {"overheadPerGpu": 16_750_000_000}
    assert wire["slo"] == {"prefillP99": 1.0, "decodeP99PerToken": 0.1, "minThroughputRPS": 8.0}
    assert wire["placement"]["tensorParallelWithinNode"] is True
    # populate_by_name: Python names work too, and the round trip is stable.
    again = InferenceDeploymentSpec.model_validate(wire)
    assert again == s
    assert InferenceDeploymentSpec(model={"name": "m", "parameters": 7}).model.parameters == 7


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            {**MINIMAL, "paralelism": {"pipeline": 2}},
            "spec: unknown field 'paralelism'; did you mean 'parallelism'?",
        ),
        (
            {**MINIMAL, "parallelism": {"tensorr": 2}},
            "spec.parallelism: unknown field 'tensorr'; did you mean 'tensor'?",
        ),
        (
            {"model": {"name": "m", "parameters": "7B", "kvCacheDType": "int8"}},
            "spec.model: unknown field 'kvCacheDType'; did you mean 'kvCacheDtype'?",
        ),
        (
            {**MINIMAL, "gpu": {"maxMemoryUtilisation": 0.9}},
            "spec.gpu: unknown field 'maxMemoryUtilisation'; did you mean 'maxMemoryUtilization'?",
        ),
    ],
)
def test_unknown_fields_are_named_with_the_close_one(
    document: dict[str, Any], expected: str
) -> None:
    assert validation_message(document) == expected


def test_unknown_field_without_a_close_one_lists_the_known() -> None:
    message = validation_message({**MINIMAL, "zzz": 1})
    assert message.startswith("spec: unknown field 'zzz'; known fields: model, parallelism")


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({**MINIMAL, "parallelism": {"tensor": 0}}, "spec.parallelism.tensor: Input should be"),
        ({**MINIMAL, "parallelism": {"pipeline": "four"}}, "spec.parallelism.pipeline:"),
        ({**MINIMAL, "replicas": -1}, "spec.replicas:"),
        (
            {**MINIMAL, "parallelism": {"pipeline": 10**12}},
            "spec.parallelism.pipeline: Input should be less than or equal to 1024",
        ),
        ({**MINIMAL, "gpu": {"memory": "80GB"}}, "write 80G (decimal) or 80Gi (binary)"),
        ({**MINIMAL, "gpu": {"maxMemoryUtilization": 1.5}}, "spec.gpu.maxMemoryUtilization:"),
        ({"model": {"name": "m", "parameters": "7X"}}, "spec.model.parameters: '7X'"),
        ({"model": {"name": "m", "parameters": "7B", "dtype": "fp16"}}, "spec.model.dtype:"),
        ({**MINIMAL, "slo": {"prefillP99": "soon"}}, "spec.slo.prefillP99: 'soon' is not a dur"),
        ({**MINIMAL, "metrics": {"port": 70000}}, "spec.metrics.port:"),
    ],
)
def test_wrong_types_and_ranges_name_the_field(document: dict[str, Any], fragment: str) -> None:
    assert fragment in validation_message(document)


def test_coarse_mode_needs_parameters_unless_architecture_is_complete() -> None:
    message = validation_message({"model": {"name": "m", "architecture": {"numLayers": 80}}})
    assert "give model.parameters (coarse mode) or a complete model.architecture" in message
    exact = InferenceDeploymentSpec.model_validate(
        {"model": {"name": "m", "architecture": LLAMA_2_70B}}
    )
    assert exact.model.exact and exact.model.parameters is None


def test_architecture_helpers() -> None:
    partial = Architecture(num_layers=80, num_attention_heads=64)
    assert not partial.is_complete
    assert partial.kv_heads == 64
    assert partial.effective_head_dim is None
    full = Architecture.model_validate({k: v for k, v in LLAMA_2_70B.items() if k != "headDim"})
    assert full.is_complete
    assert full.kv_heads == 8
    assert full.effective_head_dim == 8192 // 64


def test_every_dtype_is_accepted() -> None:
    for dtype in Dtype:
        s = spec(model={"dtype": dtype.value, "kvCacheDtype": "int8"})
        assert s.model.dtype is dtype and s.model.kv_dtype is Dtype.INT8


def test_toleration_matching_follows_kubernetes() -> None:
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    placement = spec(
        placement={
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists"},
                {"key": "dedicated", "value": "llm", "effect": "NoExecute"},
                {"operator": "Exists", "effect": "NoExecute"},
            ]
        }
    ).placement
    exists, equal, everything_no_execute = placement.tolerations
    assert exists.tolerates(taint)
    assert not equal.tolerates(taint)
    assert equal.tolerates({"key": "dedicated", "value": "llm", "effect": "NoExecute"})
    assert not equal.tolerates({"key": "dedicated", "value": "other", "effect": "NoExecute"})
    assert everything_no_execute.tolerates({"key": "x", "effect": "NoExecute"})
    assert not everything_no_execute.tolerates({"key": "x", "effect": "NoSchedule"})


def test_top_level_object_checks_api_version_and_kind() -> None:
    document = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "x"}, "spec": MINIMAL}
    deployment = InferenceDeployment.model_validate(document)
    assert deployment.name == "x"
    for key, value in (("apiVersion", "v1"), ("kind", "Deployment")):
        with pytest.raises(ValidationError):
            InferenceDeployment.model_validate({**document, key: value})


def test_status_serialises_camel_case_without_nulls() -> None:
    verdict = plan(spec(), pool_of(spec()))
    status = InferenceDeploymentStatus(
        observed_generation=3,
        phase=Phase.READY,
        conditions=[Condition(type="Validated", status="True", reason="Planned")],
        world_size=8,
        gpus_required=8,
        gpus_free=0,
        replicas=1,
        selector="paraserve.dev/deployment=x",
        plan=PlanStatus.from_plan(verdict),
        ranks=RanksStatus.of(8, 8),
        measured=MeasuredStatus(max_memory_bytes_per_gpu=33_000_000_000, ranks_scraped=8),
        memory=memory_column(33_000_000_000, 80_000_000_000, estimated=False),
    )
    wire = status.to_wire()
    assert wire["observedGeneration"] == 3
    assert wire["phase"] == "Ready"
    assert wire["ranks"] == {"ready": 8, "total": 8, "summary": "8/8"}
    assert wire["plan"]["stages"][0] == {
        "index": 0,
        "layers": [0, 20],
        "firstRank": 0,
        "lastRank": 1,
    }
    assert wire["plan"]["memory"]["totalBytes"] == 34_250_000_000
    assert wire["plan"]["mode"] == "coarse"
    assert wire["measured"] == {
        "maxMemoryBytesPerGpu": 33_000_000_000,
        "ranksScraped": 8,
        "ranksUnreachable": 0,
    }
    assert wire["memory"] == "33 GB/80 GB (41.2%)"
    assert InferenceDeploymentStatus.model_validate(wire).to_wire() == wire


def test_memory_column_marks_estimates() -> None:
    assert memory_column(34_250_000_000, 80_000_000_000, estimated=True) == (
        "~34.25 GB/80 GB (42.8%)"
    )
    assert memory_column(34_250_000_000, None, estimated=True) == "~34.25 GB"
