"""The weights one rank holds, matrix by matrix and part by part, in the checkpoint's formats.

Every linear layer is a matrix of (out × in) elements as the rank holds it: column-parallel
layers split `out` over the tensor-parallel ranks, row-parallel ones split `in`, replicated ones
stay whole (the layouts of vLLM's and SGLang's model code). A matrix in a quantized part takes
its format's bytes, scales included; everything else takes model.dtype's. docs/planner.md
("Weights by part") gives each formula with its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paraserve.api import (
    Architecture,
    AttentionBias,
    Dtype,
    Parallelism,
    QuantizationMethod,
    WeightPart,
    WeightsByPart,
)

# float32 scale per fp8 block (DeepSeek's weight_scale_inv); one uint8 exponent per 32 MXFP4
# values, which take 16 bytes (OCP Microscaling Formats v1.0, §5.3 and §6.3).
_FP8_SCALE_BYTES = 4
_MXFP4_GROUP = 32
_MXFP4_GROUP_BYTES = _MXFP4_GROUP // 2 + 1

PARTS = (
    "attention",
    "dense_mlp",
    "routed_experts",
    "shared_experts",
    "embeddings",
    "norms",
    "multi_token_prediction",
)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class _Part:
    plain: int = 0  # elements stored in model.dtype
    quantized_bytes: int = 0  # bytes of quantized matrices, values and scales
    quantized: int = 0  # elements stored quantized


@dataclass
class RankWeights:
    """Elements and bytes per part of one rank's weights."""

    dtype: Dtype
    parts: dict[str, _Part] = field(default_factory=lambda: {name: _Part() for name in PARTS})

    def params(self, part: str | None = None) -> int:
        chosen = [self.parts[part]] if part else self.parts.values()
        return sum(p.plain + p.quantized for p in chosen)

    def bytes(self, part: str) -> int:
        p = self.parts[part]
        return self.dtype.bytes_for(p.plain) + p.quantized_bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes(part) for part in PARTS)

    def by_part(self) -> WeightsByPart:
        return WeightsByPart(**{f"{part}_bytes": self.bytes(part) for part in PARTS})


@dataclass(frozen=True)
class _Format:
    """How a quantized matrix is stored."""

    method: QuantizationMethod
    block: tuple[int, int] | None

    def matrix_bytes(self, out: int, in_: int) -> int:
        if self.method is QuantizationMethod.MXFP4:
            # Groups of 32 run along the input dimension; a partial group is padded.
            return out * ceil_div(in_, _MXFP4_GROUP) * _MXFP4_GROUP_BYTES
        if self.block is None:
            return out * in_ + _FP8_SCALE_BYTES
        rows, cols = self.block
        return out * in_ + ceil_div(out, rows) * ceil_div(in_, cols) * _FP8_SCALE_BYTES


class _Tally:
    """Adds matrices and vectors to a RankWeights, each in its part's format."""

    def __init__(self, arch: Architecture, dtype: Dtype) -> None:
        self.arch = arch
        self.weights = RankWeights(dtype=dtype)
        q = arch.quantization
        self.format = (
            _Format(q.method, tuple(q.block_size) if q.block_size else None)  # type: ignore[arg-type]
            if q
            else None
        )

    def matrix(
        self, part: str, out: int, in_: int, *, quantized: WeightPart | None = None, count: int = 1
    ) -> None:
        """``count`` matrices of out × in elements; stored quantized when ``quantized`` is."""
        if count <= 0 or out <= 0 or in_ <= 0:
            return
        bucket = self.weights.parts[part]
        if quantized is not None and self.format is not None and self.arch.quantizes(quantized):
            bucket.quantized += count * out * in_
            bucket.quantized_bytes += count * self.format.matrix_bytes(out, in_)
        else:
            bucket.plain += count * out * in_

    def vector(self, part: str, size: int, *, count: int = 1) -> None:
        """Norm weights, biases, sinks: always model.dtype."""
        if count > 0 and size > 0:
            self.weights.parts[part].plain += count * size


