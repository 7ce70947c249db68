"""`paraserve worker`'s model sources and configuration checks (no rendezvous needed)."""

import argparse
from pathlib import Path

import pytest
import torch
import yaml

from paraserve.worker.config import resolve
from paraserve.worker.shape import TINY_ARCHITECTURE
from paraserve.worker.worker_flags import _architecture_document, add_arguments


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "document",
    [
        TINY_ARCHITECTURE,
        {"model": {"architecture": TINY_ARCHITECTURE}},
        {"kind": "InferenceDeployment", "spec": {"model": {"architecture": TINY_ARCHITECTURE}}},
    ],
    ids=["bare", "model", "deployment"],
)
def test_architecture_file_forms(tmp_path: Path, document: dict) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(document))
    env, config, *_ = resolve(parse("--architecture", str(path)), {}, _architecture_document)
    assert config.shape.hidden_size == 64 and config.layer_range == (0, 4)
    assert env.world_size == 1


def test_flags_choose_dtype_and_sizes() -> None:
    args = parse("--tiny", "--dtype", "bfloat16", "--max-batch-size", "3")
    _, config, *_ = resolve(args, {}, _architecture_document)
    assert (config.dtype, config.kv_cache_dtype) == (torch.bfloat16, torch.bfloat16)
    assert (config.max_batch_size, config.max_sequence_length) == (3, 128)
    assert config.stall_after == 0
    assert (
        resolve(parse("--tiny", "--stall-after", "4"), {}, _architecture_document)[1].stall_after
        == 4
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tiny", "--dtype", "int4"], "the reference worker runs float32, bfloat16 or float16"),
        (["--tiny", "--prompt-length", "120", "--output-tokens", "9"], "exceeds maxSequenceLength"),
        ([], "no model: give --topology FILE"),
        (["--tiny", "--metrics-port", "99999"], "metrics port 99999: a port is 0–65535"),
        (["--tiny", "--timeout", "-1"], "--timeout -1: seconds must be > 0"),
        (["--tiny", "--dump", "/nonexistent/dir/x.pt"], "/nonexistent/dir is not a directory"),
        (["--tiny", "--stall-after", "-1"], "--stall-after must be ≥ 0"),
    ],
)
def test_bad_configuration_is_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(parse(*argv), {}, _architecture_document)


def test_a_model_that_cannot_be_split_is_refused() -> None:
    from paraserve.api import Parallelism
    from paraserve.api.rank_env import rank_environ

    environ = rank_environ(Parallelism(pipeline=1, tensor=8, sequence=1), 0, num_layers=4)
    with pytest.raises(ValueError, match="numAttentionHeads=4 is not divisible by tensor=8"):
        resolve(parse("--tiny"), environ, _architecture_document)


def test_cuda_without_a_cuda_device_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda, but this process sees no CUDA device"):
        resolve(parse("--tiny", "--device", "cuda"), {}, _architecture_document)


def test_log_level_is_a_choice() -> None:
    assert parse("--tiny", "--log-level", "warning").log_level == "WARNING"
    with pytest.raises(SystemExit):
        parse("--tiny", "--log-level", "bogus")
