"""Property-based tests: on thousands of random specs and pools the planner keeps its promises."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests.builders import POOL_LABEL

from paraserve.api import Dtype, InferenceDeployment, InferenceDeploymentSpec, Parallelism
from paraserve.api.rank_layout import expert_ranges, ranks
from paraserve.planner import Pool, codes, plan, suggest
from paraserve.planner.memory import StageMemories
from paraserve.planner.report import render
from paraserve.planner.suggest import candidates
from paraserve.planner.weights import stage_weights

# Thousands of examples in all, within a few seconds each on a shared two-core machine.
MANY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def architectures(draw: st.DrawFn, complete: bool) -> dict[str, Any]:
    heads = draw(st.integers(1, 64))
    head_dim = draw(st.sampled_from([32, 64, 128]))
    arch: dict[str, Any] = {
        "numLayers": draw(st.integers(1, 96)),
        "numAttentionHeads": heads,
        "numKeyValueHeads": draw(st.integers(1, heads)),
    }
    if complete:
        arch |= {
            "hiddenSize": heads * head_dim,
            "headDim": head_dim,
            "intermediateSize": draw(st.integers(1, 60_000)),
            "vocabSize": draw(st.integers(1, 200_000)),
            "tieWordEmbeddings": draw(st.booleans()),
        }
    else:
        # A coarse spec may give any subset of the shape.
        arch = {k: v for k, v in arch.items() if draw(st.booleans())}
    return arch


@st.composite
def specs(draw: st.DrawFn, exact: bool | None = None) -> InferenceDeploymentSpec:
    exact = draw(st.booleans()) if exact is None else exact
    tensor = draw(st.integers(1, 10))
    model: dict[str, Any] = {
        "name": "m",
        "dtype": draw(
            st.sampled_from(["float32", "bfloat16", "float16", "float8", "int8", "int4"])
        ),
        "architecture": draw(architectures(complete=exact)),
    }
    if not exact:
        model["parameters"] = draw(st.integers(1, 500 * 10**9))
    document = {
        "model": model,
        "parallelism": {
            "pipeline": draw(st.integers(1, 12)),
            "tensor": tensor,
            "sequence": draw(st.sampled_from([1, tensor, draw(st.integers(1, 10))])),
        },
        "replicas": draw(st.integers(0, 3)),
        "serving": {
            "maxBatchSize": draw(st.integers(1, 64)),
            "maxSequenceLength": draw(st.integers(1, 32_768)),
        },
        "gpu": {
            "memory": draw(st.none() | st.integers(1, 200 * 10**9)),
            "maxMemoryUtilization": draw(st.floats(0.01, 1.0)),
        },
        "memory": {"overheadPerGpu": draw(st.integers(0, 20 * 10**9))},
        "placement": {
            "nodeSelector": draw(st.sampled_from([{}, {POOL_LABEL: "a"}])),
            "tolerations": draw(st.sampled_from([[], [{"key": "gpu", "operator": "Exists"}]])),
            "tensorParallelWithinNode": draw(st.booleans()),
        },
    }
    return InferenceDeploymentSpec.model_validate(document)


@st.composite
def cluster_objects(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nodes = []
    for index in range(draw(st.integers(0, 6))):
        gpus = draw(st.none() | st.integers(0, 16))
        labels = {"nvidia.com/gpu.memory": str(draw(st.integers(1, 200_000)))}
        if draw(st.booleans()):
            labels[POOL_LABEL] = draw(st.sampled_from(["a", "b"]))
        nodes.append(
            {
                "kind": "Node",
                "metadata": {"name": f"n{index}", "labels": labels},
                "spec": {
                    "unschedulable": draw(st.booleans()) and draw(st.booleans()),
                    "taints": draw(st.sampled_from([[], [{"key": "gpu", "effect": "NoSchedule"}]])),
                },
                "status": {"allocatable": {} if gpus is None else {"nvidia.com/gpu": str(gpus)}},
            }
        )
    pods = [
        {
            "kind": "Pod",
            "spec": {
                "nodeName": f"n{draw(st.integers(0, 6))}",
                "containers": [
                    {"resources": {"requests": {"nvidia.com/gpu": draw(st.integers(0, 8))}}}
                ],
            },
            "status": {"phase": draw(st.sampled_from(["Running", "Pending", "Succeeded"]))},
        }
        for _ in range(draw(st.integers(0, 6)))
    ]
    return nodes, pods


@MANY
@given(target=specs(), objects=cluster_objects())
def test_planner_never_raises_and_counts_gpus(
    target: InferenceDeploymentSpec, objects: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    pool = Pool.from_objects(*objects, target)
    result = plan(target, pool)
    p = target.parallelism
    assert result.gpus_required == target.replicas * p.pipeline * p.tensor
    assert result.world_size == p.pipeline * p.tensor
    assert result.feasible == (result.errors == [])
    assert not result.schedulable_now or result.feasible
    assert 0 <= result.gpus_free <= result.gpus_in_pool
    document = json.loads(json.dumps(result.to_json()))
    assert document["gpusRequired"] == result.gpus_required
    memory = result.memory
    assert memory.total_bytes == (
        memory.weights_bytes
        + memory.kv_cache_bytes
        + memory.activations_bytes
        + memory.overhead_bytes
    )
    if result.has("MemoryLimitExceeded"):
        assert memory.utilization is not None and memory.utilization > memory.limit


@FAST
@given(target=specs())
def test_stage_layers_partition_the_model(target: InferenceDeploymentSpec) -> None:
    result = plan(target, Pool(name="none", nodes=()))
    p = target.parallelism
    ranks = [rank for stage in result.stages for rank in stage.ranks]
    assert ranks == list(range(p.pipeline * p.tensor))
    arch = target.model.architecture
    if arch is None or arch.num_layers is None:
        assert all(stage.layers is None for stage in result.stages)
        return
    layers = [stage.layers for stage in result.stages]
    assert layers[0] is not None and layers[0][0] == 0
    assert layers[-1] is not None and layers[-1][1] == arch.num_layers
    for before, after in itertools.pairwise(layers):
        assert before is not None and after is not None and before[1] == after[0]
    sizes = [stage[1] - stage[0] for stage in layers if stage is not None]
    assert max(sizes) - min(sizes) <= 1
    if p.pipeline <= arch.num_layers:
        assert min(sizes) >= 1


@FAST
@given(
    target=specs(exact=True),
    more_batch=st.integers(0, 64),
    more_sequence=st.integers(0, 32_768),
)
def test_memory_grows_with_batch_and_sequence_length(
    target: InferenceDeploymentSpec, more_batch: int, more_sequence: int
) -> None:
    pool = Pool(name="none", nodes=())
    bigger = target.model_copy(
        update={
            "serving": target.serving.model_copy(
                update={
                    "max_batch_size": target.serving.max_batch_size + more_batch,
                    "max_sequence_length": target.serving.max_sequence_length + more_sequence,
                }
            )
        }
    )
    small, large = plan(target, pool), plan(bigger, pool)
    for before, after in zip(small.stage_memory, large.stage_memory, strict=True):
        assert after.kv_cache_bytes >= before.kv_cache_bytes
        assert after.activations_bytes >= before.activations_bytes
        assert after.weights_bytes == before.weights_bytes
        assert after.total_bytes >= before.total_bytes
    if more_batch or more_sequence:
        assert large.memory.total_bytes > small.memory.total_bytes


@SLOW
@given(target=specs(), objects=cluster_objects())
def test_suggestions_all_pass_every_check(
    target: InferenceDeploymentSpec, objects: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    pool = Pool.from_objects(*objects, target)
    options = suggest(target, pool)
    for option in options:
        assert option.gpus_required == max(target.replicas, 0) * option.pipeline * option.tensor
        assert option.sequence in (1, option.tensor)
    ranking = [(o.gpus_required, o.total_bytes) for o in options]
    assert ranking == sorted(ranking)
    deployment = InferenceDeployment(metadata={"name": "x"}, spec=target)
    assert render(deployment, plan(target, pool)).endswith("\n")


# --- mixture of experts, expert parallelism, MLA, mixed formats ------------------------------


@st.composite
def moe_architectures(draw: st.DrawFn) -> dict[str, Any]:
    heads = draw(st.sampled_from([4, 8, 16, 32, 64]))
    head_dim = draw(st.sampled_from([32, 64, 128]))
    layers = draw(st.integers(1, 64))
    routed = draw(st.integers(1, 64))
    arch: dict[str, Any] = {
        "numLayers": layers,
        "hiddenSize": heads * head_dim,
        "numAttentionHeads": heads,
        "numKeyValueHeads": draw(st.sampled_from([h for h in (1, 2, 4, 8) if heads % h == 0])),
        "headDim": head_dim,
        "intermediateSize": draw(st.integers(1, 30_000)),
        "vocabSize": draw(st.integers(1, 200_000)),
        "tieWordEmbeddings": draw(st.booleans()),
        "experts": {
            "routed": routed,
            "perToken": draw(st.integers(1, routed)),
            "intermediateSize": draw(st.sampled_from([128, 256, 768, 1408, 2048, 2880])),
            "shared": draw(st.integers(0, 2)),
            "denseLayers": sorted(draw(st.sets(st.integers(0, layers - 1), max_size=3))),
            "routerBias": draw(st.booleans()),
            "expertBias": draw(st.booleans()),
        },
        "mtpLayers": draw(st.integers(0, 1)),
    }
    if draw(st.booleans()):
        arch["latentAttention"] = {
            "qLoraRank": draw(st.none() | st.sampled_from([256, 1536])),
            "kvLoraRank": draw(st.sampled_from([128, 512])),
            "qkNopeHeadDim": 128,
            "qkRopeHeadDim": 64,
            "vHeadDim": 128,
        }
    quantization = draw(st.sampled_from(["none", "fp8", "fp8-block", "mxfp4"]))
    if quantization == "mxfp4":
        arch["quantization"] = {"method": "mxfp4", "parts": ["routedExperts"]}
    elif quantization != "none":
        parts = draw(
            st.lists(
                st.sampled_from(["attention", "denseMlp", "routedExperts", "sharedExperts"]),
                min_size=1,
                unique=True,
            )
        )
        arch["quantization"] = {"method": "fp8", "parts": parts}
        if quantization == "fp8-block":
            arch["quantization"]["blockSize"] = [128, 128]
    return arch


@st.composite
def moe_specs(draw: st.DrawFn) -> InferenceDeploymentSpec:
    tensor = draw(st.sampled_from([1, 2, 4, 8, 16]))
    divisors = [d for d in range(1, tensor + 1) if tensor % d == 0]
    expert = draw(st.sampled_from(divisors) | st.integers(1, 16))
    document = {
        "model": {
            "name": "moe",
            "dtype": draw(st.sampled_from(["bfloat16", "float16", "float8", "int4"])),
            "architecture": draw(moe_architectures()),
        },
        "parallelism": {
            "pipeline": draw(st.integers(1, 8)),
            "tensor": tensor,
            "sequence": draw(st.sampled_from([1, tensor])),
            "expert": expert,
        },
        "replicas": draw(st.integers(0, 3)),
        "serving": {
            "maxBatchSize": draw(st.integers(1, 64)),
            "maxSequenceLength": draw(st.integers(1, 32_768)),
            "multiTokenPrediction": draw(st.booleans()),
        },
        "gpu": {"memory": draw(st.none() | st.integers(1, 200 * 10**9))},
        "placement": {
            "nodeSelector": draw(st.sampled_from([{}, {POOL_LABEL: "a"}])),
            "tensorParallelWithinNode": draw(st.booleans()),
        },
    }
    return InferenceDeploymentSpec.model_validate(document)


def _ep_failed(result: Any) -> bool:
    return any(e.code == codes.INVALID_EXPERT_PARALLELISM for e in result.errors)


@MANY
@given(target=moe_specs(), objects=cluster_objects())
def test_moe_planner_never_raises_and_ep_adds_no_gpus(
    target: InferenceDeploymentSpec, objects: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    pool = Pool.from_objects(*objects, target)
    result = plan(target, pool)
    p = target.parallelism
    # EP shards experts inside each TP group: GPUs are replicas × PP × TP whatever EP is.
    assert result.gpus_required == target.replicas * p.pipeline * p.tensor
    assert result.world_size == p.pipeline * p.tensor
    experts = target.model.architecture.experts  # type: ignore[union-attr]
    assert experts is not None
    if p.tensor % p.expert or experts.routed % p.expert:
        assert _ep_failed(result) and not result.feasible
    for memory in result.stage_memory:
        by_part = memory.weights_by_part
        assert by_part is not None
        assert sum(by_part.model_dump().values()) == memory.weights_bytes
        assert memory.total_bytes == (
            memory.weights_bytes
            + memory.kv_cache_bytes
            + memory.activations_bytes
            + memory.overhead_bytes
        )
    deployment = InferenceDeployment(metadata={"name": "x"}, spec=target)
    assert render(deployment, result).endswith("\n")
    json.dumps(result.to_json())


@FAST
@given(target=moe_specs())
def test_experts_partition_exactly_across_ep_ranks(target: InferenceDeploymentSpec) -> None:
    result = plan(target, Pool(name="none", nodes=()))
    assume(not _ep_failed(result))
    p = target.parallelism
    arch = target.model.architecture
    assert arch is not None and arch.experts is not None
    routed = arch.experts.routed
    ranges = expert_ranges(routed, p.expert)
    assert ranges[0][0] == 0 and ranges[-1][1] == routed
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert {end - start for start, end in ranges} == {routed // p.expert}
    # Each EP rank is a run of TP/EP consecutive TP ranks, in every stage.
    for stage in range(p.pipeline):
        members = [r for r in ranks(p) if r.pp_rank == stage]
        assert [r.ep_rank for r in members] == [
            tp // p.expert_tensor if p.expert > 1 else 0 for tp in range(p.tensor)
        ]
    # The routed experts' elements on one rank × EP × expert-TP = every expert once.
    moe = arch.moe_layers_in(0, arch.num_layers or 0)
    whole = stage_weights(
        arch, Dtype.BFLOAT16, Parallelism(), start=0, end=arch.num_layers or 0,
        first=False, last=False,
    )  # fmt: skip
    mine = stage_weights(
        arch, Dtype.BFLOAT16, p, start=0, end=arch.num_layers or 0, first=False, last=False
    )
    router = moe * routed * ((arch.hidden_size or 0) + (1 if arch.experts.router_bias else 0))
    size = arch.experts.intermediate_size
    # (A down-projection bias is whole on every expert-TP shard, so count it only unsplit.)
    if size % p.expert_tensor == 0 and (p.expert_tensor == 1 or not arch.experts.expert_bias):
        assert (mine.params("routed_experts") - router) * p.expert * p.expert_tensor == (
            whole.params("routed_experts") - router
        )


@FAST
@given(target=moe_specs(), more_batch=st.integers(0, 64), more_sequence=st.integers(0, 32_768))
def test_moe_memory_grows_with_batch_and_sequence_length(
    target: InferenceDeploymentSpec, more_batch: int, more_sequence: int
) -> None:
    pool = Pool(name="none", nodes=())
    serving = target.serving.model_copy(
        update={
            "max_batch_size": target.serving.max_batch_size + more_batch,
            "max_sequence_length": target.serving.max_sequence_length + more_sequence,
        }
    )
    small, large = plan(target, pool), plan(target.model_copy(update={"serving": serving}), pool)
    for before, after in zip(small.stage_memory, large.stage_memory, strict=True):
        assert after.kv_cache_bytes >= before.kv_cache_bytes
        assert after.activations_bytes >= before.activations_bytes
        assert after.weights_bytes == before.weights_bytes
    if (more_batch or more_sequence) and small.stage_memory:
        assert large.memory.total_bytes > small.memory.total_bytes


@SLOW
@given(target=moe_specs(), objects=cluster_objects())
def test_moe_suggestions_pass_every_check(
    target: InferenceDeploymentSpec, objects: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    pool = Pool.from_objects(*objects, target)
    for option in suggest(target, pool):
        assert option.expert in (1, option.tensor)
        assert plan(target.model_copy(update={"parallelism": option.parallelism}), pool).feasible


# --- suggest's remembered stage memory -----------------------------------------------------


def _remembered_plans_are_the_plans(target: InferenceDeploymentSpec, pool: Pool) -> None:
    """Every candidate planned with one StageMemories, as suggest does, is the plan made from
    scratch: what the memo keys on is all stage_memory reads of the parallelism."""
    memories = StageMemories()
    for index, candidate in enumerate(candidates(target, pool)):
        if index >= 200:
            break
        variant = target.model_copy(update={"parallelism": candidate})
        remembered = plan(variant, pool, with_stages=False, memories=memories)
        assert remembered == plan(variant, pool, with_stages=False), candidate


@SLOW
@given(target=specs(), objects=cluster_objects())
def test_remembered_stage_memory_is_computed_memory(
    target: InferenceDeploymentSpec, objects: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    _remembered_plans_are_the_plans(target, Pool.from_objects(*objects, target))


@SLOW
@given(target=moe_specs(), objects=cluster_objects())
def test_remembered_moe_stage_memory_is_computed_memory(
    target: InferenceDeploymentSpec, objects: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    _remembered_plans_are_the_plans(target, Pool.from_objects(*objects, target))
