"""The text report of ``paraserve plan``: the arithmetic, a line per check, stages, memory."""

from __future__ import annotations

from paraserve.api import (
    Check,
    InferenceDeployment,
    MemoryBreakdown,
    Parallelism,
    Plan,
    format_bytes,
    format_count,
    format_percent,
)
from paraserve.planner.rules import gpu_arithmetic, strategy
from paraserve.planner.suggest import MoreNodes, Suggestion, closest
from paraserve.planner.weights import parameter_count

_MARK = {"passed": "✅", "failed": "❌", "warning": "⚠️ ", "skipped": "➖"}
_MAX_STAGE_ROWS = 64
_MAX_SUGGESTION_ROWS = 25


def render(deployment: InferenceDeployment, plan: Plan) -> str:
    """The whole report for a person."""
    spec = deployment.spec
    p = spec.parallelism
    model = spec.model
    mode = "exact" if plan.exact else "coarse"
    size = f"{format_count(model.parameters)} parameters, " if model.parameters else ""
    arch = model.architecture
    if not size and plan.exact and arch is not None and (arch.experts or arch.quantization):
        count = parameter_count(arch, model.dtype)
        size = f"{format_count(count.total)} parameters, {format_count(count.active)} active, "
    lines = [
        f"InferenceDeployment {deployment.name or '(unnamed)'}: {model.name}"
        f" ({size}{model.dtype.value}, {mode} memory model)",
        "",
        f"Strategy      {strategy(p)}",
        f"World size    PP={p.pipeline} × TP={p.tensor} = {plan.world_size} ranks per replica"
        + (
            f"; SP={p.sequence} shards activations inside each TP group and adds no GPUs"
            if p.sequence > 1
            else ""
        )
        + (
            f"; EP={p.expert} splits the routed experts inside each TP group and adds no GPUs"
            if p.expert > 1
            else ""
        ),
        f"GPUs          {gpu_arithmetic(spec)}; the pool has {plan.gpus_in_pool}"
        f" allocatable, {plan.gpus_free} free",
        "",
        "Checks",
    ]
    width = max(len(c.code) for c in plan.checks)
    lines += [_check_line(check, width) for check in plan.checks]
    if plan.stages:
        lines += ["", *_stage_table(plan)]
    lines += ["", *_memory_lines(deployment, plan)]
    lines += ["", _verdict(plan)]
    return "\n".join(lines) + "\n"


def render_suggestions(
    suggestions: list[Suggestion], parallelism: Parallelism, more: MoreNodes | None = None
) -> str:
    """The strategies that fit, best first, and the one nearest what was asked; when none
    does, what would fit on more nodes like the pool's largest."""
    p = parallelism
    asked = strategy(p)
    if not suggestions:
        text = "Suggestions\n  no strategy fits this pool\n"
        if more is not None:
            text += _more_nodes(more, p)
        return text
    lines = [
        f"Suggestions: {len(suggestions)} strategies fit (by GPUs, then memory headroom;"
        f" asked: {asked})",
        f"  {'strategy':<22} {'GPUs':>5} {'per GPU':>10} {'of GPU':>8}  now",
    ]
    for s in suggestions[:_MAX_SUGGESTION_ROWS]:
        util = format_percent(s.utilization) if s.utilization is not None else "?"
        lines.append(
            f"  {s.label:<22} {s.gpus_required:>5} {format_bytes(s.total_bytes):>10}"
            f" {util:>8}  {'yes' if s.schedulable_now else 'wait'}"
        )
    if len(suggestions) > _MAX_SUGGESTION_ROWS:
        lines.append(f"  … {len(suggestions) - _MAX_SUGGESTION_ROWS} more (-o json lists them all)")
    near = closest(suggestions, p)
    if near is not None:
        util = f", {format_percent(near.utilization)}" if near.utilization is not None else ""
        lines.append(
            f"Closest to {asked}: {near.label}"
            f" ({near.gpus_required} GPUs, {format_bytes(near.total_bytes)} per GPU{util})"
        )
    return "\n".join(lines) + "\n"


def _more_nodes(more: MoreNodes, asked: Parallelism) -> str:
    gpu = f" × {format_bytes(more.gpu_memory_bytes)}" if more.gpu_memory_bytes else ""
    best = more.suggestions[0]
    near = closest(more.suggestions, asked) or best
    lines = [
        f"  with {more.nodes} nodes like the largest ({more.gpus_per_node} GPUs{gpu} each,"
        f" {more.nodes * more.gpus_per_node} GPUs) these fit:"
    ]
    for s in more.suggestions[:5]:
        util = format_percent(s.utilization) if s.utilization is not None else "?"
        lines.append(
            f"    {s.label:<30} {s.gpus_required:>5} GPUs {format_bytes(s.total_bytes):>10}"
            f" per GPU {util:>8}"
        )
    if len(more.suggestions) > 5:
        lines.append(f"    … {len(more.suggestions) - 5} more (-o json lists them all)")
    if near is not best:
        lines.append(f"  closest to {strategy(asked)}: {near.label}")
    return "\n".join(lines) + "\n"


