"""The observed state of an InferenceDeployment, written by the operator."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field

from paraserve.api.base import WireModel
from paraserve.api.plan_report import MemoryBreakdown, Plan, Stage
from paraserve.api.units import format_bytes


class Phase(enum.StrEnum):
    """Lifecycle of a deployment."""

    PENDING = "Pending"  # seen, not planned yet
    REJECTED = "Rejected"  # the plan is infeasible; nothing is created
    WAITING = "Waiting"  # not enough free GPUs now, or the architectureFrom ConfigMap is absent
    SCHEDULING = "Scheduling"  # pods created, not all running
    RUNNING = "Running"  # all pods running, not all ranks ready
    READY = "Ready"  # every rank ready
    DEGRADED = "Degraded"  # a replica is being recreated or an SLO is missed
    FAILED = "Failed"  # gave up


class ConditionType(enum.StrEnum):
    VALIDATED = "Validated"
    SCHEDULED = "Scheduled"
    READY = "Ready"
    MEETS_SLO = "MeetsSLO"


class Condition(WireModel):
    """A Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Validated, Scheduled, Ready or MeetsSLO.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="A planner code or a CamelCase reason.")
    message: str = Field("", description="For a person; shows the arithmetic.")
    last_transition_time: str | None = Field(
        None, description="RFC 3339 time the status last changed."
    )
    observed_generation: int | None = Field(
        None, description="metadata.generation the condition was computed for."
    )


class StageStatus(WireModel):
    """One pipeline stage in status: its layers and its ranks as a range, never listed one by
    one, so status stays small whatever the spec (the topology lists them for the ranks)."""

    index: int = Field(description="Pipeline rank of the stage.")
    layers: tuple[int, int] | None = Field(
        None, description="Half-open [start, end) layer range; absent when numLayers is unknown."
    )
    first_rank: int = Field(description="First rank of the stage (its tensor-parallel group).")
    last_rank: int = Field(description="Last rank of the stage.")

    @classmethod
    def of(cls, stage: Stage) -> StageStatus:
        return cls(
            index=stage.index,
            layers=stage.layers,
            first_rank=min(stage.ranks),
            last_rank=max(stage.ranks),
        )


class PlanStatus(WireModel):
    """The plan the operator deploys: stages and the estimated memory of the worst rank."""

    stages: list[StageStatus] = Field(
        default_factory=list, description="Pipeline stages of a replica."
    )
    memory: MemoryBreakdown | None = Field(None, description="Estimated worst-rank memory.")
    utilization: float | None = Field(None, description="Estimated memory / GPU memory.")
    mode: Literal["exact", "coarse"] | None = Field(None, description="Memory model used.")

    @classmethod
    def from_plan(cls, plan: Plan) -> PlanStatus:
        return cls(
            stages=[StageStatus.of(stage) for stage in plan.stages],
            memory=plan.memory,
            utilization=plan.memory.utilization,
            mode="exact" if plan.exact else "coarse",
        )


class RanksStatus(WireModel):
    """Rank readiness over all replicas."""

    ready: int = Field(0, ge=0, description="Ranks whose pod is ready.")
    total: int = Field(0, ge=0, description="Ranks desired: replicas × pipeline × tensor.")
    summary: str = Field("0/0", description="ready/total, for the READY column.")

    @classmethod
    def of(cls, ready: int, total: int) -> RanksStatus:
        return cls(ready=ready, total=total, summary=f"{ready}/{total}")


class StalledReplica(WireModel):
    """A replica whose head has requests but generated no token for failurePolicy.stallTimeout:
    the measurement loop reports it, the reconcile restarts the gang whose head it names."""

    replica: int = Field(ge=0, description="The replica.")
    head: str = Field(description="Name of its rank-0 pod.")
    head_uid: str = Field(description="uid of that pod: a recreated replica is a new report.")
    message: str = Field("", description="What was seen, for a person.")


class MeasuredStatus(WireModel):
    """Read from the ranks' metrics endpoints; never copied from the estimate."""

    max_memory_bytes_per_gpu: int | None = Field(None, description="Largest GPU memory in use.")
    memory_utilization: float | None = Field(None, description="That memory / GPU memory.")
    prefill_p99_seconds: float | None = Field(None, description="P99 prefill latency.")
    decode_p99_per_token_seconds: float | None = Field(
        None, description="P99 decode latency per token."
    )
    throughput_rps: float | None = Field(None, description="Completed requests per second.")
    kv_cache_utilization: float | None = Field(
        None, description="Largest fraction of a rank's KV cache in use (vllm, sglang profiles)."
    )
    window_seconds: float | None = Field(
        None, description="Span of the counter window the P99s and throughput are taken over."
    )
    profile: str | None = Field(None, description="Metric profile read: paraserve, vllm, sglang.")
    sampled_at: str | None = Field(None, description="RFC 3339 time of the sample.")
    ranks_scraped: int = Field(0, ge=0, description="Ranks whose metrics were read.")
    ranks_unreachable: int = Field(0, ge=0, description="Ranks whose metrics could not be read.")
    memory_not_measured: str | None = Field(
        None,
        description="Why memory is missing (vllm, sglang: no dcgm-exporter found, or it reports"
        " no figure for some ranks).",
    )
    stalled_replicas: list[StalledReplica] | None = Field(
        None,
        description="Replicas with requests but no generated token for failurePolicy."
        "stallTimeout; the operator restarts each as a gang.",
    )


class InferenceDeploymentStatus(WireModel):
    """What the operator observed and decided."""

    observed_generation: int | None = Field(None, description="Generation this status is for.")
    phase: Phase | None = Field(None, description="Lifecycle phase.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Validated, Scheduled, Ready, MeetsSLO."
    )
    world_size: int | None = Field(None, description="Ranks per replica.")
    gpus_required: int | None = Field(None, description="replicas × pipeline × tensor.")
    gpus_free: int | None = Field(None, description="Free GPUs in the pool at the last plan.")
    replicas: int | None = Field(None, description="Replicas with pods (scale subresource).")
    selector: str | None = Field(
        None, description="Label selector of the rank pods (scale subresource)."
    )
    plan: PlanStatus | None = Field(None, description="The plan deployed.")
    ranks: RanksStatus | None = Field(None, description="Ready ranks over total.")
    restarts: int = Field(0, ge=0, description="Times a replica was recreated as a gang.")
    measured: MeasuredStatus | None = Field(None, description="Measured memory and latency.")
    memory: str | None = Field(
        None,
        description="MEM column: measured worst-GPU memory over GPU memory, or the estimate"
        " prefixed with ~ before any rank was measured.",
    )


def memory_column(used_bytes: int, gpu_bytes: int | None, *, estimated: bool) -> str:
    """Text of the MEM printer column: ``34.25 GB/80 GB (42.8%)``, ``~`` when estimated."""
    # A tiny model's few hundred KB would read "0 GB": pick the unit that shows the figure.
    unit = next((u for u, scale in (("GB", 1e9), ("MB", 1e6)) if used_bytes >= scale), "KB")
    text = format_bytes(used_bytes, unit)
    if gpu_bytes:
        text += f"/{format_bytes(gpu_bytes)} ({used_bytes / gpu_bytes * 100:.1f}%)"
    return f"~{text}" if estimated else text
