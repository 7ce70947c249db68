"""Every rank's rendered vLLM command, through vLLM's own `serve` parser and engine config.

For a matrix of layouts (PP ∈ {1, 2, 4} × TP ∈ {1, 2, 8}, 2 replicas, with and without extra
args), each rank's argv is parsed by the installed vLLM exactly as `vllm serve` parses it, then
`create_engine_config` builds the config the rank would run: its world size, node count, node
rank and head address must be the plan's. vLLM's parser also decides which spellings of an
option it takes for one the plan sets; the renderer must refuse exactly those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.engines.layouts import (
    COMMANDS,
    MASTER_PORT,
    Runner,
    rank_cases,
    shadows,
    spelled_cases,
)

from paraserve.engines import vllm
from paraserve.engines.options import find

EXTRA = ["--enforce-eager", "--seed", "7", "--max-num-batched-tokens", "4096"]


def matrix(model: Path) -> list[dict[str, Any]]:
    return [
        {
            "id": case.id,
            "argv": case.argv,
            "expect": {
                "world_size": case.env.world_size,
                "tensor": case.spec.parallelism.tensor,
                "pipeline": case.spec.parallelism.pipeline,
                "nnodes": case.env.world_size,
                "node_rank": case.env.rank,
                "master_addr": case.env.master_addr,
                "master_port": MASTER_PORT,
                "headless": case.env.rank > 0,
                "port": 8000,
                "max_num_seqs": 8,
                "max_model_len": 1024,
                "dtype": "bfloat16",
                "gpu_memory_utilization": 0.8,
                "served_model_name": str(model),
                "enforce_eager": case.extra,
                "seed": 7 if case.extra else 0,
            },
        }
        for case in rank_cases(model, "vllm", EXTRA)
    ]


# Commands vLLM itself must refuse: the checks the renderer relies on it to make as well.
def refused_by_vllm(model: Path) -> list[dict[str, Any]]:
    base = ["vllm", "serve", str(model), "--tensor-parallel-size", "8"]
    return [
        {"id": "nnodes-does-not-divide", "argv": [*base, "--nnodes", "3"], "refuse": "nnodes"},
        {
            "id": "node-rank-out-of-range",
            "argv": [*base, "--nnodes", "8", "--node-rank", "8"],
            "refuse": "node",
        },
        {"id": "misspelt-flag", "argv": [*base, "--tensor-paralel-size", "2"], "refuse": ""},
    ]


SAMPLE_VALUES = {
    "--dtype": "float16",
    "--kv-cache-dtype": "fp8",
    "--distributed-executor-backend": "mp",
    "--gpu-memory-utilization": "0.5",
    "--device-memory-utilization": "0.5",
    "--master-addr": "h.example",
    "--host": "h.example",
    "--model": "m",
    "--revision": "r",
}


@pytest.fixture(scope="module")
def offline(tiny_llama: Path, run_vllm_offline: Runner) -> dict[str, Any]:
    cases = matrix(tiny_llama) + refused_by_vllm(tiny_llama)
    spelled = spelled_cases(["vllm", "serve", str(tiny_llama)], vllm.OWNED, SAMPLE_VALUES)
    out = run_vllm_offline([*cases, *spelled, {"id": "options", "options": True}])
    by_id = {r["id"]: r for r in out["results"]}
    print(
        f"vLLM offline: {len(cases)} command cases and {len(spelled)} spellings in one process,"
        f" {out['seconds']:.1f}s (import {out['import_seconds']:.1f}s)"
    )
    return {
        "cases": cases,
        "by_id": by_id,
        "options": by_id["options"]["options"],
        "spelled": spelled,
    }


def test_matrix_covers_the_layouts(offline: dict[str, Any]) -> None:
    matrix_cases = [c for c in offline["cases"] if "expect" in c]
    assert len(matrix_cases) == COMMANDS == 308


def test_every_rank_gets_the_plans_layout_from_vllm(offline: dict[str, Any]) -> None:
    wrong = []
    for case in offline["cases"]:
        if "expect" not in case:
            continue
        result = offline["by_id"][case["id"]]
        if not result["ok"]:
            wrong.append(f"{case['id']}: {result['error']}")
            continue
        diff = {k: (v, result[k]) for k, v in case["expect"].items() if result[k] != v}
        if diff:
            wrong.append(f"{case['id']}: {diff}")
    assert wrong == []


@pytest.mark.parametrize(
    "case", ["nnodes-does-not-divide", "node-rank-out-of-range", "misspelt-flag"]
)
def test_vllm_refuses_what_the_plan_never_renders(offline: dict[str, Any], case: str) -> None:
    result = offline["by_id"][case]
    assert not result["ok"]


def test_owned_options_are_vllms_own(offline: dict[str, Any]) -> None:
    options = offline["options"]
    missing = [f for o in vllm.OWNED for f in o.flags if f not in options]
    assert missing == []
    # Every vLLM option that is a prefix of an owned one is known to be an option of its own.
    assert shadows(options, vllm.OWNED) <= vllm.EXACT


def test_the_renderer_refuses_every_spelling_vllm_takes_for_a_plan_option(
    offline: dict[str, Any],
) -> None:
    missed, wrongly = [], []
    for case in offline["spelled"]:
        spelling = case["argv"][3]
        result = offline["by_id"][case["id"]]
        hits = find(case["argv"][3:], vllm.OWNED, underscores=vllm.UNDERSCORES, exact=vllm.EXACT)
        if not result["ok"]:
            continue  # vLLM refuses it too (ambiguous prefix): refusing it is harmless
        taken = result["value"] not in (None, False, 0, "", [])
        if taken and not hits:
            missed.append(spelling)
        if not taken and hits:
            wrongly.append(spelling)
    assert missed == []
    assert wrongly == []
