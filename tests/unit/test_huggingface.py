"""config.json → model.architecture, and `paraserve architecture`, on the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from paraserve.api import Architecture, InferenceDeploymentSpec
from paraserve.cli import main
from paraserve.planner import (
    SUPPORTED_MODEL_TYPES,
    ConfigError,
    ConfigMapNotFound,
    architecture_from_config,
    codes,
    resolve_architecture,
)

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def config(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return loaded


def arch(name: str) -> Architecture:
    return architecture_from_config(config(name), name)


def test_every_shipped_config_parses() -> None:
    for path in sorted(CONFIGS.glob("*.json")):
        parsed = architecture_from_config(json.loads(path.read_text()), path.name)
        assert parsed.is_complete, path.name


def test_llama_is_a_plain_decoder() -> None:
    a = arch("llama-3.1-70b")
    assert a.to_wire() == {
        "numLayers": 80,
        "hiddenSize": 8192,
        "numAttentionHeads": 64,
        "numKeyValueHeads": 8,
        "intermediateSize": 28672,
        "vocabSize": 128256,
        "tieWordEmbeddings": False,
    }


def test_qwen_biases_and_norms() -> None:
    assert arch("qwen2.5-72b").attention_bias == "qkv"
    qwen3 = arch("qwen3-32b")
    assert qwen3.qk_norm and qwen3.head_dim == 128 and qwen3.attention_bias is None


def test_mixtral_experts_are_its_mlp() -> None:
    experts = arch("mixtral-8x22b").experts
    assert experts is not None
    assert (experts.routed, experts.per_token, experts.intermediate_size) == (8, 2, 16384)
    assert experts.shared == 0 and experts.dense_layers == []


def test_qwen3_moe_dense_layers_follow_the_sparse_step() -> None:
    document = config("qwen3-30b-a3b")
    assert arch("qwen3-30b-a3b").experts.dense_layers == []  # type: ignore[union-attr]
    stepped = architecture_from_config({**document, "decoder_sparse_step": 2})
    assert stepped.experts is not None and stepped.experts.dense_layers == list(range(0, 48, 2))
    only = architecture_from_config({**document, "mlp_only_layers": [0, 47]})
    assert only.experts is not None and only.experts.dense_layers == [0, 47]


def test_deepseek_v3_latent_attention_experts_mtp_and_fp8() -> None:
    a = arch("deepseek-v3")
    mla = a.latent_attention
    assert mla is not None
    assert (mla.q_lora_rank, mla.kv_lora_rank, mla.cached_dim) == (1536, 512, 576)
    assert a.num_key_value_heads is None  # MLA: no per-head KV
    experts = a.experts
    assert experts is not None
    assert (experts.routed, experts.per_token, experts.intermediate_size) == (256, 8, 2048)
    assert (experts.shared, experts.dense_layers, experts.router_bias) == (1, [0, 1, 2], True)
    assert a.mtp_layers == 1
    q = a.quantization
    assert q is not None and q.method == "fp8" and q.block_size == [128, 128]
    assert set(q.parts) == {"attention", "denseMlp", "routedExperts", "sharedExperts"}


def test_deepseek_v2_lite_has_no_query_compression() -> None:
    a = arch("deepseek-v2-lite")
    assert a.latent_attention is not None and a.latent_attention.q_lora_rank is None
    assert a.experts is not None and a.experts.dense_layers == [0] and a.experts.shared == 2
    assert not a.experts.router_bias and a.quantization is None


def test_gpt_oss_mxfp4_experts_biases_and_sinks() -> None:
    a = arch("gpt-oss-120b")
    assert a.attention_bias == "all" and a.attention_sinks and a.head_dim == 64
    assert a.experts is not None and a.experts.expert_bias and a.experts.router_bias
    assert a.quantization is not None and a.quantization.method == "mxfp4"
    assert a.quantization.parts == ["routedExperts"]


def test_gemma_norms_tied_embeddings_and_nested_text_config() -> None:
    g2 = arch("gemma-2-27b")
    assert g2.norms_per_layer == 4 and g2.tie_word_embeddings and g2.head_dim == 128
    g3 = arch("gemma-3-27b-it")
    assert g3.num_layers == 62 and g3.hidden_size == 5376 and g3.qk_norm
    assert g3.vocab_size == 262208  # Gemma3TextConfig's default: text_config leaves it out
    assert g3.tie_word_embeddings


def test_unsupported_model_type_names_the_supported_ones() -> None:
    with pytest.raises(ConfigError) as error:
        architecture_from_config({"model_type": "phi3"}, "config.json")
    message = str(error.value)
    assert "\n" not in message and "'phi3' is not supported" in message
    for model_type in ("llama", "deepseek_v3", "gpt_oss", "gemma3", "qwen3_moe"):
        assert model_type in SUPPORTED_MODEL_TYPES and model_type in message


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([], "expected a JSON object"),
        ({"model_type": "llama"}, "num_attention_heads missing"),
        ({**config("llama-3.1-8b"), "hidden_size": "4096"}, "hidden_size must be an integer"),
        (
            {**config("llama-3.1-8b"), "quantization_config": {"quant_method": "awq"}},
            "quant_method 'awq' is not supported",
        ),
    ],
)
def test_bad_configs_are_one_line(document: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        architecture_from_config(document)


def test_resolve_architecture_from_a_config_map() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-V3",
                "architectureFrom": {"configMapKeyRef": {"name": "deepseek"}},
            }
        }
    )
    text = (CONFIGS / "deepseek-v3.json").read_text()
    resolved = resolve_architecture(spec, {"config.json": text})
    assert resolved.model.architecture == arch("deepseek-v3")
    assert resolved.model.architecture_from is None and resolved.model.exact
    with pytest.raises(ConfigError, match="ConfigMap 'deepseek' not found"):
        resolve_architecture(spec, None)
    with pytest.raises(ConfigError, match=r"no key 'config.json' \(keys: other\)"):
        resolve_architecture(spec, {"other": "{}"})
    with pytest.raises(ConfigError, match="not JSON"):
        resolve_architecture(spec, {"config.json": "{"})
    # The operator's index keeps no text of a value without "model_type".
    with pytest.raises(ConfigError, match='holds no "model_type"'):
        resolve_architecture(spec, {"config.json": None})
    plain = InferenceDeploymentSpec.model_validate({"model": {"name": "m", "parameters": "7B"}})
    assert resolve_architecture(plain, None) is plain


def test_a_missing_config_map_is_a_wait_the_rest_invalid() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {"model": {"name": "m", "architectureFrom": {"configMapKeyRef": {"name": "llama"}}}}
    )
    with pytest.raises(ConfigMapNotFound) as missing:
        resolve_architecture(spec, None)
    assert missing.value.code == codes.CONFIG_MAP_NOT_FOUND == "ConfigMapNotFound"
    with pytest.raises(ConfigError) as invalid:
        resolve_architecture(spec, {"config.json": '{"model_type": "bert"}'})
    assert not isinstance(invalid.value, ConfigMapNotFound)
    assert invalid.value.code == codes.INVALID_MODEL_CONFIG == "InvalidModelConfig"


def test_architecture_and_architecture_from_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="not both"):
        InferenceDeploymentSpec.model_validate(
            {
                "model": {
                    "name": "m",
                    "architecture": arch("llama-3.1-8b").to_wire(),
                    "architectureFrom": {"configMapKeyRef": {"name": "x"}},
                }
            }
        )


def test_cli_prints_a_block_that_plans(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["architecture", str(CONFIGS / "deepseek-v3.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# model.architecture from ")
    assert "671.03B parameters" in out.splitlines()[0]
    block = yaml.safe_load(out)
    assert Architecture.model_validate(block) == arch("deepseek-v3")
    assert main(["architecture", str(CONFIGS / "gpt-oss-20b.json"), "-o", "json"]) == 0
    assert Architecture.model_validate(json.loads(capsys.readouterr().out)) == arch("gpt-oss-20b")


def test_cli_unsupported_model_type_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "phi3"}')
    assert main(["architecture", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("paraserve architecture: ") and "supported: " in captured.err
    path.write_text("not json")
    assert main(["architecture", str(path)]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_plan_reads_architecture_from_a_config_map_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    examples = CONFIGS.parent
    deployment = str(examples / "gpt-oss-120b-from-configmap.yaml")
    nodes = str(examples / "nodes-1x8-h100-80g.yaml")
    config_maps = str(examples / "configmap-gpt-oss-120b.yaml")
    status = main(["plan", "-f", deployment, "--nodes", nodes, "--config-maps", config_maps])
    out = capsys.readouterr().out
    assert status == 0 and "116.83B parameters" in out
    assert "mxfp4: 4 bits + an 8-bit scale per 32 = 4.25 bits" in out
    assert main(["plan", "-f", deployment, "--nodes", nodes]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass it with --config-maps FILE" in err
    assert main(["plan", "-f", deployment, "--nodes", nodes, "--config-maps", nodes]) == 2
    assert "ConfigMap 'gpt-oss-120b' not found" in capsys.readouterr().err
