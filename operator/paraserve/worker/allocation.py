"""What each rank of a deployment actually allocates for parameters and KV cache, built with
the runtime's own code on the meta device, set beside the planner's estimate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paraserve.api import InferenceDeploymentSpec
from paraserve.api.rank_layout import stage_layers
from paraserve.planner.memory import stage_memory, stage_shapes
from paraserve.worker.config import torch_dtype
from paraserve.worker.kvcache import KVCache
from paraserve.worker.shape import ModelShape
from paraserve.worker.weights import build_stage


@dataclass(frozen=True)
class RankAllocation:
    """Bytes one rank holds, measured from its tensors, and the planner's estimate of them."""

    rank: int
    pp_rank: int
    tp_rank: int
    layers: tuple[int, int]
    parameters_bytes: int
    kv_cache_bytes: int
    estimated_parameters_bytes: int
    estimated_kv_cache_bytes: int

    @property
    def parameters_ratio(self) -> float:
        return self.parameters_bytes / self.estimated_parameters_bytes

    @property
    def kv_cache_ratio(self) -> float:
        return self.kv_cache_bytes / self.estimated_kv_cache_bytes

    @property
    def ratio(self) -> float:
        """(parameters + KV cache) measured / estimated."""
        measured = self.parameters_bytes + self.kv_cache_bytes
        return measured / (self.estimated_parameters_bytes + self.estimated_kv_cache_bytes)


def allocation_report(spec: InferenceDeploymentSpec) -> list[RankAllocation]:
    """One row per rank of a replica, in rank order (needs a complete architecture)."""
    assert spec.model.architecture is not None
    shape = ModelShape.from_architecture(spec.model.architecture)
    par, serving = spec.parallelism, spec.serving
    dtype = torch_dtype(spec.model.dtype, "dtype")
    kv_dtype = torch_dtype(spec.model.kv_dtype, "kvCacheDtype")
    estimates = [
        stage_memory(spec, par, stage, None)
        for stage in stage_shapes(shape.num_layers, par.pipeline)
    ]
    rows = []
    for pp_rank in range(par.pipeline):
        layers = stage_layers(shape.num_layers, par.pipeline)[pp_rank]
        for tp_rank in range(par.tensor):
            weights = build_stage(
                shape,
                tp_size=par.tensor,
                tp_rank=tp_rank,
                layer_range=layers,
                first_stage=pp_rank == 0,
                last_stage=pp_rank == par.pipeline - 1,
                dtype=dtype,
                device="meta",
            )
            cache = KVCache(
                weights.shard,
                len(weights.layers),
                serving.max_batch_size,
                serving.max_sequence_length,
                kv_dtype,
                torch.device("meta"),
            )
            estimate = estimates[pp_rank]
            rows.append(
                RankAllocation(
                    rank=pp_rank * par.tensor + tp_rank,
                    pp_rank=pp_rank,
                    tp_rank=tp_rank,
                    layers=layers,
                    parameters_bytes=weights.nbytes,
                    kv_cache_bytes=cache.nbytes,
                    estimated_parameters_bytes=estimate.weights_bytes,
                    estimated_kv_cache_bytes=estimate.kv_cache_bytes,
                )
            )
    return rows
