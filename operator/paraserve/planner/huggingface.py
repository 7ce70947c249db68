"""Hugging Face config.json → model.architecture, for the model types people deploy.

Pure: the caller reads the file (or the ConfigMap). Each model type's fields are named as its
transformers configuration class names them; where a config.json leaves a field out, the
class's default applies (docs/planner.md lists the mapping).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import ValidationError

from paraserve.api import (
    Architecture,
    AttentionBias,
    InferenceDeploymentSpec,
    LatentAttention,
    Quantization,
    QuantizationMethod,
    WeightPart,
    describe_validation_error,
)
from paraserve.planner import codes


class ConfigError(ValueError):
    """A config.json the parser cannot turn into an architecture: one line for a person."""

    #: The reason the operator reports (condition Validated=False, Event, webhook refusal).
    code: ClassVar[str] = codes.INVALID_MODEL_CONFIG


class ConfigMapNotFound(ConfigError):
    """model.architectureFrom names a ConfigMap that does not exist (yet): a wait."""

    code: ClassVar[str] = codes.CONFIG_MAP_NOT_FOUND


Config = Mapping[str, Any]


def architecture_from_config(config: Any, source: str = "config.json") -> Architecture:
    """The ``model.architecture`` block of a Hugging Face ``config.json`` (already parsed)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    parse = _PARSERS.get(model_type) if isinstance(model_type, str) else None
    if parse is None:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported; supported:"
            f" {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        reader = _Reader(config, source, str(model_type))
        fields = parse(reader)
        quantization = _quantization(reader)
        if quantization:
            fields["quantization"] = quantization
        return Architecture.model_validate(fields)
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe_validation_error(error)}") from None


def architecture_from_text(text: str, source: str = "config.json") -> Architecture:
    """Parse the JSON text of a config.json, then as architecture_from_config."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}: not JSON: {error.msg} at line {error.lineno}") from None
    return architecture_from_config(config, source)


def resolve_architecture(
    spec: InferenceDeploymentSpec, config_map_data: Mapping[str, str | None] | None
) -> InferenceDeploymentSpec:
    """``spec`` with model.architectureFrom replaced by the architecture its ConfigMap holds.

    ``config_map_data`` is the ConfigMap's ``data`` (None when the ConfigMap does not exist:
    ConfigMapNotFound). A value None stands for a key whose text the caller did not keep
    because it holds no ``model_type`` (the operator's index keeps only model configs).
    A spec without architectureFrom is returned as it is.
    """
    source = spec.model.architecture_from
    if source is None:
        return spec
    ref = source.config_map_key_ref
    where = f"ConfigMap {ref.name!r}"
    if config_map_data is None:
        file = "config.json" if ref.key == "config.json" else f"{ref.key}=config.json"
        raise ConfigMapNotFound(
            f"model.architectureFrom: {where} not found; it should hold key {ref.key!r}"
            f" (kubectl create configmap {ref.name} --from-file={file})"
        )
    if ref.key not in config_map_data:
        keys = ", ".join(sorted(config_map_data)) or "none"
        raise ConfigError(f"model.architectureFrom: {where} has no key {ref.key!r} (keys: {keys})")
    text = config_map_data[ref.key]
    if text is None:
        raise ConfigError(
            f'model.architectureFrom: {where} key {ref.key!r} holds no "model_type":'
            " not a Hugging Face config.json"
        )
    architecture = architecture_from_text(text, f"model.architectureFrom: {where} key {ref.key!r}")
    model = spec.model.model_copy(update={"architecture": architecture, "architecture_from": None})
    return spec.model_copy(update={"model": model})


class _Reader:
    """Typed access to a config's fields, with the errors naming the field."""

    def __init__(self, config: Config, source: str, model_type: str) -> None:
        self.config = config
        self.source = source
        self.model_type = model_type

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.config.get(key, default)
        if value is None:
            raise ConfigError(f"{self.source}: {key} missing (model_type {self.model_type})")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.source}: {key} must be an integer, got {value!r}")
        return value

    def optional_integer(self, key: str) -> int | None:
        return self.integer(key) if self.config.get(key) is not None else None

    def boolean(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.source}: {key} must be true or false, got {value!r}")
        return value

    def layer_list(self, key: str) -> list[int]:
        value = self.config.get(key) or []
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{self.source}: {key} must be a list of layer indices")
        return value

    def nested(self, key: str, defaults: Config) -> _Reader:
        inner = self.config.get(key)
        if not isinstance(inner, Mapping):
            raise ConfigError(f"{self.source}: {key} must be an object")
        return _Reader({**defaults, **inner}, f"{self.source} {key}", self.model_type)


