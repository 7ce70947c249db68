"""Every rule and code of the planner, in its order, with messages that show the arithmetic."""

from __future__ import annotations

from typing import Any

import pytest
from tests.builders import LLAMA_2_70B, exact_spec, node, pod, pool_of, spec

from paraserve.api import InferenceDeploymentSpec, Parallelism, Plan
from paraserve.planner import codes, plan


def verdict(
    target: InferenceDeploymentSpec,
    nodes: list[dict[str, Any]] | None = None,
    pods: list[dict[str, Any]] | None = None,
) -> Plan:
    return plan(target, pool_of(target, nodes, pods))


def error_codes(result: Plan) -> list[str]:
    return [e.code for e in result.errors]


def messages(result: Plan, code: str) -> list[str]:
    return [f.message for f in (*result.errors, *result.warnings) if f.code == code]


# --- InvalidParallelism -----------------------------------------------------------------


@pytest.mark.parametrize("degree", ["pipeline", "tensor", "sequence"])
def test_every_degree_is_at_least_one(degree: str) -> None:
    # The models reject a zero degree; the planner still guards specs built without validation.
    degrees = {"pipeline": 4, "tensor": 2, "sequence": 1, degree: 0}
    target = spec().model_copy(update={"parallelism": Parallelism.model_construct(None, **degrees)})
    result = verdict(target)
    assert not result.feasible
    assert messages(result, codes.INVALID_PARALLELISM) == [f"{degree} must be ≥ 1, got 0"]
    assert result.stages == []


@pytest.mark.parametrize("sequence", [3, 4])
def test_sequence_is_one_or_tensor(sequence: int) -> None:
    result = verdict(spec(parallelism={"sequence": sequence}))
    assert error_codes(result) == [codes.INVALID_PARALLELISM]
    assert messages(result, codes.INVALID_PARALLELISM) == [
        f"SP={sequence} must be 1 or equal to TP=2: sequence parallelism shards activations"
        " inside the tensor-parallel group"
    ]


def test_sequence_parallelism_adds_no_gpus() -> None:
    with_sp = verdict(spec(parallelism={"sequence": 2}))
    without = verdict(spec(parallelism={"sequence": 1}))
    assert with_sp.gpus_required == without.gpus_required == 8
    assert with_sp.world_size == 8


def test_attention_heads_divisible_by_tensor() -> None:
    target = spec(
        model={"architecture": {"numAttentionHeads": 64, "numKeyValueHeads": 1}},
        parallelism={"pipeline": 1, "tensor": 3, "sequence": 1},
    )
    result = verdict(target)
    assert error_codes(result) == [codes.INVALID_PARALLELISM]
    assert messages(result, codes.INVALID_PARALLELISM) == [
        "numAttentionHeads=64 is not divisible by TP=3 (64 = 21 × 3 + 1)"
    ]


def test_kv_heads_divisible_or_dividing_tensor() -> None:
    bad = spec(
        model={"architecture": {"numAttentionHeads": 48, "numKeyValueHeads": 8}},
        parallelism={"pipeline": 1, "tensor": 6, "sequence": 1},
        placement={"tensorParallelWithinNode": False},
    )
    assert messages(verdict(bad), codes.INVALID_PARALLELISM) == [
        "numKeyValueHeads=8 and TP=6: neither divides the other (8 mod 6 = 2, 6 mod 8 = 6)"
    ]
    replicated = spec(
        model={"architecture": {"numAttentionHeads": 64, "numKeyValueHeads": 4}},
        parallelism={"pipeline": 1, "tensor": 8, "sequence": 1},
    )
    result = verdict(replicated)
    assert result.feasible
    assert any("each rank keeps one replicated KV head" in c.message for c in result.checks)


def test_pipeline_at_most_layers() -> None:
    result = verdict(
        spec(
            model={"architecture": {"numLayers": 2}},
            parallelism={"pipeline": 4, "tensor": 1, "sequence": 1},
        )
    )
    assert messages(result, codes.INVALID_PARALLELISM) == [
        "PP=4 > numLayers=2: 2 stages would hold no layer"
    ]


