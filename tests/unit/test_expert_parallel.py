"""The EP coordinates of each rank: env, topology document and engine flags."""

from __future__ import annotations

import pytest
from tests.builders import review_spec

from paraserve.api import InferenceDeploymentSpec, Parallelism
from paraserve.api.expert_parallel import UnsupportedExpertParallelism, engine_expert_args
from paraserve.api.rank_env import EP_RANK, EP_SIZE, RankEnvError, parse_rank_env, rank_environ
from paraserve.api.rank_layout import expert_ranges, ranks, replica_stages
from paraserve.api.topology_document import parse_topology_document, topology_document

EXPERTS = {
    "numLayers": 4,
    "hiddenSize": 64,
    "numAttentionHeads": 4,
    "numKeyValueHeads": 2,
    "intermediateSize": 128,
    "vocabSize": 256,
    "experts": {"routed": 8, "perToken": 2, "intermediateSize": 32},
}


def test_ep_rank_is_a_run_of_tp_over_ep_ranks() -> None:
    # SGLang's moe_ep_rank = tp_rank // (tp_size // ep_size); vLLM's EP = TP gives tp_rank.
    p = Parallelism(pipeline=2, tensor=8, expert=4)
    assert [r.ep_rank for r in ranks(p)] == [0, 0, 1, 1, 2, 2, 3, 3] * 2
    assert [r.ep_rank for r in ranks(Parallelism(tensor=4, expert=4))] == [0, 1, 2, 3]
    assert {r.ep_rank for r in ranks(Parallelism(tensor=4))} == {0}


def test_expert_ranges_partition_the_experts() -> None:
    assert expert_ranges(256, 8) == tuple((32 * e, 32 * (e + 1)) for e in range(8))
    assert expert_ranges(8, 1) == ((0, 8),)


def test_rank_env_carries_ep_only_when_on() -> None:
    plain = rank_environ(Parallelism(tensor=2), 1, num_layers=4, master_addr="h")
    assert EP_SIZE not in plain and EP_RANK not in plain
    assert parse_rank_env(plain).ep_size == 1
    p = Parallelism(pipeline=2, tensor=8, expert=4)
    environ = rank_environ(p, 13, num_layers=61, master_addr="h")
    assert (environ[EP_SIZE], environ[EP_RANK]) == ("4", "2")
    parsed = parse_rank_env(environ)
    assert (parsed.ep_size, parsed.ep_rank, parsed.tp_rank) == (4, 2, 5)
    with pytest.raises(RankEnvError, match="PARASERVE_EP_RANK=1 but TP_RANK"):
        parse_rank_env({**environ, EP_RANK: "1"})
    with pytest.raises(RankEnvError, match="PARASERVE_EP_SIZE=3 must divide"):
        parse_rank_env({**environ, EP_SIZE: "3"})


def test_topology_document_names_each_ep_ranks_experts() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {
            "model": {"name": "tiny-moe", "architecture": EXPERTS},
            "parallelism": {"pipeline": 2, "tensor": 4, "expert": 4},
        }
    )
    stages = replica_stages(spec.parallelism, 4)
    document = topology_document("moe", "default", spec, stages, service="moe")
    assert document["parallelism"] == {"pipeline": 2, "tensor": 4, "sequence": 1, "expert": 4}
    assert document["experts"] == {"routed": 8, "ranges": [[0, 2], [2, 4], [4, 6], [6, 8]]}
    assert parse_topology_document(document).parallelism.expert == 4
    # Without EP the document is what it always was.
    plain = review_spec()
    assert "experts" not in topology_document(
        "r", "default", plain, replica_stages(plain.parallelism, 80), service="r"
    )


def test_engine_flags_for_expert_parallelism() -> None:
    assert engine_expert_args("vllm", Parallelism(tensor=8)) == []
    assert engine_expert_args("vllm", Parallelism(tensor=8, expert=8)) == [
        "--enable-expert-parallel"
    ]
    assert engine_expert_args("sglang", Parallelism(tensor=8, expert=4)) == ["--ep-size", "4"]
    with pytest.raises(UnsupportedExpertParallelism, match="EP=4 with TP=8 needs SGLang"):
        engine_expert_args("vllm", Parallelism(tensor=8, expert=4))
