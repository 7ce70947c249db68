"""The topology file: parsed with the api models, and checked against the rank's env."""

import json
from pathlib import Path

import pytest
from tests.builders import golden

from paraserve.api import Parallelism
from paraserve.api.rank_env import parse_rank_env, rank_environ
from paraserve.worker.topology import TopologyError, load_topology, parse_topology

# Exactly the document the operator mounts (ConfigMap <name>-topology, key topology.json);
# the operator's render tests assert they write this very file.
DOCUMENT = golden("topology-pp2-tp2-sp2.json")


def test_the_operator_document_parses(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(DOCUMENT))
    topology = load_topology(path)
    assert topology.shape.num_kv_heads == 2 and topology.shape.head_dim == 16
    assert topology.serving.max_sequence_length == 64
    assert topology.stages[1].layers == (2, 4) and topology.stages[1].ranks == (2, 3)
    for rank in range(4):
        topology.check(
            parse_rank_env(
                rank_environ(Parallelism(pipeline=2, tensor=2, sequence=2), rank, num_layers=4)
            )
        )


def test_env_that_disagrees_with_the_file_is_named() -> None:
    topology = parse_topology(DOCUMENT)
    env = parse_rank_env(
        rank_environ(Parallelism(pipeline=2, tensor=2, sequence=1), 2, num_layers=4)
    )
    with pytest.raises(TopologyError, match="PARASERVE_SP_SIZE=1 but the topology file says 2"):
        topology.check(env)
    env = parse_rank_env(
        rank_environ(Parallelism(pipeline=2, tensor=2, sequence=2), 2, num_layers=4)
        | {"PARASERVE_STAGE_LAYERS": "1:4"}
    )
    with pytest.raises(TopologyError, match="gives stage 1 layers 2:4"):
        topology.check(env)


def test_a_bad_architecture_is_reported_by_the_api_model() -> None:
    broken = json.loads(json.dumps(DOCUMENT))
    broken["model"]["architecture"]["numLayer"] = 4
    with pytest.raises(TopologyError, match="did you mean 'numLayers'"):
        parse_topology(broken)


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read topology file"):
        load_topology(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TopologyError, match="is not JSON"):
        load_topology(tmp_path / "bad.json")
