"""The planner's rules as pure functions, each a Check whose message shows the arithmetic.

The rules and their order: docs/planner.md ("Rules, in order"); where they sit: docs/design.md.
"""

from __future__ import annotations

from paraserve.api import (
    Check,
    InferenceDeploymentSpec,
    MemoryBreakdown,
    Parallelism,
    QuantizationMethod,
    WeightPart,
    format_bytes,
)
from paraserve.api import format_percent as pct
from paraserve.api.spec import MAX_WORLD_SIZE
from paraserve.planner import codes
from paraserve.planner.pool import Pool


def passed(code: str, message: str) -> Check:
    return Check(code=code, outcome="passed", message=message)


def failed(code: str, message: str) -> Check:
    return Check(code=code, outcome="failed", message=message)


def warning(code: str, message: str) -> Check:
    return Check(code=code, outcome="warning", message=message)


def skipped(code: str, message: str) -> Check:
    return Check(code=code, outcome="skipped", message=message)


def gpu_arithmetic(spec: InferenceDeploymentSpec) -> str:
    """``PP=8 × TP=2 = 16 GPUs required`` (with ``N replicas ×`` in front when not 1)."""
    p = spec.parallelism
    replicas = f"{spec.replicas} replica{'s' if spec.replicas != 1 else ''} × "
    head = replicas if spec.replicas != 1 else ""
    gpus = spec.gpus_required
    return f"{head}PP={p.pipeline} × TP={p.tensor} = {gpus} GPU{'s' if gpus != 1 else ''} required"


def strategy(p: Parallelism) -> str:
    """``PP=4 × TP=2 × SP=2``, with ``× EP=…`` when expert parallelism is on."""
    label = f"PP={p.pipeline} × TP={p.tensor} × SP={p.sequence}"
    return label + (f" × EP={p.expert}" if p.expert > 1 else "")


# --- static checks (InvalidParallelism) ---------------------------------------------------


def degrees(spec: InferenceDeploymentSpec) -> Check:
    p = spec.parallelism
    named = {"pipeline": p.pipeline, "tensor": p.tensor, "sequence": p.sequence}
    bad = [f"{name} must be ≥ 1, got {value}" for name, value in named.items() if value < 1]
    if bad:
        return failed(codes.INVALID_PARALLELISM, "; ".join(bad))
    return passed(
        codes.INVALID_PARALLELISM, f"PP={p.pipeline}, TP={p.tensor}, SP={p.sequence}: all ≥ 1"
    )


def world_size(spec: InferenceDeploymentSpec) -> Check:
    """A replica's ranks within the ceiling: beyond it no cluster holds the gang, and its
    topology and status would not fit an object."""
    p = spec.parallelism
    ranks = p.pipeline * p.tensor
    if ranks > MAX_WORLD_SIZE:
        return failed(
            codes.INVALID_PARALLELISM,
            f"PP={p.pipeline} × TP={p.tensor} = {ranks} ranks per replica; at most"
            f" {MAX_WORLD_SIZE} (beyond any real cluster's gang)",
        )
    return passed(
        codes.INVALID_PARALLELISM,
        f"PP={p.pipeline} × TP={p.tensor} = {ranks} ranks per replica ≤ {MAX_WORLD_SIZE}",
    )


def sequence(spec: InferenceDeploymentSpec) -> Check:
    p = spec.parallelism
    if p.sequence == 1:
        return passed(codes.INVALID_PARALLELISM, "SP=1: no sequence parallelism")
    if p.sequence == p.tensor:
        return passed(
            codes.INVALID_PARALLELISM,
            f"SP={p.sequence} = TP={p.tensor}: shards activations inside each TP group,"
            " adding no GPUs",
        )
    return failed(
        codes.INVALID_PARALLELISM,
        f"SP={p.sequence} must be 1 or equal to TP={p.tensor}: sequence parallelism shards"
        " activations inside the tensor-parallel group",
    )