def stage_weights(
    arch: Architecture,
    dtype: Dtype,
    parallelism: Parallelism,
    *,
    start: int,
    end: int,
    first: bool,
    last: bool,
    multi_token_prediction: bool = False,
) -> RankWeights:
    """The weights of the worst rank of the stage holding layers [start, end)."""
    tally = _Tally(arch, dtype)
    hidden = arch.hidden_size or 0
    vocab = arch.vocab_size or 0
    layers = end - start
    moe = arch.moe_layers_in(start, end)
    _attention(tally, arch, parallelism, "attention", count=layers)
    _dense_mlp(tally, arch, parallelism, "dense_mlp", count=layers - moe)
    _experts(tally, arch, parallelism, count=moe)
    tally.vector("norms", hidden, count=layers * arch.layer_norms)
    tp = parallelism.tensor
    if first:
        tally.matrix("embeddings", 1, ceil_div(vocab * hidden, tp))
    if last:
        if not (arch.tie_word_embeddings and parallelism.pipeline == 1):
            tally.matrix("embeddings", 1, ceil_div(vocab * hidden, tp))
        tally.vector("norms", hidden)
        if multi_token_prediction:
            _multi_token_prediction(tally, arch, parallelism)
    return tally.weights


def _attention(tally: _Tally, arch: Architecture, p: Parallelism, part: str, *, count: int) -> None:
    hidden = arch.hidden_size or 0
    tp = p.tensor
    heads = ceil_div(arch.num_attention_heads or 0, tp)
    quantized = WeightPart.ATTENTION
    mla = arch.latent_attention
    if mla is not None:
        # q_a and kv_a are replicated (every rank needs the whole latent); q_b, kv_b split by
        # heads (column-parallel); o is row-parallel. The latent norms are replicated.
        if mla.q_lora_rank:
            tally.matrix(part, mla.q_lora_rank, hidden, quantized=quantized, count=count)
            tally.vector(part, mla.q_lora_rank, count=count)
            tally.matrix(
                part, heads * mla.qk_head_dim, mla.q_lora_rank, quantized=quantized, count=count
            )
        else:
            tally.matrix(part, heads * mla.qk_head_dim, hidden, quantized=quantized, count=count)
        tally.matrix(part, mla.cached_dim, hidden, quantized=quantized, count=count)
        tally.vector(part, mla.kv_lora_rank, count=count)
        tally.matrix(
            part,
            heads * (mla.qk_nope_head_dim + mla.v_head_dim),
            mla.kv_lora_rank,
            quantized=quantized,
            count=count,
        )
        tally.matrix(part, hidden, heads * mla.v_head_dim, quantized=quantized, count=count)
        return
    head_dim = arch.effective_head_dim or 0
    kv = ceil_div(arch.kv_heads or 0, tp)  # 1 when tensor > KV heads: replicated
    tally.matrix(part, heads * head_dim, hidden, quantized=quantized, count=count)  # q
    tally.matrix(part, kv * head_dim, hidden, quantized=quantized, count=2 * count)  # k, v
    tally.matrix(part, hidden, heads * head_dim, quantized=quantized, count=count)  # o
    if arch.attention_bias not in (None, AttentionBias.NONE):
        tally.vector(part, (heads + 2 * kv) * head_dim, count=count)
    if arch.attention_bias is AttentionBias.ALL:
        tally.vector(part, hidden, count=count)  # o's bias is whole on every rank
    if arch.attention_sinks:
        tally.vector(part, heads, count=count)
    if arch.qk_norm:
        tally.vector(part, 2 * head_dim, count=count)


def _dense_mlp(tally: _Tally, arch: Architecture, p: Parallelism, part: str, *, count: int) -> None:
    hidden = arch.hidden_size or 0
    intermediate = ceil_div(arch.intermediate_size or 0, p.tensor)
    quantized = WeightPart.DENSE_MLP
    tally.matrix(part, intermediate, hidden, quantized=quantized, count=2 * count)  # gate, up
    tally.matrix(part, hidden, intermediate, quantized=quantized, count=count)  # down