def test_without_counts_the_shape_checks_are_skipped() -> None:
    target = spec(model={"architecture": None}, parallelism={"tensor": 3, "sequence": 1})
    result = verdict(target, [node("n", 16)])
    skipped = [c.message for c in result.checks if c.outcome == "skipped"]
    assert "numAttentionHeads unknown: not checked" in skipped
    assert "numLayers unknown: stages have no layer ranges" in skipped
    assert result.stages[0].layers is None


# --- pool checks ------------------------------------------------------------------------


def test_no_matching_nodes() -> None:
    target = spec()
    result = verdict(
        target, [node("h", pool="h100"), node("c", unschedulable=True), node("cpu", gpus=None)]
    )
    assert error_codes(result) == [codes.NO_MATCHING_NODES]
    assert messages(result, codes.NO_MATCHING_NODES) == [
        'pool "a100-80g" is empty (3 nodes seen: 1 not matching nodeSelector, 1 cordoned,'
        " 1 without allocatable nvidia.com/gpu)"
    ]
    assert result.gpus_in_pool == 0 and not result.schedulable_now


def test_tensor_parallel_exceeds_node() -> None:
    target = spec(parallelism={"pipeline": 1, "tensor": 16, "sequence": 1})
    result = verdict(target, [node("a"), node("b")])
    assert error_codes(result) == [codes.TENSOR_PARALLEL_EXCEEDS_NODE]
    assert messages(result, codes.TENSOR_PARALLEL_EXCEEDS_NODE) == [
        'TP=16 > 8 allocatable GPUs on the largest node of pool "a100-80g": with'
        " tensorParallelWithinNode a TP group must fit on one node"
    ]
    across = target.model_copy(
        update={
            "placement": target.placement.model_copy(update={"tensor_parallel_within_node": False})
        }
    )
    assert verdict(across, [node("a"), node("b")]).feasible


def test_insufficient_gpus_is_the_reviews_rejection() -> None:
    result = verdict(spec(parallelism={"pipeline": 8, "tensor": 2, "sequence": 2}))
    assert error_codes(result) == [codes.INSUFFICIENT_GPUS]
    (message,) = messages(result, codes.INSUFFICIENT_GPUS)
    assert message.startswith(
        'PP=8 × TP=2 = 16 GPUs required; pool "a100-80g" has 8 allocatable (1 node × 8)'
    )


def test_insufficient_gpus_counts_tp_groups_within_nodes() -> None:
    # 9 GPUs ≥ 8 required, but three 3-GPU nodes hold only ⌊3/2⌋ × 3 = 3 groups of 2 < 4.
    target = spec()
    nodes = [node(f"n{i}", 3) for i in range(3)]
    result = verdict(target, nodes)
    assert error_codes(result) == [codes.INSUFFICIENT_GPUS]
    assert (
        "which hold 3 TP groups of 2 within nodes (Σ⌊GPUs/2⌋ = 3); 4 needed"
        in result.errors[0].message
    )
    spread = target.model_copy(
        update={
            "placement": target.placement.model_copy(update={"tensor_parallel_within_node": False})
        }
    )
    assert verdict(spread, nodes).feasible


def test_replicas_multiply_gpus() -> None:
    result = verdict(spec(replicas=2))
    assert result.gpus_required == 16
    assert result.errors[0].message.startswith("2 replicas × PP=4 × TP=2 = 16 GPUs required")
    assert verdict(spec(replicas=2), [node("a"), node("b")]).feasible


def test_memory_limit_exceeded() -> None:
    target = spec(parallelism={"pipeline": 1, "tensor": 1, "sequence": 1})
    result = verdict(target)
    assert error_codes(result) == [codes.MEMORY_LIMIT_EXCEEDED]
    assert messages(result, codes.MEMORY_LIMIT_EXCEEDED) == [
        "worst rank (stage 0): 140 GB weights + 16.75 GB overhead = 156.75 GB;"
        " 156.75 GB / 80 GB = 195.9 % > 85 % maxMemoryUtilization"
    ]


def test_memory_limit_is_the_configured_fraction() -> None:
    assert verdict(spec(gpu={"maxMemoryUtilization": 0.4})).has(codes.MEMORY_LIMIT_EXCEEDED)
    assert verdict(spec(gpu={"maxMemoryUtilization": 0.43})).feasible