def attention_heads(spec: InferenceDeploymentSpec) -> Check:
    arch = spec.model.architecture
    tp = spec.parallelism.tensor
    heads = arch.num_attention_heads if arch else None
    if heads is None:
        return skipped(codes.INVALID_PARALLELISM, "numAttentionHeads unknown: not checked")
    if heads % tp:
        return failed(
            codes.INVALID_PARALLELISM,
            f"numAttentionHeads={heads} is not divisible by TP={tp}"
            f" ({heads} = {heads // tp} × {tp} + {heads % tp})",
        )
    return passed(
        codes.INVALID_PARALLELISM,
        f"numAttentionHeads={heads} ÷ TP={tp} = {heads // tp} heads per rank",
    )


def key_value_heads(spec: InferenceDeploymentSpec) -> Check:
    arch = spec.model.architecture
    tp = spec.parallelism.tensor
    if arch is not None and arch.latent_attention is not None:
        mla = arch.latent_attention
        return passed(
            codes.INVALID_PARALLELISM,
            f"MLA: one latent per token (kvLoraRank {mla.kv_lora_rank} + qkRopeHeadDim"
            f" {mla.qk_rope_head_dim} = {mla.cached_dim}), held whole by each of the TP={tp} ranks",
        )
    kv = arch.kv_heads if arch else None
    if kv is None:
        return skipped(codes.INVALID_PARALLELISM, "numKeyValueHeads unknown: not checked")
    if kv % tp == 0:
        return passed(
            codes.INVALID_PARALLELISM,
            f"numKeyValueHeads={kv} ÷ TP={tp} = {kv // tp} KV heads per rank",
        )
    if tp % kv == 0:
        return passed(
            codes.INVALID_PARALLELISM,
            f"TP={tp} ÷ numKeyValueHeads={kv} = {tp // kv}: each rank keeps one replicated KV head",
        )
    return failed(
        codes.INVALID_PARALLELISM,
        f"numKeyValueHeads={kv} and TP={tp}: neither divides the other"
        f" ({kv} mod {tp} = {kv % tp}, {tp} mod {kv} = {tp % kv})",
    )


def layers(spec: InferenceDeploymentSpec) -> Check:
    arch = spec.model.architecture
    pp = spec.parallelism.pipeline
    num_layers = arch.num_layers if arch else None
    if num_layers is None:
        return skipped(codes.INVALID_PARALLELISM, "numLayers unknown: stages have no layer ranges")
    if pp > num_layers:
        return failed(
            codes.INVALID_PARALLELISM,
            f"PP={pp} > numLayers={num_layers}: {pp - num_layers} stage"
            f"{'s' if pp - num_layers != 1 else ''} would hold no layer",
        )
    base, extra = divmod(num_layers, pp)
    per_stage = f"{base}" if not extra else f"{base + 1} (first {extra}) or {base}"
    return passed(
        codes.INVALID_PARALLELISM,
        f"PP={pp} ≤ numLayers={num_layers}: {per_stage} layers per stage",
    )


def unresolved_architecture(spec: InferenceDeploymentSpec) -> Check | None:
    """A spec naming architectureFrom must be resolved (its ConfigMap read) before planning."""
    source = spec.model.architecture_from
    if source is None or spec.model.architecture is not None:
        return None
    ref = source.config_map_key_ref
    return failed(
        codes.UNRESOLVED_ARCHITECTURE,
        f"model.architectureFrom names ConfigMap {ref.name!r} key {ref.key!r}, not read before"
        " planning; write model.architecture instead (`paraserve architecture CONFIG.json`"
        " prints it)",
    )


# --- expert parallelism (InvalidExpertParallelism) -----------------------------------------


def expert_parallelism(spec: InferenceDeploymentSpec) -> list[Check]:
    """EP's rules; none at all for a model without experts planned without EP."""
    p = spec.parallelism
    arch = spec.model.architecture
    experts = arch.experts if arch else None
    if p.expert == 1 and experts is None:
        return []
    code = codes.INVALID_EXPERT_PARALLELISM
    checks = [_expert_divides_tensor(p)]
    if experts is None:
        if arch is not None and arch.is_complete:
            checks.append(
                failed(code, f"EP={p.expert}, but the architecture has no experts to shard")
            )
        else:
            checks.append(skipped(code, "experts unknown: EP not checked against them"))
        return checks
    if checks[0].outcome == "failed":
        return checks
    if experts.routed % p.expert:
        checks.append(
            failed(
                code,
                f"experts.routed={experts.routed} is not divisible by EP={p.expert}"
                f" ({experts.routed} = {experts.routed // p.expert} × {p.expert}"
                f" + {experts.routed % p.expert}): every EP rank must hold as many experts",
            )
        )
    else:
        checks.append(
            passed(
                code,
                f"experts.routed={experts.routed} ÷ EP={p.expert}"
                f" = {experts.routed // p.expert} routed experts per rank",
            )
        )
    checks.append(_expert_tensor_split(spec))
    return checks


