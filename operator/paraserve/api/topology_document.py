"""The topology document: what the operator mounts on every rank (ConfigMap ``<name>-topology``,
key ``topology.json``) and what the worker reads back. One builder, one parser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from paraserve.api.base import describe_validation_error
from paraserve.api.plan_report import Stage
from paraserve.api.rank_env import DEFAULT_MASTER_PORT
from paraserve.api.rank_layout import expert_ranges
from paraserve.api.spec import Architecture, InferenceDeploymentSpec, Parallelism, Serving
from paraserve.api.units import Dtype

TOPOLOGY_DIR: Final = "/etc/paraserve"
TOPOLOGY_KEY: Final = "topology.json"
TOPOLOGY_PATH: Final = f"{TOPOLOGY_DIR}/{TOPOLOGY_KEY}"


class TopologyError(ValueError):
    """The topology file is unreadable, malformed, or disagrees with the rank's environment."""


@dataclass(frozen=True)
class StageLayout:
    """One stage as the document gives it: its layers (half-open) and its ranks."""

    index: int
    layers: tuple[int, int]
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class TopologyDocument:
    """The parsed document, validated with the api models (the single source of truth)."""

    architecture: Architecture
    parallelism: Parallelism
    serving: Serving
    dtype: Dtype
    kv_cache_dtype: Dtype
    stages: tuple[StageLayout, ...]
    deployment: str = ""


def topology_document(
    deployment: str,
    namespace: str,
    spec: InferenceDeploymentSpec,
    stages: Sequence[Stage],
    *,
    service: str,
    master_port: int = DEFAULT_MASTER_PORT,
) -> dict[str, Any]:
    """The document every rank of ``deployment`` reads (camelCase, as it is mounted)."""
    model: dict[str, Any] = {
        "name": spec.model.name,
        "dtype": spec.model.dtype.value,
        "kvCacheDtype": spec.model.kv_dtype.value,
    }
    architecture = spec.model.architecture
    if architecture is not None:
        model["architecture"] = architecture.model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
    p = spec.parallelism
    parallelism = {"pipeline": p.pipeline, "tensor": p.tensor, "sequence": p.sequence}
    experts: dict[str, Any] = {}
    if p.expert > 1:
        # Expert parallelism: which routed experts each EP rank of a stage holds.
        parallelism["expert"] = p.expert
        if architecture is not None and architecture.experts is not None:
            routed = architecture.experts.routed
            experts = {
                "experts": {
                    "routed": routed,
                    "ranges": [list(r) for r in expert_ranges(routed, p.expert)],
                }
            }
    return {
        "deployment": deployment,
        "namespace": namespace,
        "parallelism": parallelism,
        **experts,
        "worldSize": spec.parallelism.world_size,
        "model": model,
        "serving": {
            "maxBatchSize": spec.serving.max_batch_size,
            "maxSequenceLength": spec.serving.max_sequence_length,
        },
        "stages": [
            {
                "index": stage.index,
                "layers": list(stage.layers) if stage.layers is not None else None,
                "ranks": list(stage.ranks),
            }
            for stage in stages
        ],
        "masterPort": master_port,
        "service": service,
    }


def _field(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise TopologyError(f"{where}: missing {key!r}")
    return data[key]


def parse_topology_document(data: Any) -> TopologyDocument:
    """Validate the camelCase document; TopologyError names the first thing wrong."""
    if not isinstance(data, dict):
        raise TopologyError("topology: expected a JSON object")
    model = _field(data, "model", "topology")
    if not isinstance(model, dict):
        raise TopologyError("topology.model: expected an object")
    try:
        architecture = Architecture.model_validate(_field(model, "architecture", "topology.model"))
        parallelism = Parallelism.model_validate(_field(data, "parallelism", "topology"))
        serving = Serving.model_validate(data.get("serving", {}))
        dtype = Dtype(model.get("dtype", Dtype.BFLOAT16))
        kv_dtype = Dtype(model.get("kvCacheDtype") or dtype)
    except ValidationError as error:
        raise TopologyError(f"topology: {describe_validation_error(error)}") from None
    except ValueError as error:
        raise TopologyError(f"topology: {error}") from None
    world = data.get("worldSize", parallelism.world_size)
    if world != parallelism.world_size:
        raise TopologyError(
            f"topology: worldSize={world} but pipeline × tensor = {parallelism.world_size}"
        )
    stages: list[StageLayout] = []
    for raw in data.get("stages", []):
        try:
            start, end = raw["layers"]
            stages.append(
                StageLayout(
                    int(raw["index"]), (int(start), int(end)), tuple(map(int, raw["ranks"]))
                )
            )
        except (KeyError, TypeError, ValueError):
            raise TopologyError(f"topology.stages: malformed stage {raw!r}") from None
    return TopologyDocument(
        architecture=architecture,
        parallelism=parallelism,
        serving=serving,
        dtype=dtype,
        kv_cache_dtype=kv_dtype,
        stages=tuple(stages),
        deployment=str(data.get("deployment", "")),
    )
