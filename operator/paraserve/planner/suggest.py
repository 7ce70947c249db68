"""suggest(spec, pool): every parallelism strategy that passes all checks, best first."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import ConfigDict, Field

from paraserve.api import InferenceDeploymentSpec, Parallelism, WireModel
from paraserve.api.spec import MAX_DEGREE
from paraserve.planner.plan import plan
from paraserve.planner.pool import Pool

# Without layer or head counts any degree is allowed; these bounds keep the search finite
# and cover every layout used in practice (documented in docs/planner.md).
MAX_PIPELINE_WITHOUT_LAYERS = 128
SMALL_TENSOR = 8


class Suggestion(WireModel):
    """A strategy that fits the pool, with its cost and memory."""

    model_config = ConfigDict(frozen=True)

    pipeline: int = Field(description="PP.")
    tensor: int = Field(description="TP.")
    sequence: int = Field(description="SP.")
    gpus_required: int = Field(description="replicas × PP × TP.")
    total_bytes: int = Field(description="Worst rank's memory.")
    utilization: float | None = Field(description="Worst rank's memory / GPU memory.")
    schedulable_now: bool = Field(description="The free GPUs hold it now.")

    @property
    def label(self) -> str:
        return f"PP={self.pipeline} × TP={self.tensor} × SP={self.sequence}"


def suggest(spec: InferenceDeploymentSpec, pool: Pool) -> list[Suggestion]:
    """Feasible strategies ranked by GPUs used, then memory headroom, then closeness to spec."""
    asked = spec.parallelism
    found = []
    for candidate in candidates(spec, pool):
        verdict = plan(spec.model_copy(update={"parallelism": candidate}), pool)
        if not verdict.feasible:
            continue
        found.append(
            Suggestion(
                pipeline=candidate.pipeline,
                tensor=candidate.tensor,
                sequence=candidate.sequence,
                gpus_required=verdict.gpus_required,
                total_bytes=verdict.memory.total_bytes,
                utilization=verdict.memory.utilization,
                schedulable_now=verdict.schedulable_now,
            )
        )

    def rank(s: Suggestion) -> tuple[int, int, int, int, int, int]:
        return (
            s.gpus_required,
            s.total_bytes,
            s.tensor != asked.tensor,
            s.sequence != asked.sequence,
            abs(s.pipeline - asked.pipeline),
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
            s.gpus_required,
        ),
        default=None,
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
                yield Parallelism(pipeline=pipeline, tensor=tensor, sequence=sequence)