def _expert_divides_tensor(p: Parallelism) -> Check:
    code = codes.INVALID_EXPERT_PARALLELISM
    if p.expert == 1:
        return passed(
            code, f"EP=1: each routed expert is tensor-parallel over the TP={p.tensor} ranks"
        )
    if p.expert > p.tensor or p.tensor % p.expert:
        return failed(
            code,
            f"EP={p.expert} must divide TP={p.tensor}: expert parallelism splits the routed experts"
            " inside each stage's tensor-parallel group (EP × expert-TP = TP, as SGLang's"
            " --ep-size; vLLM's --enable-expert-parallel is EP = TP); it adds no GPUs and never"
            " spans replicas, which are separate gangs",
        )
    return passed(
        code,
        f"EP={p.expert} divides TP={p.tensor}: each expert is tensor-parallel over"
        f" TP/EP = {p.expert_tensor} rank{'s' if p.expert_tensor != 1 else ''}; no GPUs added",
    )


def _expert_tensor_split(spec: InferenceDeploymentSpec) -> Check:
    """The expert's intermediate size splits evenly over expert-TP (and whole fp8 blocks)."""
    code = codes.INVALID_EXPERT_PARALLELISM
    p = spec.parallelism
    arch = spec.model.architecture
    assert arch is not None and arch.experts is not None
    size, etp = arch.experts.intermediate_size, p.expert_tensor
    if etp == 1:
        return passed(code, f"expert-TP=1: every rank holds its experts whole ({size} wide)")
    if size % etp:
        return failed(
            code,
            f"experts.intermediateSize={size} is not divisible by expert-TP = TP/EP = {etp}"
            f" ({size} mod {etp} = {size % etp})",
        )
    shard = size // etp
    q = arch.quantization
    if (
        q is not None
        and q.method is QuantizationMethod.FP8
        and q.block_size
        and WeightPart.ROUTED_EXPERTS in q.parts
        and shard % q.block_size[0]
    ):
        return failed(
            code,
            f"experts.intermediateSize={size} ÷ expert-TP={etp} = {shard}, not a whole number of"
            f" fp8 blocks of {q.block_size[0]}: raise EP (fewer splits per expert)",
        )
    return passed(code, f"experts.intermediateSize={size} ÷ expert-TP={etp} = {shard} per rank")


# --- pool checks, in the documented order -----------------------------------------------


def matching_nodes(spec: InferenceDeploymentSpec, pool: Pool) -> Check:
    if pool.nodes:
        n = len(pool.nodes)
        return passed(
            codes.NO_MATCHING_NODES,
            f'pool "{pool.name}": {n} node{"s" if n != 1 else ""},'
            f" {pool.allocatable} allocatable GPUs ({pool.describe()})",
        )
    ex = pool.excluded
    reasons = [
        (ex.not_selected, "not matching nodeSelector"),
        (ex.cordoned, "cordoned"),
        (ex.tainted, "with untolerated NoSchedule/NoExecute taints"),
        (ex.without_gpus, f"without allocatable {spec.gpu.resource_name}"),
    ]
    why = ", ".join(f"{count} {reason}" for count, reason in reasons if count)
    seen = f"{ex.total} node{'s' if ex.total != 1 else ''} seen" + (f": {why}" if why else "")
    return failed(codes.NO_MATCHING_NODES, f'pool "{pool.name}" is empty ({seen})')


