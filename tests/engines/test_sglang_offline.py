"""Every rank's rendered SGLang command, through SGLang's own server-args parsing and resolution.

The same matrix as vLLM's (PP ∈ {1, 2, 4} × TP ∈ {1, 2, 8}, 2 replicas, with and without extra
args). Each rank's argv goes the way `sglang.launch_server` takes it — `prepare_server_args`,
`resolve_once`, `check_server_args`, `publish` — and then SGLang's own `_calculate_rank_ranges`
says which pipeline and tensor rank the node runs: it must be the pod's (Megatron order, one
GPU per node). The one addition is `--device cpu`: SGLang resolves its accelerator and there is
none on this machine.
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

from paraserve.engines import sglang
from paraserve.engines.options import find

EXTRA = ["--random-seed", "7", "--chunked-prefill-size", "512"]
SAMPLE_VALUES = {
    "--dtype": "float16",
    "--kv-cache-dtype": "fp8_e4m3",
    "--dist-init-addr": "h.example:1",
    "--nccl-init-addr": "h.example:1",
    "--host": "h.example",
    "--model-path": "m",
    "--model": "m",
    "--revision": "r",
    "--mem-fraction-static": "0.5",
}


def matrix(model: Path) -> list[dict[str, Any]]:
    return [
        {
            "id": case.id,
            "argv": case.argv,
            "expect": {
                "tensor": case.spec.parallelism.tensor,
                "pipeline": case.spec.parallelism.pipeline,
                "nnodes": case.env.world_size,
                "node_rank": case.env.rank,
                "dist_init_addr": f"{case.env.master_addr}:{MASTER_PORT}",
                "pp_ranks": [case.env.pp_rank],
                "tp_ranks": [case.env.tp_rank],
                "host": "0.0.0.0",
                "port": 30000,
                "enable_metrics": True,
                "max_running_requests": 8,
                "context_length": 1024,
                "dtype": "bfloat16",
                "mem_fraction_static": 0.8,
                "served_model_name": str(model),
                "model_path": str(model),
                "random_seed": 7 if case.extra else None,
            },
        }
        for case in rank_cases(model, "sglang", EXTRA)
    ]


def refused_by_sglang(model: Path) -> list[dict[str, Any]]:
    base = ["python3", "-m", "sglang.launch_server", "--model-path", str(model), "--tp-size", "8"]
    return [
        {"id": "nnodes-does-not-divide", "argv": [*base, "--nnodes", "3"]},
        {"id": "misspelt-flag", "argv": [*base, "--tp-sise", "2"]},
    ]


@pytest.fixture(scope="module")
def offline(tiny_llama: Path, run_sglang_offline: Runner) -> dict[str, Any]:
    cases = matrix(tiny_llama) + refused_by_sglang(tiny_llama)
    head = ["python3", "-m", "sglang.launch_server", "--model-path", str(tiny_llama)]
    spelled = spelled_cases(head, sglang.OWNED, SAMPLE_VALUES)
    out = run_sglang_offline([*cases, *spelled, {"id": "options", "options": True}])
    by_id = {r["id"]: r for r in out["results"]}
    print(
        f"SGLang offline: {len(cases)} command cases and {len(spelled)} spellings in one"
        f" process, {out['seconds']:.1f}s (import {out['import_seconds']:.1f}s)"
    )
    options = by_id["options"]["options"]
    return {"cases": cases, "by_id": by_id, "options": options, "spelled": spelled}


def test_matrix_covers_the_layouts(offline: dict[str, Any]) -> None:
    assert len([c for c in offline["cases"] if "expect" in c]) == COMMANDS == 308


def test_every_rank_gets_the_plans_layout_from_sglang(offline: dict[str, Any]) -> None:
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


@pytest.mark.parametrize("case", ["nnodes-does-not-divide", "misspelt-flag"])
def test_sglang_refuses_what_the_plan_never_renders(offline: dict[str, Any], case: str) -> None:
    assert not offline["by_id"][case]["ok"]


def test_owned_options_are_sglangs_own(offline: dict[str, Any]) -> None:
    options = offline["options"]
    assert [f for o in sglang.OWNED for f in o.flags if f not in options] == []
    assert shadows(options, sglang.OWNED) <= sglang.EXACT


def test_the_renderer_refuses_every_spelling_sglang_takes_for_a_plan_option(
    offline: dict[str, Any],
) -> None:
    missed, wrongly = [], []
    for case in offline["spelled"]:
        spelling = case["argv"][5]
        result = offline["by_id"][case["id"]]
        hits = find(
            case["argv"][5:], sglang.OWNED, underscores=sglang.UNDERSCORES, exact=sglang.EXACT
        )
        if not result["ok"]:
            continue  # SGLang refuses it too (ambiguous prefix, no such option)
        taken = result["value"] not in (None, False, 0, "", [])
        if taken and not hits:
            missed.append(spelling)
        if not taken and hits:
            wrongly.append(spelling)
    assert missed == []
    assert wrongly == []