def _decoder(r: _Reader, *, tie_default: bool) -> dict[str, Any]:
    """The fields every decoder config shares."""
    heads = r.integer("num_attention_heads")
    return {
        "numLayers": r.integer("num_hidden_layers"),
        "hiddenSize": r.integer("hidden_size"),
        "numAttentionHeads": heads,
        "numKeyValueHeads": r.integer("num_key_value_heads", heads),
        "headDim": r.optional_integer("head_dim"),
        "intermediateSize": r.integer("intermediate_size"),
        "vocabSize": r.integer("vocab_size"),
        "tieWordEmbeddings": r.boolean("tie_word_embeddings", tie_default),
    }


def _llama(r: _Reader) -> dict[str, Any]:
    # LlamaConfig/MistralConfig: attention_bias puts a bias on q, k, v and o.
    fields = _decoder(r, tie_default=False)
    if r.boolean("attention_bias", False):
        fields["attentionBias"] = AttentionBias.ALL.value
    return fields


def _mixtral(r: _Reader) -> dict[str, Any]:
    fields = _decoder(r, tie_default=False)
    fields["experts"] = {
        "routed": r.integer("num_local_experts", 8),
        "perToken": r.integer("num_experts_per_tok", 2),
        "intermediateSize": r.integer("intermediate_size"),
    }
    return fields


def _qwen2(r: _Reader) -> dict[str, Any]:
    fields = _decoder(r, tie_default=False)
    fields["attentionBias"] = AttentionBias.QKV.value  # Qwen2Attention: q, k, v biased; o not
    return fields


def _qwen3(r: _Reader) -> dict[str, Any]:
    fields = _llama(r)
    fields["qkNorm"] = True
    return fields


def _qwen3_moe(r: _Reader) -> dict[str, Any]:
    fields = _qwen3(r)
    routed = r.integer("num_experts", 128)
    # Qwen3MoeDecoderLayer: experts unless the layer is in mlp_only_layers or misses the step.
    step = r.integer("decoder_sparse_step", 1)
    only = set(r.layer_list("mlp_only_layers"))
    layers = fields["numLayers"]
    dense = [i for i in range(layers) if i in only or (i + 1) % step]
    fields["experts"] = {
        "routed": routed,
        "perToken": r.integer("num_experts_per_tok", 8),
        "intermediateSize": r.integer("moe_intermediate_size", 768),
        "denseLayers": dense,
    }
    return fields


def _deepseek(r: _Reader) -> dict[str, Any]:
    fields = _decoder(r, tie_default=False)
    fields.pop("numKeyValueHeads")  # MLA caches one latent, not per-head keys and values
    fields.pop("headDim")
    fields["latentAttention"] = LatentAttention(
        q_lora_rank=r.optional_integer("q_lora_rank"),
        kv_lora_rank=r.integer("kv_lora_rank"),
        qk_nope_head_dim=r.integer("qk_nope_head_dim"),
        qk_rope_head_dim=r.integer("qk_rope_head_dim"),
        v_head_dim=r.integer("v_head_dim"),
    ).to_wire()
    routed = r.optional_integer("n_routed_experts")
    if routed:
        # DeepseekV3DecoderLayer: experts from first_k_dense_replace on, every moe_layer_freq.
        first_dense = r.integer("first_k_dense_replace", 0)
        frequency = r.integer("moe_layer_freq", 1)
        layers = fields["numLayers"]
        dense = [i for i in range(layers) if i < first_dense or i % frequency]
        shared = r.integer("n_shared_experts", 0)
        size = r.integer("moe_intermediate_size")
        experts: dict[str, Any] = {
            "routed": routed,
            "perToken": r.integer("num_experts_per_tok"),
            "intermediateSize": size,
            "shared": shared,
            "denseLayers": dense,
        }
        if r.config.get("topk_method") == "noaux_tc":
            experts["routerBias"] = True  # e_score_correction_bias
        fields["experts"] = experts
    mtp = r.integer("num_nextn_predict_layers", 0)
    if mtp:
        fields["mtpLayers"] = mtp
    return fields


