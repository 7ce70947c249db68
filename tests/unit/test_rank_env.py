"""The rank env contract: parsed, cross-checked, and built the way the operator builds it."""

import pytest

from paraserve.api import Parallelism
from paraserve.api.rank_env import RankEnvError, parse_rank_env, rank_environ


def test_every_rank_of_pp2_tp2_sp2_parses_to_its_coordinates() -> None:
    for rank in range(4):
        env = parse_rank_env(
            rank_environ(Parallelism(pipeline=2, tensor=2, sequence=2), rank, num_layers=4)
        )
        assert (env.pp_rank, env.tp_rank, env.sp_rank) == (rank // 2, rank % 2, rank % 2)
        assert env.stage_layers == ((0, 2) if rank < 2 else (2, 4))
        assert env.rank_of(env.pp_rank, env.tp_rank) == rank


def test_without_world_size_the_worker_is_a_single_process() -> None:
    env = parse_rank_env({"PARASERVE_METRICS_PORT": "9500"})
    assert (env.world_size, env.rank, env.pp_size, env.tp_size) == (1, 0, 1, 1)
    assert (env.metrics_port, env.metrics_path) == (9500, "/metrics")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": "2"}, "RANK=2 but PP_RANK × TP_SIZE + TP_RANK = 0 × 2 + 1 = 1"),
        ({"PARASERVE_SP_RANK": "0"}, "PARASERVE_SP_RANK=0 but it must be 1"),
        ({"WORLD_SIZE": "8"}, "WORLD_SIZE=8 but PARASERVE_PP_SIZE × PARASERVE_TP_SIZE"),
        ({"PARASERVE_SP_SIZE": "3"}, "PARASERVE_SP_SIZE=3 must be 1 or PARASERVE_TP_SIZE=2"),
        ({"PARASERVE_TP_RANK": "x"}, "PARASERVE_TP_RANK='x' is not an integer"),
        ({"PARASERVE_STAGE_LAYERS": "2-4"}, "is not 'start:end'"),
        ({"PARASERVE_METRICS_PATH": "metrics"}, "must start with '/'"),
    ],
)
def test_contradictions_fail_with_one_line(change: dict[str, str], message: str) -> None:
    environ = rank_environ(Parallelism(pipeline=2, tensor=2, sequence=2), 1, num_layers=4) | change
    with pytest.raises(RankEnvError) as error:
        parse_rank_env(environ)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_coordinate_is_named() -> None:
    environ = rank_environ(Parallelism(pipeline=2, tensor=2, sequence=1), 1, num_layers=4)
    del environ["PARASERVE_PP_RANK"]
    with pytest.raises(RankEnvError, match="PARASERVE_PP_RANK is not set"):
        parse_rank_env(environ)


def test_stage_layers_past_the_model_are_rejected() -> None:
    env = parse_rank_env(
        rank_environ(Parallelism(pipeline=2, tensor=2, sequence=1), 3, num_layers=8)
    )
    with pytest.raises(RankEnvError, match="goes past the model's 4 layers"):
        env.check(num_layers=4)
