"""Mixture of experts, expert parallelism, MLA and mixed formats in the planner; DeepSeek-V3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.builders import POOL_LABEL, node, pool_of

from paraserve.api import InferenceDeploymentSpec
from paraserve.cli import main
from paraserve.planner import architecture_from_config, codes, plan, suggest, suggest_more_nodes
from paraserve.planner.memory import stage_shapes

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = EXAMPLES / "configs"
DEEPSEEK = str(EXAMPLES / "deepseek-v3.yaml")
DEEPSEEK_ONE_NODE = str(EXAMPLES / "deepseek-v3-one-node.yaml")
H200 = str(EXAMPLES / "nodes-2x8-h200.yaml")
H100 = str(EXAMPLES / "nodes-1x8-h100-80g.yaml")


def architecture(name: str) -> dict[str, Any]:
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    return architecture_from_config(config, name).to_wire()


def moe_spec(name: str, **overrides: Any) -> InferenceDeploymentSpec:
    document: dict[str, Any] = {
        "model": {"name": name, "dtype": "bfloat16", "architecture": architecture(name)},
        "parallelism": {"pipeline": 1, "tensor": 8, "expert": 8},
        "serving": {"maxBatchSize": 4, "maxSequenceLength": 4096},
        "gpu": {"memory": "141G"},
        "placement": {"nodeSelector": {POOL_LABEL: "a100-80g"}},
    }
    document.update(overrides)
    return InferenceDeploymentSpec.model_validate(document)


def ep_checks(spec: InferenceDeploymentSpec) -> list[tuple[str, str]]:
    result = plan(spec, pool_of(spec))
    return [
        (c.outcome, c.message) for c in result.checks if c.code == codes.INVALID_EXPERT_PARALLELISM
    ]


# --- expert parallelism: the checks ----------------------------------------------------------


def test_ep_adds_no_gpus() -> None:
    spec = moe_spec("qwen3-30b-a3b")
    result = plan(spec, pool_of(spec))
    assert result.world_size == 8 and result.gpus_required == 8


def test_ep_must_divide_tp() -> None:
    spec = moe_spec("qwen3-30b-a3b", parallelism={"tensor": 8, "expert": 3})
    outcome, message = ep_checks(spec)[0]
    assert outcome == "failed" and "EP=3 must divide TP=8" in message
    assert not plan(spec, pool_of(spec)).feasible
    beyond = moe_spec("qwen3-30b-a3b", parallelism={"tensor": 4, "expert": 8})
    assert ep_checks(beyond)[0][0] == "failed" and "never spans replicas" in ep_checks(beyond)[0][1]


def test_routed_experts_must_divide_by_ep() -> None:
    # Mixtral has 8 experts: EP=8 gives one each; EP=16 (TP=16) cannot split them evenly.
    fine = ep_checks(moe_spec("mixtral-8x7b"))
    assert ("passed", "experts.routed=8 ÷ EP=8 = 1 routed experts per rank") in fine
    spec = moe_spec(
        "mixtral-8x7b",
        parallelism={"tensor": 16, "expert": 16},
        placement={"tensorParallelWithinNode": False},
    )
    outcome, message = ep_checks(spec)[1]
    assert outcome == "failed" and "experts.routed=8 is not divisible by EP=16" in message


def test_expert_tensor_split_must_be_whole_fp8_blocks() -> None:
    # DeepSeek's experts are 2048 wide in 128-wide fp8 blocks: TP=8 with EP=1 leaves 256 (2
    # blocks), fine; TP=32 with EP=1 would leave 64, half a block.
    assert all(o == "passed" for o, _ in ep_checks(moe_spec("deepseek-v3")))
    split = moe_spec(
        "deepseek-v3",
        parallelism={"tensor": 32, "expert": 1},
        placement={"tensorParallelWithinNode": False},
    )
    outcome, message = ep_checks(split)[-1]
    assert outcome == "failed" and "2048 ÷ expert-TP=32 = 64" in message


def test_ep_on_a_dense_model_is_an_error_and_dense_plans_are_unchanged() -> None:
    dense = moe_spec("llama-3.1-8b", parallelism={"tensor": 8, "expert": 8})
    assert ep_checks(dense) == [
        (
            "passed",
            "EP=8 divides TP=8: each expert is tensor-parallel over TP/EP = 1 rank; no GPUs added",
        ),
        ("failed", "EP=8, but the architecture has no experts to shard"),
    ]
    assert ep_checks(moe_spec("llama-3.1-8b", parallelism={"tensor": 8})) == []


# --- the memory model --------------------------------------------------------------------------


def test_routed_experts_divide_by_ep_attention_and_shared_by_tp() -> None:
    # Qwen3-30B-A3B in bfloat16: 48 MoE layers of 128 experts of 3 × 2048 × 768.
    spec = moe_spec("qwen3-30b-a3b", parallelism={"tensor": 4, "expert": 4})
    by_part = plan(spec, pool_of(spec)).memory.weights_by_part
    assert by_part is not None
    router = 128 * 2048
    assert by_part.routed_experts_bytes == 2 * 48 * (128 // 4 * 3 * 2048 * 768 + router)
    # Without EP each expert is split 4 ways instead: the same bytes, other shapes.
    no_ep = moe_spec("qwen3-30b-a3b", parallelism={"tensor": 4})
    same = plan(no_ep, pool_of(no_ep)).memory.weights_by_part
    assert same is not None and same.routed_experts_bytes == by_part.routed_experts_bytes
    # Attention by TP: q and o 32/4 heads × 128, k and v 4/4 heads × 128, q/k norms.
    per_layer = 2 * 2048 * 8 * 128 + 2 * 2048 * 1 * 128 + 2 * 128
    assert by_part.attention_bytes == 2 * 48 * per_layer
    assert by_part.shared_experts_bytes == by_part.dense_mlp_bytes == 0


def test_deepseek_dense_layers_and_shared_experts_by_tp() -> None:
    spec = moe_spec("deepseek-v3", parallelism={"pipeline": 2, "tensor": 8, "expert": 8})
    result = plan(spec, pool_of(spec))
    first, last = result.stage_memory
    assert first.weights_by_part is not None and last.weights_by_part is not None
    # Layers 0-2 are dense (18432 wide, / TP=8 = 2304 = 18 fp8 blocks of 128), on stage 0 only.
    blocks = 18 * 56 * 3  # per layer: gate, up (2304 × 7168) and down (7168 × 2304)
    assert first.weights_by_part.dense_mlp_bytes == 3 * (3 * 2304 * 7168 + blocks * 4)
    assert last.weights_by_part.dense_mlp_bytes == 0
    # One shared expert of 2048 / TP=8 = 256 per MoE layer: stage 0 has 28, stage 1 30.
    shared = 3 * 256 * 7168 + 3 * 2 * 56 * 4
    assert first.weights_by_part.shared_experts_bytes == 28 * shared
    assert last.weights_by_part.shared_experts_bytes == 30 * shared


def test_mla_kv_cache_is_the_latent_whole_on_every_tp_rank() -> None:
    for tensor in (1, 8):
        spec = moe_spec("deepseek-v3", parallelism={"tensor": tensor, "expert": 1})
        kv = plan(spec, pool_of(spec)).memory.kv_cache_bytes
        assert kv == 61 * (512 + 64) * 2 * 4 * 4096  # layers × latent × bf16 × tokens


def test_multi_token_prediction_adds_a_layer_on_the_last_stage() -> None:
    base = moe_spec("deepseek-v3", parallelism={"pipeline": 2, "tensor": 8, "expert": 8})
    serving = {"maxBatchSize": 4, "maxSequenceLength": 4096, "multiTokenPrediction": True}
    mtp = moe_spec(
        "deepseek-v3", parallelism={"pipeline": 2, "tensor": 8, "expert": 8}, serving=serving
    )
    before, after = plan(base, pool_of(base)), plan(mtp, pool_of(mtp))
    assert after.stage_memory[0] == before.stage_memory[0]
    last = after.stage_memory[1]
    assert last.weights_by_part is not None and last.weights_by_part.multi_token_prediction_bytes
    assert last.kv_cache_bytes == 31 * (512 + 64) * 2 * 4 * 4096  # 30 layers + the MTP layer


def test_kv_cache_and_weights_of_gqa_moe_split_by_tp() -> None:
    spec = moe_spec("mixtral-8x7b", parallelism={"tensor": 2, "expert": 2})
    memory = plan(spec, pool_of(spec)).memory
    assert memory.kv_cache_bytes == 2 * 32 * 4 * 128 * 2 * 4 * 4096  # 8 KV heads / TP=2


def test_weights_by_part_sum_to_the_weights() -> None:
    for name in ("deepseek-v3", "gpt-oss-120b", "qwen3-235b-a22b", "llama-3.1-70b"):
        spec = moe_spec(name, parallelism={"pipeline": 3, "tensor": 4, "expert": 1})
        for memory in plan(spec, pool_of(spec)).stage_memory:
            by_part = memory.weights_by_part
            assert by_part is not None
            assert sum(by_part.model_dump().values()) == memory.weights_bytes, name


def test_stage_shapes_know_their_first_layer() -> None:
    assert [(s.start, s.end) for s in stage_shapes(61, 2)] == [(0, 31), (31, 61)]


def test_unresolved_architecture_from_is_an_error() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {"model": {"name": "m", "architectureFrom": {"configMapKeyRef": {"name": "llama"}}}}
    )
    result = plan(spec, pool_of(spec))
    assert not result.feasible
    assert [e.code for e in result.errors] == [codes.UNRESOLVED_ARCHITECTURE]
    assert "ConfigMap 'llama' key 'config.json'" in result.errors[0].message


# --- suggest -------------------------------------------------------------------------------------


def test_suggest_offers_ep_equal_to_tp_for_moe_models() -> None:
    spec = moe_spec("qwen3-30b-a3b", parallelism={"tensor": 2, "expert": 2})
    options = suggest(spec, pool_of(spec))
    assert {o.expert for o in options} == {1} | {o.tensor for o in options if o.tensor > 1}
    assert all(o.expert in (1, o.tensor) for o in options)
    assert any(o.label.endswith("× EP=2") for o in options)
    dense = moe_spec("llama-3.1-8b", parallelism={"tensor": 2})
    assert {o.expert for o in suggest(dense, pool_of(dense))} == {1}


def test_more_nodes_when_nothing_fits() -> None:
    spec = moe_spec("deepseek-v3", gpu={"memory": "80G"})
    pool = pool_of(spec, [node("a")])
    assert suggest(spec, pool) == []
    more = suggest_more_nodes(spec, pool)
    assert more is not None and more.nodes == 2 and more.gpus_per_node == 8
    assert more.suggestions and all(s.gpus_required <= 16 for s in more.suggestions)


# --- DeepSeek-V3 through `paraserve plan` ------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    assert captured.err == ""
    return status, captured.out


def test_deepseek_v3_on_two_h200_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, "plan", "-f", DEEPSEEK, "--nodes", H200)
    assert status == 0
    assert "Strategy      PP=2 × TP=8 × SP=1 × EP=8" in out
    assert "PP=2 × TP=8 = 16 GPUs required" in out
    assert "experts.routed=256 ÷ EP=8 = 32 routed experts per rank" in out
    assert "30 MoE layers × 32 of 256 experts (EP=8)" in out
    assert "30 layers × (512 + 64) latent, whole on each TP rank" in out
    assert "✅ feasible and schedulable now." in out
    status, text = run(capsys, "plan", "-f", DEEPSEEK, "--nodes", H200, "-o", "json")
    document = json.loads(text)
    assert document["gpusRequired"] == 16 and document["memory"]["utilization"] < 0.9
    assert document["memory"]["weightsByPart"]["routedExpertsBytes"] > 40e9


def test_deepseek_v3_on_one_80gb_node_is_refused_with_the_arithmetic(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out = run(capsys, "plan", "-f", DEEPSEEK_ONE_NODE, "--nodes", H100)
    assert status == 1
    assert "❌ MemoryLimitExceeded" in out
    assert "85.14 GB weights (routed experts 81.97 GB" in out
    assert "/ 85.52 GB = 159.7 % > 90 % maxMemoryUtilization" in out
    assert "no strategy fits this pool" in out
    assert "with 2 nodes like the largest (8 GPUs × 85.52 GB each, 16 GPUs) these fit:" in out
    status, text = run(
        capsys, "plan", "-f", DEEPSEEK_ONE_NODE, "--nodes", H100, "--suggest", "-o", "json"
    )
    document = json.loads(text)
    assert document["suggestions"] == [] and document["moreNodes"]["nodes"] == 2
    assert all(s["gpusRequired"] <= 16 for s in document["moreNodes"]["suggestions"])
