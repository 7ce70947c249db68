"""The model a rank runs: the architecture with its defaults resolved, and how it is sharded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paraserve.api import Architecture

#: Llama's constants the architecture block does not carry.
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5

#: A model small enough that a 4-process correctness test takes seconds on CPU.
TINY_ARCHITECTURE: dict[str, Any] = {
    "numLayers": 4,
    "hiddenSize": 64,
    "numAttentionHeads": 4,
    "numKeyValueHeads": 2,
    "headDim": 16,
    "intermediateSize": 128,
    "vocabSize": 256,
    "tieWordEmbeddings": False,
}


class ShapeError(ValueError):
    """The architecture is incomplete, or cannot be sharded the way the ranks ask."""


@dataclass(frozen=True)
class ModelShape:
    """A complete Llama-style decoder shape (L, H, A, G, d, I, V)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_architecture(cls, architecture: Architecture) -> ModelShape:
        """Resolve the api model's defaults; the runtime needs the exact-mode fields."""
        missing = [
            alias
            for alias, value in (
                ("numLayers", architecture.num_layers),
                ("hiddenSize", architecture.hidden_size),
                ("numAttentionHeads", architecture.num_attention_heads),
                ("intermediateSize", architecture.intermediate_size),
                ("vocabSize", architecture.vocab_size),
            )
            if value is None
        ]
        if missing:
            raise ShapeError(
                f"model.architecture lacks {', '.join(missing)}: the worker builds real layers"
            )
        beyond = [
            alias
            for alias, value in (
                ("experts", architecture.experts),
                ("latentAttention", architecture.latent_attention),
                ("quantization", architecture.quantization),
            )
            if value is not None
        ]
        if beyond:
            raise ShapeError(
                f"model.architecture has {', '.join(beyond)}: the reference worker builds dense"
                " decoders only; serve this model with an engine (vLLM or SGLang)"
            )
        assert architecture.num_layers and architecture.hidden_size
        assert architecture.num_attention_heads and architecture.intermediate_size
        assert architecture.vocab_size and architecture.kv_heads
        head_dim = architecture.effective_head_dim
        assert head_dim
        return cls(
            num_layers=architecture.num_layers,
            hidden_size=architecture.hidden_size,
            num_heads=architecture.num_attention_heads,
            num_kv_heads=architecture.kv_heads,
            head_dim=head_dim,
            intermediate_size=architecture.intermediate_size,
            vocab_size=architecture.vocab_size,
            tie_word_embeddings=architecture.tie_word_embeddings,
        )

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ModelShape:
        """From the camelCase block of a spec or topology file, validated by ``paraserve.api``."""
        return cls.from_architecture(Architecture.model_validate(data))

    @classmethod
    def tiny(cls) -> ModelShape:
        return cls.from_wire(TINY_ARCHITECTURE)


@dataclass(frozen=True)
class Shard:
    """The slice of the model one tensor-parallel rank holds (Megatron column/row split)."""

    shape: ModelShape
    tp_size: int
    tp_rank: int

    def __post_init__(self) -> None:
        s, tp = self.shape, self.tp_size
        if s.num_heads % tp:
            raise ShapeError(f"numAttentionHeads={s.num_heads} is not divisible by tensor={tp}")
        if s.num_kv_heads % tp and tp % s.num_kv_heads:
            raise ShapeError(
                f"numKeyValueHeads={s.num_kv_heads} and tensor={tp}: neither divides the other"
            )
        if s.num_heads % s.num_kv_heads:
            raise ShapeError(
                f"numAttentionHeads={s.num_heads} is not a multiple of "
                f"numKeyValueHeads={s.num_kv_heads}"
            )
        if s.intermediate_size % tp:
            raise ShapeError(f"intermediateSize={s.intermediate_size} is not divisible by {tp}")

    @property
    def heads(self) -> int:
        return self.shape.num_heads // self.tp_size

    @property
    def head_start(self) -> int:
        return self.tp_rank * self.heads

    @property
    def kv_heads(self) -> int:
        """KV heads split when there are at least tensor of them, else one replicated per rank."""
        return max(self.shape.num_kv_heads // self.tp_size, 1)

    @property
    def kv_head_start(self) -> int:
        s = self.shape
        if s.num_kv_heads >= self.tp_size:
            return self.tp_rank * self.kv_heads
        # The query heads of this rank all read the same KV head.
        return self.tp_rank // (self.tp_size // s.num_kv_heads)

    @property
    def intermediate(self) -> int:
        return self.shape.intermediate_size // self.tp_size

    @property
    def vocab(self) -> int:
        """Vocabulary rows per rank; the vocabulary is padded up to a multiple of tensor."""
        return -(-self.shape.vocab_size // self.tp_size)

    @property
    def vocab_start(self) -> int:
        return self.tp_rank * self.vocab
