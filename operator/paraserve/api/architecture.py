"""The shape of a model: a decoder's layers, its attention, its experts and its checkpoint formats.

``paraserve architecture CONFIG.json`` writes this block from a Hugging Face ``config.json``;
docs/planner.md gives the memory each field stands for and where the formula comes from.
"""

from __future__ import annotations

import enum

from pydantic import Field, model_validator

from paraserve.api.base import SpecModel


class AttentionBias(enum.StrEnum):
    """Which attention projections carry a bias."""

    NONE = "none"
    QKV = "qkv"  # Qwen2: q, k and v
    ALL = "all"  # gpt-oss, Llama with attention_bias: q, k, v and o


class LatentAttention(SpecModel):
    """Multi-head latent attention (DeepSeek-V2/V3): queries through a low-rank q_a/q_b pair, keys
    and values from one compressed latent (kv_a) that the KV cache holds, expanded by kv_b."""

    q_lora_rank: int | None = Field(
        None, ge=1, description="Rank of the query compression (q_a, q_b). Null: one q projection."
    )
    kv_lora_rank: int = Field(ge=1, description="Rank of the key/value latent (cached).")
    qk_nope_head_dim: int = Field(ge=1, description="Per-head query/key dimension without RoPE.")
    qk_rope_head_dim: int = Field(
        ge=1, description="Per-head query/key dimension with RoPE; the key part is cached."
    )
    v_head_dim: int = Field(ge=1, description="Per-head value dimension.")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def cached_dim(self) -> int:
        """Elements the KV cache holds per token and layer: the latent and the RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim


class Experts(SpecModel):
    """Mixture of experts: each non-dense layer's MLP is `routed` experts, `perToken` of them
    chosen per token by a router, plus `shared` experts every token goes through."""

    routed: int = Field(ge=1, description="Routed experts per MoE layer (E).")
    per_token: int = Field(ge=1, description="Routed experts each token is sent to (top-k).")
    intermediate_size: int = Field(ge=1, description="Intermediate size of one routed expert.")
    shared: int = Field(0, ge=0, description="Shared experts every token goes through.")
    shared_intermediate_size: int | None = Field(
        None,
        ge=1,
        description="Intermediate size of the shared experts together."
        " Default: shared × intermediateSize.",
    )
    dense_layers: list[int] = Field(
        default_factory=list,
        description="Layers whose MLP is dense (the architecture's intermediateSize), not experts.",
    )
    router_bias: bool = Field(
        False, description="The router has a bias or a score-correction bias per expert."
    )
    expert_bias: bool = Field(False, description="Each expert's projections carry biases.")

    @model_validator(mode="after")
    def _consistent(self) -> Experts:
        if self.per_token > self.routed:
            raise ValueError(
                f"perToken={self.per_token} > routed={self.routed}: a token cannot be sent to"
                " more experts than there are"
            )
        if (
            len(set(self.dense_layers)) != len(self.dense_layers)
            or min(self.dense_layers, default=0) < 0
        ):
            raise ValueError("denseLayers must be distinct layer indices ≥ 0")
        return self

    @property
    def shared_size(self) -> int:
        """Intermediate size of all shared experts as one MLP (0 when there are none)."""
        if not self.shared:
            return 0
        return self.shared_intermediate_size or self.shared * self.intermediate_size


class QuantizationMethod(enum.StrEnum):
    """A checkpoint format that stores some weights in fewer bits, with scales."""

    FP8 = "fp8"  # 8-bit floats; one float32 scale per block (or per matrix)
    MXFP4 = "mxfp4"  # OCP microscaling: 4-bit floats, one 8-bit scale per 32 values


class WeightPart(enum.StrEnum):
    """The parts of a decoder whose linear layers a checkpoint may quantize."""

    ATTENTION = "attention"
    DENSE_MLP = "denseMlp"
    ROUTED_EXPERTS = "routedExperts"
    SHARED_EXPERTS = "sharedExperts"


class Quantization(SpecModel):
    """Which parts are stored in a quantized format (from config.json's quantization_config).
    Embeddings, the LM head, norms, routers and biases stay in model.dtype."""

    method: QuantizationMethod = Field(description="fp8 or mxfp4.")
    parts: list[WeightPart] = Field(
        min_length=1,
        description="Parts whose linear layers are quantized: attention, denseMlp,"
        " routedExperts, sharedExperts.",
    )
    block_size: list[int] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="fp8: rows and columns of the block one float32 scale covers"
        " (weight_block_size, e.g. [128, 128]); null: one scale per matrix.",
    )

    @model_validator(mode="after")
    def _block_size(self) -> Quantization:
        if self.block_size is not None:
            if self.method is not QuantizationMethod.FP8:
                raise ValueError("blockSize applies to fp8 only (mxfp4 groups 32 values)")
            if min(self.block_size) < 1:
                raise ValueError("blockSize entries must be ≥ 1")
        return self


class Architecture(SpecModel):
    """Transformer shape. Complete (numLayers, hiddenSize, numAttentionHeads, intermediateSize,
    vocabSize) selects the exact memory model; a partial one still lets the planner check
    layers per stage and head divisibility."""

    num_layers: int | None = Field(None, ge=1, description="Decoder layers (L).")
    hidden_size: int | None = Field(None, ge=1, description="Hidden size (H).")
    num_attention_heads: int | None = Field(None, ge=1, description="Attention heads (A).")
    num_key_value_heads: int | None = Field(
        None,
        ge=1,
        description="Key/value heads (grouped-query attention). Default: numAttentionHeads.",
    )
    head_dim: int | None = Field(
        None,
        ge=1,
        description="Dimension of one head (d). Default: hiddenSize / numAttentionHeads.",
    )
    intermediate_size: int | None = Field(
        None, ge=1, description="MLP intermediate size (I); with experts, that of dense layers."
    )
    vocab_size: int | None = Field(None, ge=1, description="Vocabulary size (V).")
    tie_word_embeddings: bool = Field(
        False, description="The LM head shares the embedding matrix (saved only when pipeline = 1)."
    )
    # Absent means the common case (and keeps documents of plain decoders as they were).
    attention_bias: AttentionBias | None = Field(
        None, description="Biased attention projections: none (default), qkv or all."
    )
    qk_norm: bool | None = Field(
        None, description="Per-head RMSNorm of queries and keys (Qwen3, Gemma 3)."
    )
    attention_sinks: bool | None = Field(
        None, description="One learned sink logit per head (gpt-oss)."
    )
    norms_per_layer: int | None = Field(
        None, ge=1, le=8, description="Hidden-size norms per layer. Default 2 (Gemma 2 and 3: 4)."
    )
    latent_attention: LatentAttention | None = Field(
        None, description="Multi-head latent attention (DeepSeek); replaces q, k, v projections."
    )
    experts: Experts | None = Field(None, description="Mixture of experts; absent: a dense MLP.")
    mtp_layers: int | None = Field(
        None,
        ge=0,
        le=16,
        description="Multi-token-prediction modules the checkpoint ships"
        " (num_nextn_predict_layers); loaded with serving.multiTokenPrediction.",
    )
    quantization: Quantization | None = Field(
        None, description="Parts stored quantized in the checkpoint (mixed formats)."
    )

    @model_validator(mode="after")
    def _layers_exist(self) -> Architecture:
        if self.experts is not None and self.num_layers is not None:
            beyond = [layer for layer in self.experts.dense_layers if layer >= self.num_layers]
            if beyond:
                raise ValueError(
                    f"experts.denseLayers names layer {beyond[0]}, but numLayers={self.num_layers}"
                )
        return self

    @property
    def is_complete(self) -> bool:
        """All fields the exact memory model needs are given."""
        return None not in (
            self.num_layers,
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            self.vocab_size,
        )

    @property
    def kv_heads(self) -> int | None:
        """Key/value heads, defaulting to the attention heads (multi-head attention)."""
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def effective_head_dim(self) -> int | None:
        """Head dimension, defaulting to hiddenSize / numAttentionHeads."""
        if self.head_dim is not None:
            return self.head_dim
        if self.hidden_size and self.num_attention_heads:
            return self.hidden_size // self.num_attention_heads
        return None

    @property
    def layer_norms(self) -> int:
        return self.norms_per_layer or 2

    @property
    def multi_token_prediction_layers(self) -> int:
        return self.mtp_layers or 0

    def is_moe_layer(self, layer: int) -> bool:
        """The layer's MLP is experts (not one of experts.denseLayers)."""
        return self.experts is not None and layer not in self.experts.dense_layers

    def moe_layers_in(self, start: int, end: int) -> int:
        """MoE layers in [start, end)."""
        if self.experts is None:
            return 0
        dense = sum(1 for layer in self.experts.dense_layers if start <= layer < end)
        return (end - start) - dense

    def quantizes(self, part: WeightPart) -> bool:
        return self.quantization is not None and part in self.quantization.parts
