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

    from paraserve.api import Parallelism
    from paraserve.api.rank_env import rank_environ
    from paraserve.worker.worker_flags import EXIT_BAD_INPUT, add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    environ = rank_environ(Parallelism(pipeline=2, tensor=2, sequence=2), 1, num_layers=4) | {
        "RANK": "3"
    }
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


def test_every_rank_serves_its_own_measured_memory_and_stops_on_sigterm() -> None:
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from paraserve.api import InferenceDeploymentSpec
    from paraserve.worker.allocation import allocation_report
    from paraserve.worker.local import LocalReplica
    from paraserve.worker.shape import TINY_ARCHITECTURE

    replica = LocalReplica(
        ["--rate", "0", "--requests", "4", "--prompt-length", "6", "--output-tokens", "3",
         "--log-level", "warning"],
        pipeline=2, tensor=2, sequence=2, max_batch_size=2, max_sequence_length=16,
    )  # fmt: skip

    def scrape(rank: int) -> dict[tuple[str, str], float]:
        url = f"http://127.0.0.1:{replica.metrics_ports[rank]}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
        return {
            (s.name, s.labels.get("kind", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                readings = [scrape(rank) for rank in range(4)]
                decoded = [
                    r[("paraserve_decode_token_latency_seconds_count", "")] for r in readings
                ]
                if decoded == [8] * 4 and readings[0][("paraserve_requests_total", "")] == 4:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the replica did not serve 4 requests in 60 s"
            time.sleep(0.2)
    finally:
        replica.stop()
        codes = replica.wait(60)
    assert codes == [0, 0, 0, 0]

    spec = InferenceDeploymentSpec.model_validate(
        {
            "model": {"name": "tiny", "dtype": "float32", "architecture": TINY_ARCHITECTURE},
            "parallelism": {"pipeline": 2, "tensor": 2, "sequence": 2},
            "serving": {"maxBatchSize": 2, "maxSequenceLength": 16},
        }
    )
    for row, reading in zip(allocation_report(spec), readings, strict=True):
        assert reading[("paraserve_rank_memory_bytes", "parameters")] == row.parameters_bytes
        assert reading[("paraserve_rank_memory_bytes", "kv_cache")] == row.kv_cache_bytes
        assert row.parameters_bytes == row.estimated_parameters_bytes  # the planner's model
        assert reading[("paraserve_prefill_latency_seconds_count", "")] == 4
    # Counters are rank 0's alone, so summing over ranks gives the replica's throughput.
    assert [r[("paraserve_requests_total", "")] for r in readings] == [4, 0, 0, 0]
    assert sum(r[("paraserve_generated_tokens_total", "")] for r in readings) == 12
