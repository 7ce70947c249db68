"""suggest(): every strategy that passes all checks, by GPUs then headroom."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.builders import exact_spec, node, pool_of, spec

from paraserve.api import InferenceDeploymentSpec, Parallelism
from paraserve.planner import plan, suggest
from paraserve.planner.suggest import candidates


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


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    "example", ["llama-2-70b-exact.yaml", "review-pp4-tp2-sp2.yaml", "deepseek-v3.yaml"]
)
def test_suggest_is_every_plan_made_from_scratch(example: str) -> None:
    """suggest remembers stage memory across its candidates; its answer is what planning each
    candidate on its own gives (on 64 nodes: hundreds of candidates, PP up to the layers)."""
    target = InferenceDeploymentSpec.model_validate(
        yaml.safe_load((EXAMPLES / example).read_text())["spec"]
    )
    nodes = [node(f"n{i}", 8, pool=None, memory_mib=143771) for i in range(64)]
    for each in nodes:
        each["metadata"]["labels"].update(target.placement.node_selector)
    pool = pool_of(target, nodes)
    expected = []
    for candidate in candidates(target, pool):
        verdict = plan(target.model_copy(update={"parallelism": candidate}), pool)
        if verdict.feasible:
            expected.append(
                (candidate.pipeline, candidate.tensor, candidate.sequence, candidate.expert,
                 verdict.gpus_required, verdict.memory.total_bytes, verdict.memory.utilization,
                 verdict.schedulable_now)
            )  # fmt: skip
    got = [
        (s.pipeline, s.tensor, s.sequence, s.expert, s.gpus_required, s.total_bytes,
         s.utilization, s.schedulable_now)
        for s in suggest(target, pool)
    ]  # fmt: skip
    assert len(got) > 100
    assert sorted(got) == sorted(expected)
