"""Sharded ranks as real local processes (gloo on CPU, the operator's env contract and topology
file, the `paraserve worker` entry) produce the logits of a single-process forward."""

from pathlib import Path

import pytest
import torch

from paraserve.worker.local import run_replica
from paraserve.worker.reference import reference_logits
from paraserve.worker.shape import ModelShape
from paraserve.worker.weights import build_stage

PROMPT, OUTPUT = 5, 4  # 5 is not a multiple of tensor: sequence parallelism must pad


@pytest.mark.parametrize(
    ("pipeline", "tensor", "sequence"),
    [(2, 2, 2), (4, 1, 1), (1, 4, 1), (1, 4, 4)],
    ids=["pp2-tp2-sp2", "pp4", "tp4", "tp4-sp4"],
)
def test_sharded_logits_equal_the_single_process_model(
    tmp_path: Path, pipeline: int, tensor: int, sequence: int
) -> None:
    dump = tmp_path / "logits.pt"
    codes = run_replica(
        [
            "--rate", "0", "--requests", "2", "--prompt-length", str(PROMPT),
            "--output-tokens", str(OUTPUT), "--seed", "11", "--load-seed", "5",
            "--exit-when-done", "--dump", str(dump), "--log-level", "warning",
        ],
        pipeline=pipeline,
        tensor=tensor,
        sequence=sequence,
        max_batch_size=2,
        max_sequence_length=16,
        timeout=120,
    )  # fmt: skip
    assert codes == [0] * (pipeline * tensor)
    result = torch.load(dump)
    prompt, generated = result["prompt"], result["generated"]
    assert prompt.shape == (2, PROMPT) and generated.shape == (2, OUTPUT)

    full_model = build_stage(ModelShape.tiny(), seed=11)
    expected = reference_logits(full_model, torch.cat([prompt, generated[:, :-1]], dim=1))
    torch.testing.assert_close(result["prefill_logits"], expected[:, :PROMPT], rtol=1e-4, atol=1e-4)
    assert len(result["decode_logits"]) == OUTPUT - 1
    for step, logits in enumerate(result["decode_logits"]):
        torch.testing.assert_close(logits, expected[:, PROMPT + step], rtol=1e-4, atol=1e-4)
    # Greedy sampling on the last stage picked the reference's argmax at every position.
    assert torch.equal(generated, expected[:, PROMPT - 1 :].argmax(-1))


def test_a_rank_with_a_contradictory_env_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from paraserve.worker.command import EXIT_BAD_INPUT, add_arguments, run
    from paraserve.worker.env import rank_environ

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    environ = rank_environ(1, pipeline=2, tensor=2, sequence=2, num_layers=4) | {"RANK": "3"}
    assert run(parser.parse_args(["--tiny"]), environ) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "paraserve worker: error: RANK=3 but PP_RANK × TP_SIZE + TP_RANK = 0 × 2 + 1 = 1"
    )


def test_paraserve_worker_runs_alone_without_a_topology() -> None:
    from paraserve.cli import main

    argv = ["worker", "--tiny", "--rate", "0", "--requests", "3", "--max-batch-size", "2"]
    argv += ["--exit-when-done", "--metrics-port", "0", "--log-level", "warning"]
    assert main(argv) == 0