def _experts(tally: _Tally, arch: Architecture, p: Parallelism, *, count: int) -> None:
    experts = arch.experts
    if experts is None or count <= 0:
        return
    hidden = arch.hidden_size or 0
    # The router is replicated: every rank scores every expert for its tokens.
    tally.matrix("routed_experts", experts.routed, hidden, count=count)
    if experts.router_bias:
        tally.vector("routed_experts", experts.routed, count=count)
    # EP ranks split the routed experts; each expert is tensor-parallel over TP/EP ranks.
    local = ceil_div(experts.routed, p.expert) * count
    size = ceil_div(experts.intermediate_size, p.expert_tensor)
    routed = WeightPart.ROUTED_EXPERTS
    tally.matrix("routed_experts", size, hidden, quantized=routed, count=2 * local)
    tally.matrix("routed_experts", hidden, size, quantized=routed, count=local)
    if experts.expert_bias:
        tally.vector("routed_experts", 2 * size + hidden, count=local)
    shared = ceil_div(experts.shared_size, p.tensor)
    quantized = WeightPart.SHARED_EXPERTS
    tally.matrix("shared_experts", shared, hidden, quantized=quantized, count=2 * count)
    tally.matrix("shared_experts", hidden, shared, quantized=quantized, count=count)


def _multi_token_prediction(tally: _Tally, arch: Architecture, p: Parallelism) -> None:
    """DeepSeek-V3's MTP module (§2.2 of its report; vLLM's deepseek_mtp.py): enorm and hnorm,
    eh_proj (2H → H, replicated), one decoder layer, and its own embedding and shared head."""
    hidden = arch.hidden_size or 0
    vocab = arch.vocab_size or 0
    part = "multi_token_prediction"
    n = arch.multi_token_prediction_layers
    if n <= 0:
        return
    # Tally the module's decoder layer into a scratch tally, then move it into the MTP part.
    scratch = _Tally(arch, tally.weights.dtype)
    num_layers = arch.num_layers or 0
    moe = sum(1 for i in range(n) if arch.is_moe_layer(num_layers + i))
    _attention(scratch, arch, p, part, count=n)
    _dense_mlp(scratch, arch, p, part, count=n - moe)
    _experts(scratch, arch, p, count=moe)
    target = tally.weights.parts[part]
    for bucket in scratch.weights.parts.values():
        target.plain += bucket.plain
        target.quantized += bucket.quantized
        target.quantized_bytes += bucket.quantized_bytes
    tally.vector(part, hidden, count=n * (arch.layer_norms + 3))  # + enorm, hnorm, head norm
    tally.matrix(part, hidden, 2 * hidden, count=n)  # eh_proj
    tally.matrix(part, 1, ceil_div(vocab * hidden, p.tensor), count=2 * n)  # embedding, head


# --- whole-model counts, for `paraserve architecture` and the published totals ---------------


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of the whole model (every rank's share added up, nothing replicated)."""

    total: int
    active: int  # per token: all but the routed experts a token is not sent to, and the lookup
    multi_token_prediction: int
    by_part: dict[str, int]
    checkpoint_bytes: int


def parameter_count(arch: Architecture, dtype: Dtype = Dtype.BFLOAT16) -> ParameterCount:
    """The model's parameters and checkpoint size, as one unsharded rank holds them."""
    whole = Parallelism()
    num_layers = arch.num_layers or 0
    weights = stage_weights(
        arch,
        dtype,
        whole,
        start=0,
        end=num_layers,
        first=True,
        last=True,
        multi_token_prediction=True,
    )
    # One rank with PP = 1 ties the head to the embedding; count the head only when untied.
    by_part = {part: weights.params(part) for part in PARTS}
    mtp = by_part.pop("multi_token_prediction")
    total = sum(by_part.values())
    experts = arch.experts
    unused = 0
    if experts is not None:
        moe = arch.moe_layers_in(0, num_layers)
        per_expert = 3 * (arch.hidden_size or 0) * experts.intermediate_size
        if experts.expert_bias:
            per_expert += 2 * experts.intermediate_size + (arch.hidden_size or 0)
        unused = moe * (experts.routed - experts.per_token) * per_expert
    embedding = (arch.vocab_size or 0) * (arch.hidden_size or 0)
    return ParameterCount(
        total=total,
        active=total - unused - embedding,
        multi_token_prediction=mtp,
        by_part=by_part,
        checkpoint_bytes=weights.total_bytes,
    )
