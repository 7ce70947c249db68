"""The per-rank memory model: weights, KV cache, activations and overhead.

The formulas: docs/planner.md ("Memory model"); where it sits: docs/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from paraserve.api import Dtype, InferenceDeploymentSpec, MemoryBreakdown, Parallelism
from paraserve.api.rank_layout import stage_layer_counts

# Logits of the sampled position are kept in float32 whatever the weight type.
_LOGIT_BYTES = 4


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class StageShape:
    """What a stage holds: its layers and whether it is the first and/or the last."""

    index: int
    layers: int
    first: bool
    last: bool


def stage_shapes(num_layers: int | None, pipeline: int) -> tuple[StageShape, ...]:
    counts = stage_layer_counts(num_layers, pipeline) if num_layers else (0,) * pipeline
    return tuple(
        StageShape(index=s, layers=n, first=s == 0, last=s == pipeline - 1)
        for s, n in enumerate(counts)
    )


def activation_bytes_per_token(spec: InferenceDeploymentSpec, tensor: int) -> int:
    """Live elements per token of one decoder layer's prefill, × activation bytes (docs/planner.md).

    Inference keeps no activations for a backward pass, so only one layer's transient tensors
    are live: the residual stream and its normed copy (2H), the q/k/v projections
    ((A/tp + 2·kv)·d) and the gated MLP's gate and up projections (2·I/tp). Flash-style
    attention never materialises the s×s scores. After Korthikanti et al. 2022, §4.
    """
    arch = spec.model.architecture
    assert arch is not None and arch.is_complete
    hidden = arch.hidden_size or 0
    heads = _ceil_div(arch.num_attention_heads or 0, tensor)
    kv = _ceil_div(arch.kv_heads or 0, tensor)
    head_dim = arch.effective_head_dim or 0
    intermediate = _ceil_div(arch.intermediate_size or 0, tensor)
    elements = 2 * hidden + (heads + 2 * kv) * head_dim + 2 * intermediate
    return elements * activation_dtype(spec.model.dtype).bits // 8


def activation_dtype(weights: Dtype) -> Dtype:
    """Quantised weights are dequantised to 16-bit for compute; float32 stays float32."""
    return Dtype.FLOAT32 if weights is Dtype.FLOAT32 else Dtype.FLOAT16


def stage_memory(
    spec: InferenceDeploymentSpec,
    parallelism: Parallelism,
    stage: StageShape,
    gpu_memory_bytes: int | None,
) -> MemoryBreakdown:
    """Memory of the worst rank of one stage."""
    model = spec.model
    pp, tp = parallelism.pipeline, parallelism.tensor
    arch = model.architecture
    if arch is not None and arch.is_complete:
        hidden = arch.hidden_size or 0
        heads = _ceil_div(arch.num_attention_heads or 0, tp)
        kv = _ceil_div(arch.kv_heads or 0, tp)  # 1 when tensor > KV heads: replicated
        head_dim = arch.effective_head_dim or 0
        intermediate = _ceil_div(arch.intermediate_size or 0, tp)
        vocab = arch.vocab_size or 0
        per_layer = (
            hidden * heads * head_dim  # q
            + 2 * hidden * kv * head_dim  # k, v
            + heads * head_dim * hidden  # o
            + 3 * hidden * intermediate  # gate, up, down
            + 2 * hidden  # two norms
        )
        params = stage.layers * per_layer
        if stage.first:
            params += _ceil_div(vocab * hidden, tp)  # embedding
        if stage.last:
            if not (arch.tie_word_embeddings and pp == 1):
                params += _ceil_div(vocab * hidden, tp)  # LM head
            params += hidden  # final norm
        weights = model.dtype.bytes_for(params)
        tokens = spec.serving.max_batch_size * spec.serving.max_sequence_length
        kv_cache = model.kv_dtype.bytes_for(2 * stage.layers * kv * head_dim * tokens)
        activations = _ceil_div(tokens * activation_bytes_per_token(spec, tp), parallelism.sequence)
        if stage.last:
            activations += spec.serving.max_batch_size * _ceil_div(vocab, tp) * _LOGIT_BYTES
    else:
        # Coarse: the parameters spread evenly over pp × tp ranks; overhead carries the rest.
        weights = _ceil_div((model.parameters or 0) * model.dtype.bits, 8 * pp * tp)
        kv_cache = activations = 0
    overhead = spec.memory.overhead_per_gpu
    total = weights + kv_cache + activations + overhead
    return MemoryBreakdown(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache,
        activations_bytes=activations,
        overhead_bytes=overhead,
        total_bytes=total,
        gpu_memory_bytes=gpu_memory_bytes,
        utilization=total / gpu_memory_bytes if gpu_memory_bytes else None,
        limit=spec.gpu.max_memory_utilization,
    )


def worst(breakdowns: list[MemoryBreakdown]) -> tuple[int, MemoryBreakdown]:
    """The stage index and memory of the rank that needs the most (first on ties)."""
    index = max(range(len(breakdowns)), key=lambda i: (breakdowns[i].total_bytes, -i))
    return index, breakdowns[index]
