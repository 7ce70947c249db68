"""The matrix both engines' offline checks render: layouts, replicas, extra args, spellings."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paraserve.api import InferenceDeploymentSpec
from paraserve.api.rank_env import DEFAULT_MASTER_PORT, RankEnv, parse_rank_env, rank_environ
from paraserve.controller.reconciling.owned_objects import master_addr
from paraserve.engines import command, problems
from paraserve.engines.options import Owned

NAME, NAMESPACE = "tiny", "default"
PIPELINES, TENSORS, REPLICAS = (1, 2, 4), (1, 2, 8), 2
MASTER_PORT = DEFAULT_MASTER_PORT
#: Runs a list of cases through an engine's own code in one process; its JSON answer.
Runner = Callable[[list[dict[str, Any]]], dict[str, Any]]
#: Ranks of one replica over the layouts (Σ PP × TP), times replicas, times with/without args.
COMMANDS = sum(p * t for p in PIPELINES for t in TENSORS) * REPLICAS * 2


def tiny_spec(
    model: Path, engine: str, pipeline: int, tensor: int, extra: Sequence[str]
) -> InferenceDeploymentSpec:
    return InferenceDeploymentSpec.model_validate(
        {
            # A local directory is a model name the engine loads as it is: nothing is substituted.
            "model": {"name": str(model), "parameters": "13M", "architecture": {"numLayers": 4}},
            "parallelism": {"pipeline": pipeline, "tensor": tensor},
            "replicas": REPLICAS,
            "serving": {"maxBatchSize": 8, "maxSequenceLength": 1024},
            "gpu": {"maxMemoryUtilization": 0.8},
            "engine": {"name": engine, "args": list(extra)},
        }
    )


@dataclass(frozen=True)
class RankCase:
    id: str
    spec: InferenceDeploymentSpec
    env: RankEnv
    argv: list[str]
    extra: bool


def rank_cases(model: Path, engine: str, extra_args: Sequence[str]) -> Iterator[RankCase]:
    """Every rank of every replica of every layout, with and without the extra args."""
    for pipeline, tensor, extra in itertools.product(PIPELINES, TENSORS, (False, True)):
        spec = tiny_spec(model, engine, pipeline, tensor, extra_args if extra else [])
        assert problems(spec) == []
        for replica in range(spec.replicas):
            head = master_addr(NAME, NAMESPACE, replica)
            for rank in range(spec.parallelism.world_size):
                environ = rank_environ(
                    spec.parallelism, rank, num_layers=4, replica=replica, master_addr=head
                )
                env = parse_rank_env(environ)
                rendered = command(spec, env)
                assert rendered is not None
                name = f"pp{pipeline}-tp{tensor}-{'extra' if extra else 'plain'}-r{replica}-k{rank}"
                yield RankCase(name, spec, env, rendered.argv, extra)


def spellings(option: str) -> list[str]:
    """The ways a user might write an option: itself, with underscores, every prefix."""
    out = {option}
    if option.startswith("--"):
        out.add("--" + option[2:].replace("-", "_"))
        out.update(option[:n] for n in range(4, len(option)))
    else:
        out.update(option[:n] for n in range(2, len(option)))
    return sorted(out)


def spelled_cases(
    head: Sequence[str], owned: Sequence[Owned], samples: dict[str, str]
) -> list[dict[str, Any]]:
    """Each spelling of each owned option after ``head`` (the program and model), parse only."""
    cases = []
    for option in owned:
        for flag in option.flags:
            for spelling in spellings(flag):
                argv = [*head, spelling]
                if option.takes_value:
                    argv.append(samples.get(flag, "3"))
                cases.append({"id": f"spell{spelling}", "argv": argv, "parse": True, "flag": flag})
    return cases


def shadows(options: dict[str, str], owned: Sequence[Owned]) -> set[str]:
    """The engine's options that are a prefix of an owned one without being one."""
    flags = {f for o in owned for f in o.flags}
    return {
        name
        for name in options
        if name not in flags
        and any(f.startswith(name) and f.startswith("--") == name.startswith("--") for f in flags)
    }