def tensor_within_node(spec: InferenceDeploymentSpec, pool: Pool) -> Check:
    tp = spec.parallelism.tensor
    if not spec.placement.tensor_parallel_within_node:
        return skipped(
            codes.TENSOR_PARALLEL_EXCEEDS_NODE,
            "tensorParallelWithinNode is false: TP may span nodes",
        )
    if tp > pool.largest_node:
        return failed(
            codes.TENSOR_PARALLEL_EXCEEDS_NODE,
            f"TP={tp} > {pool.largest_node} allocatable GPUs on the largest node of pool"
            f' "{pool.name}": with tensorParallelWithinNode a TP group must fit on one node',
        )
    return passed(
        codes.TENSOR_PARALLEL_EXCEEDS_NODE,
        f"TP={tp} ≤ {pool.largest_node} GPUs on the largest node",
    )


def capacity(spec: InferenceDeploymentSpec, pool: Pool, *, free: bool = False) -> Check:
    """InsufficientGPUs against allocatable GPUs, or InsufficientFreeGPUs against free ones."""
    tp = spec.parallelism.tensor
    groups_needed = spec.replicas * spec.parallelism.pipeline
    code = codes.INSUFFICIENT_FREE_GPUS if free else codes.INSUFFICIENT_GPUS
    have = pool.free if free else pool.allocatable
    held = (
        f"{pool.free} free of {pool.allocatable} allocatable"
        if free
        else f"{pool.allocatable} allocatable"
    )
    message = f'{gpu_arithmetic(spec)}; pool "{pool.name}" has {held} ({pool.describe(free=free)})'
    if spec.placement.tensor_parallel_within_node:
        fit = pool.groups_that_fit(tp, free=free)
        ok = fit >= groups_needed
        if tp > 1 or not ok:
            message += (
                f", which hold{'s' if have == 1 else ''} {fit} TP group{'s' if fit != 1 else ''}"
                f" of {tp} within nodes (Σ⌊GPUs/{tp}⌋ = {fit}); {groups_needed} needed"
            )
    else:
        ok = have >= spec.gpus_required
    if ok:
        return passed(code, message)
    if free:
        return warning(code, message + ": waiting for GPUs to be freed")
    return failed(code, message)


def memory_limit(spec: InferenceDeploymentSpec, worst_stage: int, memory: MemoryBreakdown) -> Check:
    total = format_bytes(memory.total_bytes)
    if memory.gpu_memory_bytes is None or memory.utilization is None:
        return warning(
            codes.UNKNOWN_GPU_MEMORY,
            f"GPU memory unknown (set spec.gpu.memory or label the nodes nvidia.com/gpu.memory"
            f" in MiB): memory check skipped; the worst rank needs {total}",
        )
    parts = [
        ("weights", memory.weights_bytes),
        ("KV cache", memory.kv_cache_bytes),
        ("activations", memory.activations_bytes),
        ("overhead", memory.overhead_bytes),
    ]
    sum_text = " + ".join(f"{format_bytes(v)} {name}" for name, v in parts if v)
    by_part = memory.weights_by_part
    if by_part is not None and by_part.routed_experts_bytes:
        named = [
            ("routed experts", by_part.routed_experts_bytes),
            ("shared experts", by_part.shared_experts_bytes),
            ("attention", by_part.attention_bytes),
            ("dense MLP", by_part.dense_mlp_bytes),
            ("embeddings", by_part.embeddings_bytes),
            ("MTP", by_part.multi_token_prediction_bytes),
        ]
        inner = ", ".join(f"{name} {format_bytes(v)}" for name, v in named if v)
        weights = f"{format_bytes(memory.weights_bytes)} weights"
        sum_text = sum_text.replace(weights, f"{weights} ({inner})", 1)
    gpu = format_bytes(memory.gpu_memory_bytes)
    message = (
        f"worst rank (stage {worst_stage}): {sum_text} = {total};"
        f" {total} / {gpu} = {pct(memory.utilization)}"
    )
    if memory.utilization > memory.limit:
        return failed(
            codes.MEMORY_LIMIT_EXCEEDED, f"{message} > {pct(memory.limit)} maxMemoryUtilization"
        )
    return passed(codes.MEMORY_LIMIT_EXCEEDED, f"{message} ≤ {pct(memory.limit)} limit")
