"""Rank order and stage layout: Megatron's, shared with the pod renderer."""

from __future__ import annotations

import pytest

from paraserve.api import Parallelism
from paraserve.planner import rank_of, ranks, stage_layer_counts, stage_layers, stage_ranks


def test_ranks_follow_megatron_order() -> None:
    layout = ranks(Parallelism(pipeline=4, tensor=2, sequence=2))
    assert [r.rank for r in layout] == list(range(8))
    assert [(r.pp_rank, r.tp_rank) for r in layout[:4]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r.sp_rank for r in layout[:2]] == [0, 1]
    assert all(r.rank == rank_of(r.pp_rank, r.tp_rank, 2) for r in layout)
    assert {r.tp_group for r in layout if r.rank in (6, 7)} == {3}


def test_sp_rank_is_zero_without_sequence_parallelism() -> None:
    assert {r.sp_rank for r in ranks(Parallelism(pipeline=2, tensor=4, sequence=1))} == {0}


def test_stage_ranks_are_consecutive() -> None:
    assert stage_ranks(0, 2) == (0, 1)
    assert stage_ranks(3, 2) == (6, 7)
    assert stage_ranks(1, 1) == (1,)


@pytest.mark.parametrize(
    ("layers", "pipeline", "expected"),
    [
        (80, 4, ((0, 20), (20, 40), (40, 60), (60, 80))),
        (80, 8, tuple((i * 10, i * 10 + 10) for i in range(8))),
        (10, 3, ((0, 4), (4, 7), (7, 10))),
        (3, 3, ((0, 1), (1, 2), (2, 3))),
        (32, 1, ((0, 32),)),
    ],
)
def test_stage_layers_are_half_open_and_front_loaded(
    layers: int, pipeline: int, expected: tuple[tuple[int, int], ...]
) -> None:
    assert stage_layers(layers, pipeline) == expected
    assert sum(stage_layer_counts(layers, pipeline)) == layers