def test_gpu_memory_defaults_to_the_smallest_node_label() -> None:
    target = spec(gpu={"memory": None})
    result = verdict(target, [node("a", 4, memory_mib=81920), node("b", 4, memory_mib=40960)])
    assert result.memory.gpu_memory_bytes == 40960 * 2**20
    assert result.feasible  # 34.25 GB / 42.95 GB = 79.7 % ≤ 85 %
    assert result.memory.utilization == pytest.approx(34.25e9 / (40960 * 2**20))


def test_unknown_gpu_memory_is_a_warning() -> None:
    target = spec(gpu={"memory": None})
    result = verdict(target, [node(memory_mib=None)])
    assert result.feasible and result.schedulable_now
    assert [w.code for w in result.warnings] == [codes.UNKNOWN_GPU_MEMORY]
    assert result.memory.utilization is None and result.memory.gpu_memory_bytes is None
    assert "memory check skipped; the worst rank needs 34.25 GB" in result.warnings[0].message


def test_insufficient_free_gpus_is_a_wait_not_a_rejection() -> None:
    result = verdict(spec(), pods=[pod("gpu-node-0", 2), pod("gpu-node-0", 1, name="b")])
    assert result.feasible and not result.schedulable_now
    assert result.gpus_free == 5
    assert [w.code for w in result.warnings] == [codes.INSUFFICIENT_FREE_GPUS]
    assert result.warnings[0].message.startswith(
        'PP=4 × TP=2 = 8 GPUs required; pool "a100-80g" has 5 free of 8 allocatable (1 node × 5)'
    )
    assert result.warnings[0].message.endswith("waiting for GPUs to be freed")


def test_free_gpus_are_not_checked_when_infeasible() -> None:
    result = verdict(spec(parallelism={"pipeline": 8}), pods=[pod("gpu-node-0", 8)])
    assert [w.code for w in result.warnings] == []
    assert not result.schedulable_now


def test_errors_come_in_design_order() -> None:
    target = spec(
        model={"architecture": {"numAttentionHeads": 64, "numKeyValueHeads": 1}},
        parallelism={"pipeline": 1, "tensor": 3, "sequence": 2},
        gpu={"maxMemoryUtilization": 0.1},
    )
    result = verdict(target, [node("n", 2)])
    assert error_codes(result) == [
        codes.INVALID_PARALLELISM,
        codes.INVALID_PARALLELISM,
        codes.TENSOR_PARALLEL_EXCEEDS_NODE,
        codes.MEMORY_LIMIT_EXCEEDED,
    ]
    assert [c.code for c in result.checks] == [
        *[codes.INVALID_PARALLELISM] * 5,
        codes.NO_MATCHING_NODES,
        codes.TENSOR_PARALLEL_EXCEEDS_NODE,
        codes.INSUFFICIENT_GPUS,
        codes.MEMORY_LIMIT_EXCEEDED,
        codes.INSUFFICIENT_FREE_GPUS,
    ]


def test_json_has_exactly_the_design_keys() -> None:
    document = verdict(spec()).to_json()
    assert list(document) == [
        "feasible", "schedulableNow", "worldSize", "gpusRequired", "gpusInPool", "gpusFree",
        "errors", "warnings", "stages", "memory",
    ]  # fmt: skip
    assert list(document["memory"]) == [
        "weightsBytes", "kvCacheBytes", "activationsBytes", "overheadBytes", "totalBytes",
        "gpuMemoryBytes", "utilization", "limit", "weightsByPart",
    ]  # fmt: skip
    # Added for the per-part breakdown: null in coarse mode, the parts in exact mode.
    assert document["memory"]["weightsByPart"] is None
    by_part = verdict(exact_spec()).to_json()["memory"]["weightsByPart"]
    assert list(by_part) == [
        "attentionBytes", "denseMlpBytes", "routedExpertsBytes", "sharedExpertsBytes",
        "embeddingsBytes", "normsBytes", "multiTokenPredictionBytes",
    ]  # fmt: skip
    assert document["stages"][1] == {"index": 1, "layers": [20, 40], "ranks": [2, 3]}