def _gpt_oss(r: _Reader) -> dict[str, Any]:
    fields = _decoder(r, tie_default=False)
    fields["attentionBias"] = AttentionBias.ALL.value
    fields["attentionSinks"] = True
    fields["experts"] = {
        "routed": r.integer("num_local_experts"),
        "perToken": r.integer("num_experts_per_tok", r.config.get("experts_per_token")),
        "intermediateSize": r.integer("intermediate_size"),
        "routerBias": True,
        "expertBias": True,
    }
    return fields


# Gemma2Config / Gemma3TextConfig defaults, for the fields a config.json may leave out (the
# multimodal Gemma 3 checkpoints write only a few fields in text_config).
_GEMMA2_DEFAULTS = {
    "vocab_size": 256000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
}
_GEMMA3_DEFAULTS = {**_GEMMA2_DEFAULTS, "vocab_size": 262208}


def _gemma2(r: _Reader) -> dict[str, Any]:
    r = _Reader({**_GEMMA2_DEFAULTS, **r.config}, r.source, r.model_type)
    fields = _decoder(r, tie_default=True)
    fields["normsPerLayer"] = 4  # input, post-attention, pre- and post-feed-forward
    return fields


def _gemma3(r: _Reader) -> dict[str, Any]:
    if "text_config" in r.config:  # Gemma3ForConditionalGeneration: the language model's part
        tie = r.boolean("tie_word_embeddings", True)
        r = r.nested("text_config", _GEMMA3_DEFAULTS)
        r.config = {"tie_word_embeddings": tie, **r.config}
    else:
        r = _Reader({**_GEMMA3_DEFAULTS, **r.config}, r.source, r.model_type)
    fields = _decoder(r, tie_default=True)
    fields["normsPerLayer"] = 4
    fields["qkNorm"] = True
    return fields


def _quantization(r: _Reader) -> dict[str, Any] | None:
    """quantization_config → the quantized parts: fp8 with its blocks, or mxfp4 experts."""
    q = r.config.get("quantization_config")
    if not isinstance(q, Mapping):
        return None
    method = q.get("quant_method")
    if method == "mxfp4":
        # transformers' Mxfp4HfQuantizer swaps in MXFP4 experts only; the rest stays bf16.
        return Quantization(
            method=QuantizationMethod.MXFP4, parts=[WeightPart.ROUTED_EXPERTS]
        ).to_wire()
    if method == "fp8":
        # Every linear layer, less those named in modules_to_not_convert.
        skipped = " ".join(str(m) for m in q.get("modules_to_not_convert") or [])
        parts = [
            part
            for part, module in (
                (WeightPart.ATTENTION, "self_attn"),
                (WeightPart.DENSE_MLP, "mlp.gate_proj"),
                (WeightPart.ROUTED_EXPERTS, "mlp.experts"),
                (WeightPart.SHARED_EXPERTS, "shared_experts"),
            )
            if module not in skipped
        ]
        block = q.get("weight_block_size")
        return Quantization(
            method=QuantizationMethod.FP8, parts=parts, block_size=list(block) if block else None
        ).to_wire()
    raise ConfigError(
        f"{r.source}: quantization_config.quant_method {method!r} is not supported"
        " (fp8, mxfp4); remove quantization_config to plan the unquantized weights"
    )


_PARSERS: dict[str, Callable[[_Reader], dict[str, Any]]] = {
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "gemma3_text": _gemma3,
    "gpt_oss": _gpt_oss,
    "llama": _llama,
    "mistral": _llama,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_PARSERS))
