"""suggest(): every strategy that passes all checks, by GPUs then headroom."""

from __future__ import annotations

from tests.builders import exact_spec, node, pool_of, spec

from paraserve.api import Parallelism
from paraserve.planner import plan, suggest


def test_every_suggestion_is_feasible_and_ranked() -> None:
    target = spec(parallelism={"pipeline": 8})
    pool = pool_of(target)
    options = suggest(target, pool)
    assert options
    for option in options:
        candidate = Parallelism(
            pipeline=option.pipeline, tensor=option.tensor, sequence=option.sequence
        )
        verdict = plan(target.model_copy(update={"parallelism": candidate}), pool)
        assert verdict.feasible
        assert option.gpus_required == candidate.pipeline * candidate.tensor <= 8
    keys = [(o.gpus_required, o.total_bytes) for o in options]
    assert keys == sorted(keys)


def test_suggestions_respect_heads_and_sequence_rules() -> None:
    target = spec(model={"architecture": {"numAttentionHeads": 64, "numKeyValueHeads": 8}})
    for option in suggest(target, pool_of(target)):
        assert 64 % option.tensor == 0
        assert option.sequence in (1, option.tensor)


def test_no_suggestion_when_nothing_fits() -> None:
    target = spec(model={"parameters": "405B"})
    assert suggest(target, pool_of(target)) == []


def test_exact_mode_prefers_headroom_within_the_same_gpus() -> None:
    target = exact_spec()
    options = suggest(target, pool_of(target, [node("a"), node("b")]))
    assert options
    same_gpus = [o for o in options if o.gpus_required == options[0].gpus_required]
    assert [o.total_bytes for o in same_gpus] == sorted(o.total_bytes for o in same_gpus)