# --- memory model -----------------------------------------------------------------------


def llama_stage_params(
    layers: int, tp: int, *, first: bool, last: bool, tied: bool = False, pp: int = 4
) -> int:
    h, a, kv, d, i, v = 8192, 64, 8, 128, 28672, 32000
    per_layer = h * (a // tp) * d + 2 * h * max(kv // tp, 1) * d + (a // tp) * d * h
    per_layer += 3 * h * (i // tp) + 2 * h
    params = layers * per_layer
    if first:
        params += v * h // tp
    if last:
        params += (0 if tied and pp == 1 else v * h // tp) + h
    return params


def test_exact_weights_follow_the_design_formula() -> None:
    result = verdict(exact_spec())
    first, middle, last = result.stage_memory[0], result.stage_memory[1], result.stage_memory[3]
    assert first.weights_bytes == 2 * llama_stage_params(20, 2, first=True, last=False)
    assert middle.weights_bytes == 2 * llama_stage_params(20, 2, first=False, last=False)
    assert last.weights_bytes == 2 * llama_stage_params(20, 2, first=False, last=True)
    # The last stage also holds the logits, so it is the worst rank here.
    assert result.worst_stage == 3 and result.memory == last
    assert result.exact


def test_exact_kv_cache_follows_the_design_formula() -> None:
    result = verdict(exact_spec())
    # 2 · layers · kv heads per rank · d · bytes · batch · sequence length
    assert result.stage_memory[0].kv_cache_bytes == 2 * 20 * 4 * 128 * 2 * 16 * 4096


def test_kv_heads_are_replicated_when_tensor_exceeds_them() -> None:
    arch = {**LLAMA_2_70B, "numKeyValueHeads": 4}
    result = verdict(
        exact_spec(
            model={"architecture": arch}, parallelism={"pipeline": 1, "tensor": 8, "sequence": 1}
        )
    )
    assert result.memory.kv_cache_bytes == 2 * 80 * 1 * 128 * 2 * 16 * 4096


def test_tied_embeddings_save_the_head_only_without_pipeline() -> None:
    tied = {**LLAMA_2_70B, "tieWordEmbeddings": True}
    one_stage = {"pipeline": 1, "tensor": 8, "sequence": 1}
    untied_1 = verdict(exact_spec(parallelism=one_stage)).memory.weights_bytes
    tied_1 = verdict(
        exact_spec(model={"architecture": tied}, parallelism=one_stage)
    ).memory.weights_bytes
    assert untied_1 - tied_1 == 2 * 32000 * 8192 // 8
    assert verdict(exact_spec(model={"architecture": tied})).memory == verdict(exact_spec()).memory


def test_sequence_parallelism_divides_activations() -> None:
    with_sp = verdict(exact_spec()).stage_memory[0].activations_bytes
    without = verdict(exact_spec(parallelism={"sequence": 1})).stage_memory[0].activations_bytes
    assert without == 2 * with_sp


def test_kv_cache_dtype_and_int4_weights() -> None:
    int4 = verdict(exact_spec(model={"dtype": "int4", "kvCacheDtype": "float8"}))
    f16 = verdict(exact_spec())
    assert int4.stage_memory[1].weights_bytes * 4 == f16.stage_memory[1].weights_bytes
    assert int4.memory.kv_cache_bytes * 2 == f16.memory.kv_cache_bytes


def test_coarse_mode_has_no_kv_cache_or_activations() -> None:
    memory = verdict(spec()).memory
    assert (memory.kv_cache_bytes, memory.activations_bytes) == (0, 0)
    assert memory.weights_bytes == 70_000_000_000 * 2 // 8


def test_a_world_size_beyond_any_cluster_is_refused_and_planned_no_further() -> None:
    result = verdict(spec(parallelism={"pipeline": 1024, "tensor": 1024, "sequence": 1}))
    assert result.errors[0].code == codes.INVALID_PARALLELISM
    assert result.errors[0].message == (
        "PP=1024 × TP=1024 = 1048576 ranks per replica; at most 16384"
        " (beyond any real cluster's gang)"
    )
    assert result.stages == [] and not result.feasible
