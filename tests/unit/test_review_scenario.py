"""The parallel-strategy review's numbers, exactly, through `paraserve plan`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paraserve.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODES = str(EXAMPLES / "nodes-1x8-a100-80g.yaml")
PP4 = str(EXAMPLES / "review-pp4-tp2-sp2.yaml")
PP8 = str(EXAMPLES / "review-pp8-tp2-sp2.yaml")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_pp8_tp2_sp2_needs_16_gpus_and_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "plan", "-f", PP8, "--nodes", NODES, "-o", "json")
    assert status == 1 and err == ""
    plan = json.loads(out)
    assert plan["feasible"] is False and plan["schedulableNow"] is False
    assert (plan["worldSize"], plan["gpusRequired"], plan["gpusInPool"]) == (16, 16, 8)
    assert [e["code"] for e in plan["errors"]] == ["InsufficientGPUs"]
    assert plan["errors"][0]["message"].startswith(
        'PP=8 × TP=2 = 16 GPUs required; pool "a100-80g" has 8 allocatable (1 node × 8)'
    )


def test_pp4_tp2_sp2_fits_with_the_reviews_memory(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "plan", "-f", PP4, "--nodes", NODES, "-o", "json")
    assert status == 0 and err == ""
    plan = json.loads(out)
    assert plan["feasible"] is True and plan["schedulableNow"] is True
    assert (plan["worldSize"], plan["gpusRequired"], plan["gpusInPool"], plan["gpusFree"]) == (
        8,
        8,
        8,
        8,
    )
    assert plan["errors"] == [] and plan["warnings"] == []
    assert [s["layers"] for s in plan["stages"]] == [[0, 20], [20, 40], [40, 60], [60, 80]]
    assert [s["ranks"] for s in plan["stages"]] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    memory = plan["memory"]
    assert memory["weightsBytes"] == 17_500_000_000  # 70e9 × 2 B / 8
    assert memory["overheadBytes"] == 16_750_000_000
    assert memory["totalBytes"] == 34_250_000_000
    assert memory["gpuMemoryBytes"] == 80_000_000_000
    assert round(memory["utilization"] * 100, 1) == 42.8
    assert memory["limit"] == 0.85


def test_text_report_shows_the_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "plan", "-f", PP4, "--nodes", NODES)
    assert status == 0
    assert "PP=4 × TP=2 = 8 GPUs required" in out
    assert "PP=4 ≤ numLayers=80: 20 layers per stage" in out
    assert "17.5 GB  70B × 2 B / (PP=4 × TP=2)" in out
    assert "34.25 GB  = 42.8 % of 80 GB (limit 85 %, headroom 45.75 GB)" in out
    assert "✅ feasible and schedulable now." in out
    status, out, _ = run(capsys, "plan", "-f", PP8, "--nodes", NODES)
    assert status == 1
    assert "❌ InsufficientGPUs" in out
    assert "SP=2 shards activations inside each TP group and adds no GPUs" in out
    assert "❌ infeasible: 1 error (InsufficientGPUs)." in out
    # The rejection comes with the way out, unasked.
    assert "PP=4 × TP=2 × SP=2         8   34.25 GB   42.8 %  yes" in out
    assert (
        "Closest to PP=8 × TP=2 × SP=2: PP=4 × TP=2 × SP=2 (8 GPUs, 34.25 GB per GPU, 42.8 %)"
        in out
    )


def test_suggest_offers_pp4_tp2_for_the_impossible_strategy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "plan", "-f", PP8, "--nodes", NODES, "--suggest", "-o", "json")
    assert status == 1
    suggestions = json.loads(out)["suggestions"]
    strategies = [(s["pipeline"], s["tensor"], s["sequence"]) for s in suggestions]
    assert (4, 2, 2) in strategies
    # Among the 8-GPU strategies, the one closest to what was asked comes first.
    eight = [s for s in suggestions if s["gpusRequired"] == 8]
    assert (eight[0]["pipeline"], eight[0]["tensor"], eight[0]["sequence"]) == (4, 2, 2)
    assert eight[0]["totalBytes"] == 34_250_000_000
    status, out, _ = run(capsys, "plan", "-f", PP8, "--nodes", NODES, "--suggest")
    assert "PP=4 × TP=2 × SP=2         8   34.25 GB   42.8 %  yes" in out
    assert (
        "Closest to PP=8 × TP=2 × SP=2: PP=4 × TP=2 × SP=2 (8 GPUs, 34.25 GB per GPU, 42.8 %)"
        in out
    )
