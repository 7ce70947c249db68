"""One entry point over the engines: a rank's command, and what the spec asks that they refuse."""

from __future__ import annotations

from types import ModuleType

from paraserve.api import Check, EngineName, InferenceDeploymentSpec, Plan
from paraserve.api.rank_env import RankEnv, RankEnvError, parse_rank_env, rank_environ
from paraserve.engines import sglang, vllm
from paraserve.engines.codes import (
    ENGINE_ARGUMENT_CONFLICT,
    ENGINE_SETTING_UNSUPPORTED,
    SEQUENCE_PARALLEL_UNSUPPORTED,
)
from paraserve.engines.launch import EngineCommand
from paraserve.engines.options import conflict_message, find

_ENGINES: dict[EngineName, ModuleType] = {EngineName.VLLM: vllm, EngineName.SGLANG: sglang}


def _engine(spec: InferenceDeploymentSpec) -> ModuleType | None:
    return _ENGINES.get(spec.engine.name)


def default_image(spec: InferenceDeploymentSpec) -> str | None:
    """The image an engine runs when worker.image is not given; None for paraserve/custom."""
    engine = _engine(spec)
    return None if engine is None else str(engine.DEFAULT_IMAGE)


def command(spec: InferenceDeploymentSpec, rank: RankEnv) -> EngineCommand | None:
    """The rank's container command and args, from the rank's own environment contract.

    None when the engine's command is not the operator's to write (paraserve, custom).
    """
    engine = _engine(spec)
    if engine is None:
        return None
    return EngineCommand(tuple(engine.PROGRAM), tuple(engine.args(spec, rank)))


def _failed(code: str, message: str) -> Check:
    return Check(code=code, outcome="failed", message=message)


def problems(spec: InferenceDeploymentSpec) -> list[Check]:
    """What the engine cannot do as the spec asks: each a failed Check with its own code.

    Empty for paraserve and custom, whose command the operator does not write.
    """
    engine = _engine(spec)
    if engine is None:
        return []
    found: list[Check] = []
    if (reason := engine.sequence_problem(spec)) is not None:
        found.append(_failed(SEQUENCE_PARALLEL_UNSUPPORTED, reason))
    found += [_failed(ENGINE_SETTING_UNSUPPORTED, m) for m in engine.DIALECT.setting_problems(spec)]
    # The head's options stand for every rank's: only the per-rank ones differ.
    try:
        head = parse_rank_env(
            rank_environ(spec.parallelism, 0, num_layers=None, master_addr="<head>", master_port=0)
        )
    except RankEnvError:
        # Degrees no rank could have (EP not dividing TP): the planner refuses them with its code.
        return found
    rendered = {option.owned: option for option in engine.options(spec, head)}
    for occurrence in find(
        spec.engine.args, engine.OWNED, underscores=engine.UNDERSCORES, exact=engine.EXACT
    ):
        message = conflict_message(occurrence, rendered.get(occurrence.owned))
        found.append(_failed(ENGINE_ARGUMENT_CONFLICT, message))
    return found


def with_engine_checks(verdict: Plan, spec: InferenceDeploymentSpec) -> Plan:
    """The planner's verdict with the engine's refusals added as errors (infeasible if any)."""
    found = problems(spec)
    if not found:
        return verdict
    return verdict.model_copy(
        update={
            "feasible": False,
            "schedulable_now": False,
            "errors": [*verdict.errors, *(c.finding for c in found)],
            "checks": [*verdict.checks, *found],
        }
    )