def _check_line(check: Check, width: int) -> str:
    return f"  {_MARK[check.outcome]} {check.code:<{width}}  {check.message}"


def _stage_table(plan: Plan) -> list[str]:
    header = (
        f"  {'stage':>5}  {'layers':<11} {'#':>4}  {'ranks':<11} {'weights':>10} {'KV cache':>10}"
        f" {'activations':>11} {'total':>10} {'of GPU':>8}"
    )
    rows = ["Stages (worst rank of each)", header]
    for stage, memory in list(zip(plan.stages, plan.stage_memory, strict=False))[:_MAX_STAGE_ROWS]:
        if stage.layers is None:
            layers, count = "?", "?"
        else:
            layers = f"[{stage.layers[0]}, {stage.layers[1]})"
            count = str(stage.layers[1] - stage.layers[0])
        ranks = (
            f"{stage.ranks[0]}–{stage.ranks[-1]}" if len(stage.ranks) > 1 else str(stage.ranks[0])
        )
        util = format_percent(memory.utilization) if memory.utilization is not None else "?"
        rows.append(
            f"  {stage.index:>5}  {layers:<11} {count:>4}  {ranks:<11}"
            f" {format_bytes(memory.weights_bytes):>10} {format_bytes(memory.kv_cache_bytes):>10}"
            f" {format_bytes(memory.activations_bytes):>11} {format_bytes(memory.total_bytes):>10}"
            f" {util:>8}"
        )
    if len(plan.stages) > _MAX_STAGE_ROWS:
        rows.append(f"  … {len(plan.stages) - _MAX_STAGE_ROWS} more stages")
    return rows


def _memory_lines(deployment: InferenceDeployment, plan: Plan) -> list[str]:
    spec = deployment.spec
    m: MemoryBreakdown = plan.memory
    why = {"overhead": "memory.overheadPerGpu"}
    if not plan.exact and spec.model.parameters:
        p = spec.parallelism
        why["weights"] = (
            f"{format_count(spec.model.parameters)} × {spec.model.dtype.bytes:g} B"
            f" / (PP={p.pipeline} × TP={p.tensor})"
        )
        why["KV cache"] = why["activations"] = "coarse mode: carried by the overhead"
    elif plan.exact and plan.stages:
        why |= _exact_notes(deployment, plan)
    lines = [f"Memory per GPU (worst rank: stage {plan.worst_stage})"]
    for name, value in (
        ("weights", m.weights_bytes),
        ("KV cache", m.kv_cache_bytes),
        ("activations", m.activations_bytes),
        ("overhead", m.overhead_bytes),
    ):
        note = f"  {why[name]}" if name in why else ""
        lines.append(f"  {name:<12} {format_bytes(value):>10}{note}")
        if name == "weights" and m.weights_by_part is not None:
            lines += _weights_by_part(deployment, plan)
    total = format_bytes(m.total_bytes)
    if m.gpu_memory_bytes and m.utilization is not None:
        lines.append(
            f"  {'total':<12} {total:>10}  = {format_percent(m.utilization)} of"
            f" {format_bytes(m.gpu_memory_bytes)} (limit {format_percent(m.limit)},"
            f" headroom {format_bytes(m.gpu_memory_bytes - m.total_bytes)})"
        )
    else:
        lines.append(f"  {'total':<12} {total:>10}  (GPU memory unknown)")
    return lines


