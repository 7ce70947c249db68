"""The per-rank memory model: weights by part, KV cache, activations and overhead.

The formulas: docs/planner.md ("Memory model"); where it sits: docs/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from paraserve.api import Architecture, Dtype, InferenceDeploymentSpec, MemoryBreakdown, Parallelism
from paraserve.api.rank_layout import stage_layer_counts
from paraserve.planner.weights import ceil_div, stage_weights

# Logits of the sampled position are kept in float32 whatever the weight type.
_LOGIT_BYTES = 4

_ceil_div = ceil_div


@dataclass(frozen=True)
class StageShape:
    """What a stage holds: its layers [start, start + layers) and whether it is first or last."""

    index: int
    layers: int
    first: bool
    last: bool
    start: int = 0

    @property
    def end(self) -> int:
        return self.start + self.layers


@lru_cache(maxsize=1024)  # pure; --suggest asks for the same few hundred shapes again and again
def stage_shapes(num_layers: int | None, pipeline: int) -> tuple[StageShape, ...]:
    counts = stage_layer_counts(num_layers, pipeline) if num_layers else (0,) * pipeline
    starts = [sum(counts[:s]) for s in range(pipeline)]
    return tuple(
        StageShape(index=s, layers=n, first=s == 0, last=s == pipeline - 1, start=starts[s])
        for s, n in enumerate(counts)
    )


def activation_bytes_per_token(
    spec: InferenceDeploymentSpec, tensor: int, stage: StageShape | None = None
) -> int:
    """Live elements per token of one decoder layer's prefill, × activation bytes (docs/planner.md).

    Inference keeps no activations for a backward pass, so only one layer's transient tensors
    are live: the residual stream and its normed copy (2H), the attention projections
    ((A/tp + 2·kv)·d, or MLA's), and the MLP's gate and up projections (2·I/tp; for an MoE
    layer those of the k experts a token visits and of the shared experts). Flash-style
    attention never materialises the s×s scores. After Korthikanti et al. 2022, §4.
    """
    arch = spec.model.architecture
    assert arch is not None and arch.is_complete
    p = spec.parallelism
    parallelism = p if p.tensor == tensor else p.model_copy(update={"tensor": tensor})
    hidden = arch.hidden_size or 0
    elements = (
        2 * hidden + _attention_elements(arch, tensor) + _mlp_elements(arch, parallelism, stage)
    )
    return elements * activation_dtype(spec.model.dtype).bits // 8


def _attention_elements(arch: Architecture, tensor: int) -> int:
    heads = _ceil_div(arch.num_attention_heads or 0, tensor)
    mla = arch.latent_attention
    if mla is not None:
        # q, the cached latent, and k_nope and v expanded from it for the rank's heads.
        return (
            heads * mla.qk_head_dim
            + mla.cached_dim
            + heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        )
    kv = _ceil_div(arch.kv_heads or 0, tensor)
    return (heads + 2 * kv) * (arch.effective_head_dim or 0)


def _mlp_elements(arch: Architecture, p: Parallelism, stage: StageShape | None) -> int:
    """The larger of a dense layer's and an MoE layer's MLP live set, among the stage's layers."""
    dense = 2 * _ceil_div(arch.intermediate_size or 0, p.tensor)
    experts = arch.experts
    if experts is None:
        return dense
    start, end = (stage.start, stage.end) if stage else (0, arch.num_layers or 0)
    moe_layers = arch.moe_layers_in(start, end)
    sizes = []
    if moe_layers:
        sizes.append(
            2 * experts.per_token * _ceil_div(experts.intermediate_size, p.expert_tensor)
            + 2 * _ceil_div(experts.shared_size, p.tensor)
        )
    if moe_layers < end - start or not sizes:
        sizes.append(dense)
    return max(sizes)


def activation_dtype(weights: Dtype) -> Dtype:
    """Quantised weights are dequantised to 16-bit for compute; float32 stays float32."""
    return Dtype.FLOAT32 if weights is Dtype.FLOAT32 else Dtype.FLOAT16


def kv_cache_elements_per_token(arch: Architecture, tensor: int) -> int:
    """KV cache elements per token and layer on one rank.

    Grouped-query attention caches a key and a value per KV head of the rank; MLA caches one
    latent (kvLoraRank + qkRopeHeadDim) that every tensor-parallel rank holds whole.
    """
    mla = arch.latent_attention
    if mla is not None:
        return mla.cached_dim
    return 2 * _ceil_div(arch.kv_heads or 0, tensor) * (arch.effective_head_dim or 0)


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
    by_part = None
    if arch is not None and arch.is_complete:
        mtp = (
            spec.serving.multi_token_prediction
            and arch.multi_token_prediction_layers > 0
            and stage.last
        )
        held = stage_weights(
            arch,
            model.dtype,
            parallelism,
            start=stage.start,
            end=stage.end,
            first=stage.first,
            last=stage.last,
            multi_token_prediction=mtp,
        )
        weights = held.total_bytes
        by_part = held.by_part()
        tokens = spec.serving.max_batch_size * spec.serving.max_sequence_length
        cached_layers = stage.layers + (arch.multi_token_prediction_layers if mtp else 0)
        kv_cache = model.kv_dtype.bytes_for(
            cached_layers * kv_cache_elements_per_token(arch, tp) * tokens
        )
        activations = _ceil_div(
            tokens * activation_bytes_per_token(spec, tp, stage), parallelism.sequence
        )
        if stage.last:
            vocab = arch.vocab_size or 0
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
        weights_by_part=by_part,
    )


class StageMemories:
    """`stage_memory` for one spec under many parallelisms, each distinct stage computed once.

    `suggest` plans the same spec with every (PP, TP, SP, EP) that fits: 560 plans of 2,121
    stage breakdowns for Llama-2-70B on 5,000 nodes, of which 343 differ. The key is what
    `stage_memory` reads of the parallelism and the stage; everything else it reads (model,
    serving, memory, GPU) is the spec's, the same for every plan asked of one instance.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[object, ...], MemoryBreakdown] = {}

    def get(
        self,
        spec: InferenceDeploymentSpec,
        parallelism: Parallelism,
        stage: StageShape,
        moe_layers: int,
        gpu_memory_bytes: int | None,
    ) -> MemoryBreakdown:
        """``stage_memory(spec, parallelism, stage, gpu_memory_bytes)``; ``moe_layers``: the
        stage's MoE layers (its start and end matter only through them)."""
        arch = spec.model.architecture
        exact = arch is not None and arch.is_complete
        key = (
            # Exact: PP matters only as "one stage" (the head tied to the embedding);
            # coarse: the parameters spread over PP × TP ranks.
            parallelism.pipeline == 1 if exact else parallelism.pipeline,
            parallelism.tensor,
            parallelism.sequence,
            parallelism.expert,
            stage.layers,
            moe_layers,
            stage.first,
            stage.last,
            gpu_memory_bytes,
        )
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = stage_memory(spec, parallelism, stage, gpu_memory_bytes)
        return known


def worst(breakdowns: list[MemoryBreakdown]) -> tuple[int, MemoryBreakdown]:
    """The stage index and memory of the rank that needs the most (first on ties)."""
    totals = [breakdown.total_bytes for breakdown in breakdowns]
    index = totals.index(max(totals))
    return index, breakdowns[index]
