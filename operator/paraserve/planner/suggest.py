"""suggest(spec, pool): every parallelism strategy that passes all checks, best first."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import ConfigDict, Field

from paraserve.api import InferenceDeploymentSpec, Parallelism, WireModel
from paraserve.api.spec import MAX_DEGREE
from paraserve.planner.memory import StageMemories
from paraserve.planner.plan import plan
from paraserve.planner.pool import Pool, PoolNode
from paraserve.planner.rules import strategy

# Without layer or head counts any degree is allowed; these bounds keep the search finite
# and cover every layout used in practice (documented in docs/planner.md).
MAX_PIPELINE_WITHOUT_LAYERS = 128
SMALL_TENSOR = 8
# How far suggest_more_nodes looks: up to this many nodes like the largest.
MAX_NODES = 64


class Suggestion(WireModel):
    """A strategy that fits the pool, with its cost and memory."""

    model_config = ConfigDict(frozen=True)

    pipeline: int = Field(description="PP.")
    tensor: int = Field(description="TP.")
    sequence: int = Field(description="SP.")
    expert: int = Field(1, description="EP (1 or TP for a model with routed experts).")
    gpus_required: int = Field(description="replicas × PP × TP.")
    total_bytes: int = Field(description="Worst rank's memory.")
    utilization: float | None = Field(description="Worst rank's memory / GPU memory.")
    schedulable_now: bool = Field(description="The free GPUs hold it now.")

    @property
    def parallelism(self) -> Parallelism:
        return Parallelism(
            pipeline=self.pipeline, tensor=self.tensor, sequence=self.sequence, expert=self.expert
        )

    @property
    def label(self) -> str:
        return strategy(self.parallelism)


class MoreNodes(WireModel):
    """Nothing fits the pool: the fewest more nodes like its largest that hold the model."""

    model_config = ConfigDict(frozen=True)

    nodes: int = Field(description="Nodes needed, each like the pool's largest.")
    gpus_per_node: int = Field(description="Allocatable GPUs of each.")
    gpu_memory_bytes: int | None = Field(description="Memory of each GPU.")
    suggestions: list[Suggestion] = Field(description="The strategies that fit then, best first.")


def suggest(spec: InferenceDeploymentSpec, pool: Pool) -> list[Suggestion]:
    """Feasible strategies ranked by GPUs used, then memory headroom, then closeness to spec."""
    asked = spec.parallelism
    found = []
    memories = StageMemories()
    for candidate in candidates(spec, pool):
        verdict = plan(
            spec.model_copy(update={"parallelism": candidate}),
            pool,
            with_stages=False,
            memories=memories,
        )
        if not verdict.feasible:
            continue
        found.append(
            Suggestion(
                pipeline=candidate.pipeline,
                tensor=candidate.tensor,
                sequence=candidate.sequence,
                expert=candidate.expert,
                gpus_required=verdict.gpus_required,
                total_bytes=verdict.memory.total_bytes,
                utilization=verdict.memory.utilization,
                schedulable_now=verdict.schedulable_now,
            )
        )

    def rank(s: Suggestion) -> tuple[int, int, int, int, int, int, int]:
        return (
            s.gpus_required,
            s.total_bytes,
            s.tensor != asked.tensor,
            s.sequence != asked.sequence,
            abs(s.pipeline - asked.pipeline),
            s.expert != asked.expert,
            s.pipeline,
        )

    return sorted(found, key=rank)


def closest(suggestions: list[Suggestion], asked: Parallelism) -> Suggestion | None:
    """The suggestion nearest the strategy asked for: same TP, same SP, nearest PP."""
    return min(
        suggestions,
        key=lambda s: (
            s.tensor != asked.tensor,
            s.sequence != asked.sequence,
            abs(s.pipeline - asked.pipeline),
            s.expert != asked.expert,
            s.gpus_required,
        ),
        default=None,
    )


def suggest_more_nodes(spec: InferenceDeploymentSpec, pool: Pool) -> MoreNodes | None:
    """When no strategy fits ``pool``: the fewest nodes like its largest on which some do.

    None when the pool is empty or even MAX_NODES such nodes hold nothing (a GPU too small).
    """
    if not pool.nodes:
        return None
    largest = max(pool.nodes, key=lambda n: (n.allocatable, n.gpu_memory_bytes or 0))
    memory = largest.gpu_memory_bytes or pool.gpu_memory_bytes

    def options(count: int) -> list[Suggestion]:
        nodes = tuple(
            PoolNode(
                name=f"{largest.name}-like-{i}",
                allocatable=largest.allocatable,
                free=largest.allocatable,
                gpu_memory_bytes=memory,
            )
            for i in range(count)
        )
        return suggest(spec, Pool(name=pool.name, nodes=nodes))

    # More identical nodes only add strategies, so search by doubling, then bisect.
    low, high = len(pool.nodes), len(pool.nodes) + 1
    found = options(high)
    while not found:
        if high >= MAX_NODES:
            return None
        low, high = high, min(2 * high, MAX_NODES)
        found = options(high)
    while high - low > 1:
        middle = (low + high) // 2
        fewer = options(middle)
        if fewer:
            high, found = middle, fewer
        else:
            low = middle
    return MoreNodes(
        nodes=high,
        gpus_per_node=largest.allocatable,
        gpu_memory_bytes=spec.gpu.memory or memory,
        suggestions=found,
    )


def candidates(spec: InferenceDeploymentSpec, pool: Pool) -> Iterator[Parallelism]:
    """Every (PP, TP, SP) worth planning: within the pool's GPUs and the model's shape."""
    replicas = max(spec.replicas, 1)
    budget = pool.allocatable // replicas
    arch = spec.model.architecture
    heads = arch.num_attention_heads if arch else None
    num_layers = arch.num_layers if arch else None
    max_tensor = min(budget, MAX_DEGREE)
    if spec.placement.tensor_parallel_within_node:
        max_tensor = min(max_tensor, pool.largest_node)
    for tensor in range(1, max_tensor + 1):
        if heads is not None:
            if heads % tensor:
                continue
        elif tensor > SMALL_TENSOR and tensor & (tensor - 1):
            continue  # without head counts, only powers of two beyond 8
        max_pipeline = min(budget // tensor, num_layers or MAX_PIPELINE_WITHOUT_LAYERS, MAX_DEGREE)
        for pipeline in range(1, max_pipeline + 1):
            for sequence in sorted({1, tensor}):
                for expert in expert_degrees(spec, tensor):
                    # Every degree is within 1..MAX_DEGREE and there are no other fields, so
                    # validating each of the hundreds of candidates would check nothing.
                    yield Parallelism.model_construct(
                        pipeline=pipeline, tensor=tensor, sequence=sequence, expert=expert
                    )


def expert_degrees(spec: InferenceDeploymentSpec, tensor: int) -> list[int]:
    """EP candidates: 1, and TP itself for a model whose routed experts TP divides — the two
    layouts both engines run (vLLM's expert parallelism is EP = TP; SGLang's --ep-size may
    also be a proper divisor, which the planner accepts when asked but does not propose)."""
    arch = spec.model.architecture
    experts = arch.experts if arch else None
    if experts is None or tensor == 1 or experts.routed % tensor:
        return [1]
    return [1, tensor]
