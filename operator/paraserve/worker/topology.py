"""The topology file the operator mounts on every rank, and its agreement with the rank's env."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from paraserve.api import Dtype, Parallelism, Serving, describe_validation_error
from paraserve.worker.env import RankEnv, stage_layers
from paraserve.worker.shape import ModelShape, ShapeError


class TopologyError(ValueError):
    """The topology file is unreadable, malformed, or disagrees with the rank's environment."""


@dataclass(frozen=True)
class StageSpec:
    index: int
    layers: tuple[int, int]
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class Topology:
    """What every rank of a replica agrees on: the model, the degrees, the stages."""

    shape: ModelShape
    parallelism: Parallelism
    serving: Serving
    dtype: Dtype
    kv_cache_dtype: Dtype
    stages: tuple[StageSpec, ...]
    deployment: str = ""

    @property
    def world_size(self) -> int:
        return self.parallelism.world_size

    def check(self, env: RankEnv) -> None:
        """Raise TopologyError naming the first env value the file contradicts."""
        par = self.parallelism
        for name, have, want in (
            ("WORLD_SIZE", env.world_size, par.world_size),
            ("PARASERVE_PP_SIZE", env.pp_size, par.pipeline),
            ("PARASERVE_TP_SIZE", env.tp_size, par.tensor),
            ("PARASERVE_SP_SIZE", env.sp_size, par.sequence),
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
                f"PARASERVE_STAGE_LAYERS={start}:{end} but the topology file gives stage "
                f"{stage.index} layers {stage.layers[0]}:{stage.layers[1]}"
            )


def _field(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise TopologyError(f"{where}: missing {key!r}")
    return data[key]


def parse_topology(data: Any) -> Topology:
    """Validate the camelCase document with the api models (the single source of truth)."""
    if not isinstance(data, dict):
        raise TopologyError("topology: expected a JSON object")
    model = _field(data, "model", "topology")
    if not isinstance(model, dict):
        raise TopologyError("topology.model: expected an object")
    try:
        shape = ModelShape.from_wire(_field(model, "architecture", "topology.model"))
        parallelism = Parallelism.model_validate(_field(data, "parallelism", "topology"))
        serving = Serving.model_validate(data.get("serving", {}))
        dtype = Dtype(model.get("dtype", Dtype.BFLOAT16))
        kv_dtype = Dtype(model.get("kvCacheDtype") or dtype)
    except ValidationError as error:
        raise TopologyError(f"topology: {describe_validation_error(error)}") from None
    except (ShapeError, ValueError) as error:
        raise TopologyError(f"topology: {error}") from None
    world = data.get("worldSize", parallelism.world_size)
    if world != parallelism.world_size:
        raise TopologyError(
            f"topology: worldSize={world} but pipeline × tensor = {parallelism.world_size}"
        )
    stages: list[StageSpec] = []
    for raw in data.get("stages", []):
        try:
            start, end = raw["layers"]
            stages.append(
                StageSpec(int(raw["index"]), (int(start), int(end)), tuple(map(int, raw["ranks"])))
            )
        except (KeyError, TypeError, ValueError):
            raise TopologyError(f"topology.stages: malformed stage {raw!r}") from None
    return Topology(
        shape=shape,
        parallelism=parallelism,
        serving=serving,
        dtype=dtype,
        kv_cache_dtype=kv_dtype,
        stages=tuple(stages),
        deployment=str(data.get("deployment", "")),
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


def topology_document(
    shape_wire: dict[str, Any],
    *,
    pipeline: int,
    tensor: int,
    sequence: int,
    max_batch_size: int,
    max_sequence_length: int,
    dtype: str = "float32",
    name: str = "tiny",
) -> dict[str, Any]:
    """A topology file as the operator writes it (for tests and by-hand runs)."""
    num_layers = int(shape_wire["numLayers"])
    return {
        "deployment": name,
        "namespace": "default",
        "parallelism": {"pipeline": pipeline, "tensor": tensor, "sequence": sequence},
        "worldSize": pipeline * tensor,
        "model": {
            "name": name,
            "dtype": dtype,
            "kvCacheDtype": dtype,
            "architecture": shape_wire,
        },
        "serving": {"maxBatchSize": max_batch_size, "maxSequenceLength": max_sequence_length},
        "stages": [
            {
                "index": p,
                "layers": list(stage_layers(num_layers, pipeline, p)),
                "ranks": [p * tensor + t for t in range(tensor)],
            }
            for p in range(pipeline)
        ],
        "masterPort": 29500,
        "service": name,
    }
