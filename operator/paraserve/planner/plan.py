"""plan(spec, pool) → Plan: every rule in its order, with the memory model (docs/design.md).

The rules and the model themselves: docs/planner.md.
"""

from __future__ import annotations

from paraserve.api import Check, InferenceDeploymentSpec, MemoryBreakdown, Plan, Stage
from paraserve.api.rank_layout import replica_stages
from paraserve.planner import codes, rules
from paraserve.planner.memory import StageMemories, stage_memory, stage_shapes, worst
from paraserve.planner.pool import Pool


def plan(
    spec: InferenceDeploymentSpec,
    pool: Pool,
    *,
    with_stages: bool = True,
    memories: StageMemories | None = None,
) -> Plan:
    """The verdict on ``spec`` for ``pool``; pure and total (never raises on a valid spec).

    ``with_stages=False`` leaves ``stages`` empty: ``suggest`` weighs hundreds of strategies
    and reads no stage (a plan of PP=80 has 80 of them). ``memories``: stage memory already
    computed for this spec under other parallelisms (``suggest`` again).
    """
    p = spec.parallelism
    gpu_memory = spec.gpu.memory or pool.gpu_memory_bytes
    degree_check = rules.degrees(spec)
    unresolved = rules.unresolved_architecture(spec)
    if degree_check.outcome == "failed" or unresolved is not None:
        # Nothing else can be computed with a zero degree, or without the architecture named.
        memory = _overhead_only(spec, gpu_memory)
        checks = [degree_check] + ([unresolved] if unresolved else [])
        return _assemble(spec, pool, checks, [], memory, [], 0)
    size_check = rules.world_size(spec)
    if size_check.outcome == "failed":
        # Nor planned beyond the ceiling: no stage lists a million ranks.
        memory = _overhead_only(spec, gpu_memory)
        return _assemble(spec, pool, [degree_check, size_check], [], memory, [], 0)

    checks = [
        degree_check,
        rules.sequence(spec),
        rules.attention_heads(spec),
        rules.key_value_heads(spec),
        rules.layers(spec),
        *rules.expert_parallelism(spec),
    ]
    checks += _pool_checks(spec, pool)

    arch = spec.model.architecture
    num_layers = arch.num_layers if arch else None
    shapes = stage_shapes(num_layers, p.pipeline)
    # Stages differ only in layer count, MoE layers and first/last: few distinct breakdowns.
    distinct: dict[tuple[int, int, bool, bool], MemoryBreakdown] = {}
    per_stage = []
    moe_layers_in = arch.moe_layers_in if arch is not None and arch.experts is not None else None
    for shape in shapes:
        moe = moe_layers_in(shape.start, shape.end) if moe_layers_in else 0
        key = (shape.layers, moe, shape.first, shape.last)
        breakdown = distinct.get(key)
        if breakdown is None:
            breakdown = distinct[key] = (
                stage_memory(spec, p, shape, gpu_memory)
                if memories is None
                else memories.get(spec, p, shape, moe, gpu_memory)
            )
        per_stage.append(breakdown)
    worst_stage, memory = worst(per_stage)
    checks.append(rules.memory_limit(spec, worst_stage, memory))

    if any(check.outcome == "failed" for check in checks):
        checks.append(
            rules.skipped(codes.INSUFFICIENT_FREE_GPUS, "not checked: the plan is infeasible")
        )
    else:
        checks.append(rules.capacity(spec, pool, free=True))

    stages = replica_stages(p, num_layers) if with_stages else []
    return _assemble(spec, pool, checks, stages, memory, per_stage, worst_stage)


def _pool_checks(spec: InferenceDeploymentSpec, pool: Pool) -> list[Check]:
    nodes = rules.matching_nodes(spec, pool)
    if nodes.outcome == "failed":
        return [
            nodes,
            rules.skipped(codes.TENSOR_PARALLEL_EXCEEDS_NODE, "not checked: the pool is empty"),
            rules.skipped(codes.INSUFFICIENT_GPUS, "not checked: the pool is empty"),
        ]
    within = rules.tensor_within_node(spec, pool)
    if within.outcome == "failed":
        return [
            nodes,
            within,
            rules.skipped(codes.INSUFFICIENT_GPUS, "not checked: no node holds a TP group"),
        ]
    return [nodes, within, rules.capacity(spec, pool)]


def _assemble(
    spec: InferenceDeploymentSpec,
    pool: Pool,
    checks: list[Check],
    stages: list[Stage],
    memory: MemoryBreakdown,
    per_stage: list[MemoryBreakdown],
    worst_stage: int,
) -> Plan:
    errors = [c.finding for c in checks if c.outcome == "failed"]
    warnings = [c.finding for c in checks if c.outcome == "warning"]
    feasible = not errors
    arch = spec.model.architecture
    return Plan(
        feasible=feasible,
        schedulable_now=feasible
        and not any(c.code == codes.INSUFFICIENT_FREE_GPUS for c in warnings),
        world_size=spec.parallelism.world_size,
        gpus_required=spec.gpus_required,
        gpus_in_pool=pool.allocatable,
        gpus_free=pool.free,
        errors=errors,
        warnings=warnings,
        stages=stages,
        memory=memory,
        stage_memory=per_stage,
        exact=arch is not None and arch.is_complete,
        checks=checks,
        worst_stage=worst_stage,
    )


def _overhead_only(spec: InferenceDeploymentSpec, gpu_memory: int | None) -> MemoryBreakdown:
    overhead = spec.memory.overhead_per_gpu
    return MemoryBreakdown(
        weights_bytes=0,
        kv_cache_bytes=0,
        activations_bytes=0,
        overhead_bytes=overhead,
        total_bytes=overhead,
        gpu_memory_bytes=gpu_memory,
        utilization=overhead / gpu_memory if gpu_memory else None,
        limit=spec.gpu.max_memory_utilization,
    )