def _weights_by_part(deployment: InferenceDeployment, plan: Plan) -> list[str]:
    """The worst rank's weights by part, each with the arithmetic behind it."""
    by_part = plan.memory.weights_by_part
    spec = deployment.spec
    arch = spec.model.architecture
    stage = plan.stages[plan.worst_stage] if plan.stages else None
    if by_part is None or arch is None or stage is None or stage.layers is None:
        return []
    p = spec.parallelism
    start, end = stage.layers
    layers = end - start
    moe = arch.moe_layers_in(start, end)
    q = arch.quantization
    fmt = {}
    if q is not None:
        block = f" {q.block_size[0]}×{q.block_size[1]} block" if q.block_size else ""
        name = {
            "fp8": f"fp8 + a float32 scale per{block}" if block else "fp8 + a scale per matrix",
            "mxfp4": "mxfp4: 4 bits + an 8-bit scale per 32 = 4.25 bits",
        }
        fmt = {part.value: f", {name[q.method.value]}" for part in q.parts}
    base = f", {spec.model.dtype.value}"
    attention = "q, k, v, o / TP"
    if arch.latent_attention:
        attention = "MLA (q_a, kv_a whole; q_b, kv_b, o / TP)"
    notes = {
        "attention": f"{layers} layers × {attention}{fmt.get('attention', base)}",
        "dense MLP": f"{layers - moe} dense layers × 3 × H × I/TP{fmt.get('denseMlp', base)}",
    }
    experts = arch.experts
    if experts is not None:
        local = -(-experts.routed // p.expert)
        notes["routed experts"] = (
            f"{moe} MoE layers × {local} of {experts.routed} experts (EP={p.expert})"
            f" / expert-TP={p.expert_tensor}{fmt.get('routedExperts', base)}, + routers"
        )
        if experts.shared:
            notes["shared experts"] = (
                f"{moe} MoE layers × {experts.shared} shared / TP={p.tensor}"
                f"{fmt.get('sharedExperts', base)}"
            )
    notes["embeddings"] = f"V × H / TP={p.tensor}{base}"
    if by_part.multi_token_prediction_bytes:
        notes["MTP"] = f"{arch.mtp_layers} multi-token-prediction module(s), last stage"
    rows = [
        ("attention", by_part.attention_bytes),
        ("dense MLP", by_part.dense_mlp_bytes),
        ("routed experts", by_part.routed_experts_bytes),
        ("shared experts", by_part.shared_experts_bytes),
        ("embeddings", by_part.embeddings_bytes),
        ("norms", by_part.norms_bytes),
        ("MTP", by_part.multi_token_prediction_bytes),
    ]
    return [
        f"    {name:<15} {_small_bytes(value):>10}  {notes.get(name, '')}".rstrip()
        for name, value in rows
        if value
    ]


def _small_bytes(value: int) -> str:
    """GB, or MB/KB for a part too small to show in GB (the norms)."""
    for unit, scale in (("GB", 1e7), ("MB", 1e4)):
        if value >= scale:
            return format_bytes(value, unit)
    return format_bytes(value, "KB")


def _exact_notes(deployment: InferenceDeployment, plan: Plan) -> dict[str, str]:
    """The exact model's arithmetic for the worst rank (docs/planner.md has the formulas)."""
    spec = deployment.spec
    model, serving, p = spec.model, spec.serving, spec.parallelism
    arch = model.architecture
    stage = plan.stages[plan.worst_stage]
    if arch is None or stage.layers is None:
        return {}
    layers = stage.layers[1] - stage.layers[0]
    kv = -(-(arch.kv_heads or 0) // p.tensor)
    params = plan.memory.weights_bytes * 8 // model.dtype.bits
    tokens = f"{serving.max_batch_size} × {serving.max_sequence_length}"
    weights = f"{format_count(params)} parameters × {model.dtype.bytes:g} B"
    if arch.quantization is not None:
        weights = f"{model.dtype.value} and {arch.quantization.method.value} parts, by part below"
    mla = arch.latent_attention
    last = plan.worst_stage == len(plan.stages) - 1
    if spec.serving.multi_token_prediction and arch.multi_token_prediction_layers and last:
        layers += arch.multi_token_prediction_layers
    if mla is not None:
        kv_note = (
            f"{layers} layers × ({mla.kv_lora_rank} + {mla.qk_rope_head_dim}) latent, whole on"
            f" each TP rank, × {model.kv_dtype.bytes:g} B × {tokens} tokens"
        )
    else:
        kv_note = (
            f"2 × {layers} layers × {kv} KV heads × {arch.effective_head_dim} × "
            f"{model.kv_dtype.bytes:g} B × {tokens} tokens"
        )
    return {
        "weights": weights,
        "KV cache": kv_note,
        "activations": f"prefill peak of one layer for {tokens} tokens / SP={p.sequence}",
    }


def _verdict(plan: Plan) -> str:
    if not plan.feasible:
        n = len(plan.errors)
        codes = ", ".join(dict.fromkeys(e.code for e in plan.errors))
        return f"❌ infeasible: {n} error{'s' if n != 1 else ''} ({codes})."
    if not plan.schedulable_now:
        return "⏳ feasible, but not schedulable now: waiting for free GPUs."
    return "✅ feasible and schedulable now."
