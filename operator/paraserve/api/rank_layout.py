"""Rank coordinates and stage layout of a replica (Megatron order).

The planner, the pods the operator renders, the rank environment, the topology document and
the worker all place ranks and layers with these functions (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from paraserve.api.plan_report import Stage
from paraserve.api.spec import Parallelism


@dataclass(frozen=True)
class Rank:
    """One rank of a replica: its global rank and its coordinates in the PP × TP grid.

    With expert parallelism, ``ep_rank`` says which share of the routed experts the rank holds:
    tp_rank // (TP / EP), SGLang's moe_ep_rank (vLLM's EP = TP makes it tp_rank).
    """

    rank: int
    pp_rank: int
    tp_rank: int
    sp_rank: int
    ep_rank: int = 0

    @property
    def tp_group(self) -> int:
        """Index of the tensor-parallel group; equal to the pipeline stage."""
        return self.pp_rank


def rank_of(pp_rank: int, tp_rank: int, tensor: int) -> int:
    """Megatron order: a TP group is a run of consecutive ranks."""
    return pp_rank * tensor + tp_rank


def ranks(parallelism: Parallelism) -> tuple[Rank, ...]:
    """Every rank of one replica in rank order."""
    expert_tensor = parallelism.expert_tensor if parallelism.expert > 1 else 0
    return _ranks(parallelism.pipeline, parallelism.tensor, parallelism.sequence > 1, expert_tensor)


# Pure and asked once per rank when a replica's pods are rendered: remembered, or a 1,024-rank
# replica would build its 1,024 ranks 1,024 times.
@lru_cache(maxsize=256)
def _ranks(
    pipeline: int, tensor: int, sequence_parallel: bool, expert_tensor: int
) -> tuple[Rank, ...]:
    """`expert_tensor`: TP ranks per EP rank (TP / EP), 0 without expert parallelism."""
    return tuple(
        Rank(
            rank=rank_of(pp, tp, tensor),
            pp_rank=pp,
            tp_rank=tp,
            sp_rank=tp if sequence_parallel else 0,
            ep_rank=tp // expert_tensor if expert_tensor else 0,
        )
        for pp in range(pipeline)
        for tp in range(tensor)
    )


def ep_rank_of(tp_rank: int, parallelism: Parallelism) -> int:
    """The EP rank of a TP rank: consecutive runs of TP/EP ranks share one set of experts."""
    if parallelism.expert <= 1:
        return 0
    return tp_rank // parallelism.expert_tensor


def expert_ranges(routed: int, expert: int) -> tuple[tuple[int, int], ...]:
    """Half-open [start, end) of the routed experts each EP rank holds, contiguous (the
    engines' default, linear placement); they partition [0, routed) when EP divides it."""
    per_rank = -(-routed // expert)
    return tuple(
        (min(e * per_rank, routed), min((e + 1) * per_rank, routed)) for e in range(expert)
    )


def stage_layer_counts(num_layers: int, pipeline: int) -> tuple[int, ...]:
    """⌊L/pp⌋ layers per stage, plus one for each of the first L mod pp stages."""
    base, extra = divmod(num_layers, pipeline)
    return tuple(base + (1 if stage < extra else 0) for stage in range(pipeline))


@lru_cache(maxsize=256)  # pure, and asked once per rank too
def stage_layers(num_layers: int, pipeline: int) -> tuple[tuple[int, int], ...]:
    """Half-open [start, end) layer range of every stage; together they partition the model."""
    ranges = []
    start = 0
    for count in stage_layer_counts(num_layers, pipeline):
        ranges.append((start, start + count))
        start += count
    return tuple(ranges)


def stage_ranks(stage: int, tensor: int) -> tuple[int, ...]:
    """Ranks of a stage: its tensor-parallel group."""
    return tuple(rank_of(stage, tp, tensor) for tp in range(tensor))


def replica_stages(parallelism: Parallelism, num_layers: int | None) -> list[Stage]:
    """Every stage of a replica: its layers (None when numLayers is unknown) and its ranks."""
    ranges = (
        stage_layers(num_layers, parallelism.pipeline)
        if num_layers
        else (None,) * parallelism.pipeline
    )
    return [
        Stage(index=s, layers=ranges[s], ranks=list(stage_ranks(s, parallelism.tensor)))
        for s in range(parallelism.pipeline)
    ]
