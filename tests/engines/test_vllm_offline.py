"""Every rank's rendered vLLM command, through vLLM's own `serve` parser and engine config.

For a matrix of layouts (PP ∈ {1, 2, 4} × TP ∈ {1, 2, 8}, 2 replicas, with and without extra
args), each rank's argv is parsed by the installed vLLM exactly as `vllm serve` parses it, then
`create_engine_config` builds the config the rank would run: its world size, node count, node
rank and head address must be the plan's. vLLM's parser also decides which spellings of an
option it takes for one the plan sets; the renderer must refuse exactly those.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from paraserve.api import InferenceDeploymentSpec
from paraserve.api.rank_env import DEFAULT_MASTER_PORT, parse_rank_env, rank_environ
from paraserve.api.topology import ranks
from paraserve.controller.reconciling.owned_objects import master_addr
from paraserve.engines import command, problems, vllm
from paraserve.engines.options import find

NAME, NAMESPACE = "tiny", "default"
PIPELINES, TENSORS, REPLICAS = (1, 2, 4), (1, 2, 8), 2
EXTRA = ["--enforce-eager", "--seed", "7", "--max-num-batched-tokens", "4096"]


def tiny_spec(model: Path, pipeline: int, tensor: int, extra: list[str]) -> InferenceDeploymentSpec:
    return InferenceDeploymentSpec.model_validate(
        {
            # A local directory is a model name vLLM loads as it is: no substitution below.
            "model": {"name": str(model), "parameters": "13M", "architecture": {"numLayers": 4}},
            "parallelism": {"pipeline": pipeline, "tensor": tensor},
            "replicas": REPLICAS,
            "serving": {"maxBatchSize": 8, "maxSequenceLength": 1024},
            "gpu": {"maxMemoryUtilization": 0.8},
            "engine": {"name": "vllm", "args": extra},
        }
    )


def matrix(model: Path) -> list[dict[str, Any]]:
    cases = []
    for pipeline, tensor, extra in itertools.product(PIPELINES, TENSORS, (False, True)):
        s = tiny_spec(model, pipeline, tensor, EXTRA if extra else [])
        assert problems(s) == []
        for replica in range(s.replicas):
            head = master_addr(NAME, NAMESPACE, replica)
            for rank in ranks(s.parallelism):
                environ = rank_environ(
                    s.parallelism, rank.rank, num_layers=4, replica=replica, master_addr=head
                )
                rendered = command(s, parse_rank_env(environ))
                assert rendered is not None
                cases.append(
                    {
                        "id": f"pp{pipeline}-tp{tensor}-{'extra' if extra else 'plain'}"
                        f"-r{replica}-k{rank.rank}",
                        "argv": rendered.argv,
                        "expect": {
                            "world_size": pipeline * tensor,
                            "tensor": tensor,
                            "pipeline": pipeline,
                            "nnodes": pipeline * tensor,
                            "node_rank": rank.rank,
                            "master_addr": head,
                            "master_port": DEFAULT_MASTER_PORT,
                            "headless": rank.rank > 0,
                            "port": 8000,
                            "max_num_seqs": 8,
                            "max_model_len": 1024,
                            "dtype": "bfloat16",
                            "gpu_memory_utilization": 0.8,
                            "served_model_name": str(model),
                            "enforce_eager": extra,
                            "seed": 7 if extra else 0,
                        },
                    }
                )
    return cases


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


def spellings(option: str) -> list[str]:
    """The ways a user might write an option: itself, with underscores, every prefix."""
    out = {option}
    if option.startswith("--"):
        out.add("--" + option[2:].replace("-", "_"))
        out.update(option[:n] for n in range(4, len(option)))
    else:
        out.update(option[:n] for n in range(2, len(option)))
    return sorted(out)


def spelled_cases(model: Path) -> list[dict[str, Any]]:
    """Each spelling of each owned option, to be parsed only."""
    cases = []
    for owned in vllm.OWNED:
        for flag in owned.flags:
            for spelling in spellings(flag):
                argv = ["vllm", "serve", str(model), spelling]
                if owned.takes_value:
                    argv.append(SAMPLE_VALUES.get(flag, "3"))
                cases.append({"id": f"spell{spelling}", "argv": argv, "parse": True, "flag": flag})
    return cases


@pytest.fixture(scope="module")
def offline(
    tiny_llama: Path, run_vllm_offline: Callable[[list[dict[str, Any]]], dict[str, Any]]
) -> dict[str, Any]:
    cases = matrix(tiny_llama) + refused_by_vllm(tiny_llama)
    spelled = spelled_cases(tiny_llama)
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
    per_replica = sum(p * t for p in PIPELINES for t in TENSORS)
    assert len(matrix_cases) == per_replica * REPLICAS * 2 == 308


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
    owned_flags = {f for o in vllm.OWNED for f in o.flags}
    shadows = {
        name
        for name in options
        if name not in owned_flags
        and any(
            f.startswith(name) and f.startswith("--") == name.startswith("--") for f in owned_flags
        )
    }
    assert shadows <= vllm.EXACT


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
