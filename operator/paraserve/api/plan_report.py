"""The plan on the wire: what ``paraserve plan -o json`` prints and status.plan carries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from paraserve.api.base import WireModel


class FrozenWire(WireModel):
    model_config = ConfigDict(frozen=True)


class Finding(FrozenWire):
    """An error or warning of the planner: a code and a message showing the arithmetic."""

    code: str = Field(description="Machine-readable reason, e.g. InsufficientGPUs.")
    message: str = Field(description="What is wrong, with the arithmetic.")


class Check(FrozenWire):
    """One planner rule as evaluated: passed, failed (error), warning or skipped."""

    code: str = Field(description="The code of the rule.")
    outcome: Literal["passed", "failed", "warning", "skipped"] = Field(description="Result.")
    message: str = Field(description="The arithmetic behind the outcome.")

    @property
    def finding(self) -> Finding:
        return Finding(code=self.code, message=self.message)


class Stage(FrozenWire):
    """One pipeline stage: its layers (half-open) and its ranks within a replica."""

    index: int = Field(description="Pipeline rank of the stage.")
    layers: tuple[int, int] | None = Field(
        description="Half-open [start, end) layer range; null when numLayers is unknown."
    )
    ranks: list[int] = Field(description="Ranks of the stage (its tensor-parallel group).")


class WeightsByPart(FrozenWire):
    """The weights of one rank by part of the model (bytes, scales included); they sum to
    weightsBytes."""

    attention_bytes: int = Field(description="Attention projections, their biases and q/k norms.")
    dense_mlp_bytes: int = Field(description="MLPs of dense layers.")
    routed_experts_bytes: int = Field(description="The rank's routed experts and the routers.")
    shared_experts_bytes: int = Field(description="Shared experts.")
    embeddings_bytes: int = Field(description="Token embedding and LM head.")
    norms_bytes: int = Field(description="Layer norms and the final norm.")
    multi_token_prediction_bytes: int = Field(
        description="Multi-token-prediction modules (serving.multiTokenPrediction)."
    )


class MemoryBreakdown(FrozenWire):
    """Memory of one rank (bytes) against its GPU."""

    weights_bytes: int = Field(description="Weights held by the rank.")
    kv_cache_bytes: int = Field(description="KV cache for maxBatchSize × maxSequenceLength.")
    activations_bytes: int = Field(description="Estimated prefill activation peak.")
    overhead_bytes: int = Field(description="memory.overheadPerGpu.")
    total_bytes: int = Field(description="Sum of the above.")
    gpu_memory_bytes: int | None = Field(description="Memory of the GPU; null when unknown.")
    utilization: float | None = Field(description="totalBytes / gpuMemoryBytes.")
    limit: float = Field(description="gpu.maxMemoryUtilization.")
    weights_by_part: WeightsByPart | None = Field(
        None, description="weightsBytes by part of the model; null in coarse mode."
    )


class Plan(FrozenWire):
    """The planner's verdict on a spec and a pool (``paraserve plan -o json``, docs/planner.md)."""

    feasible: bool = Field(description="No errors: the pool can ever hold the spec.")
    schedulable_now: bool = Field(description="Feasible and the free GPUs hold it now.")
    world_size: int = Field(description="Ranks per replica: pipeline × tensor.")
    gpus_required: int = Field(description="replicas × pipeline × tensor.")
    gpus_in_pool: int = Field(description="Allocatable GPUs of the pool.")
    gpus_free: int = Field(description="Allocatable minus requests of running pods.")
    errors: list[Finding] = Field(description="Why the spec can never run.")
    warnings: list[Finding] = Field(description="What to know; not a rejection.")
    stages: list[Stage] = Field(description="Pipeline stages of one replica.")
    memory: MemoryBreakdown = Field(description="The worst rank's memory.")
    # Per-stage worst-rank memory for the text report; not part of the JSON contract.
    stage_memory: list[MemoryBreakdown] = Field(default_factory=list, exclude=True)
    exact: bool = Field(default=False, exclude=True)
    checks: list[Check] = Field(default_factory=list, exclude=True)
    worst_stage: int = Field(default=0, exclude=True)

    def to_json(self) -> dict[str, Any]:
        """Exactly the documented JSON object (docs/planner.md; camelCase, nulls kept)."""
        return self.model_dump(mode="json", by_alias=True)

    def has(self, code: str) -> bool:
        return any(f.code == code for f in (*self.errors, *self.warnings))
