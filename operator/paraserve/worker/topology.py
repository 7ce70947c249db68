"""The topology file the operator mounts on every rank, and its agreement with the rank's env.

The document itself is ``paraserve.api.topology_document``; this module adds what the worker
needs of it (the model's complete shape) and the check against the rank's environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from paraserve.api.rank_env import PP_SIZE, SP_SIZE, STAGE_LAYERS, TP_SIZE, WORLD_SIZE, RankEnv
from paraserve.api.topology_document import (
    StageLayout,
    TopologyDocument,
    TopologyError,
    parse_topology_document,
)
from paraserve.worker.shape import ModelShape, ShapeError

__all__ = ["StageLayout", "Topology", "TopologyError", "load_topology", "parse_topology"]


@dataclass(frozen=True, kw_only=True)
class Topology(TopologyDocument):
    """The api's document, plus the complete model shape every rank builds its layers from."""

    shape: ModelShape

    @property
    def world_size(self) -> int:
        return self.parallelism.world_size

    def check(self, env: RankEnv) -> None:
        """Raise TopologyError naming the first env value the file contradicts."""
        par = self.parallelism
        for name, have, want in (
            (WORLD_SIZE, env.world_size, par.world_size),
            (PP_SIZE, env.pp_size, par.pipeline),
            (TP_SIZE, env.tp_size, par.tensor),
            (SP_SIZE, env.sp_size, par.sequence),
        ):
            if have != want:
                raise TopologyError(f"{name}={have} but the topology file says {want}")
        stage = next((s for s in self.stages if s.index == env.pp_rank), None)
        if stage is None:
            raise TopologyError(f"the topology file has no stage {env.pp_rank}")
        if env.rank not in stage.ranks:
            raise TopologyError(
                f"RANK={env.rank} is not among stage {stage.index}'s ranks {list(stage.ranks)}"
            )
        if env.stage_layers is not None and env.stage_layers != stage.layers:
            start, end = env.stage_layers
            raise TopologyError(
                f"{STAGE_LAYERS}={start}:{end} but the topology file gives stage "
                f"{stage.index} layers {stage.layers[0]}:{stage.layers[1]}"
            )


def parse_topology(data: Any) -> Topology:
    """The api's parse, plus the complete shape the worker builds real layers from."""
    document = parse_topology_document(data)
    try:
        shape = ModelShape.from_architecture(document.architecture)
    except ShapeError as error:
        raise TopologyError(f"topology: {error}") from None
    return Topology(
        shape=shape, **{field.name: getattr(document, field.name) for field in fields(document)}
    )


def load_topology(path: str | Path) -> Topology:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise TopologyError(f"cannot read topology file {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TopologyError(f"topology file {path} is not JSON: {error}") from None
    return parse_topology(data)
