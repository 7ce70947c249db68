"""Each metric profile reads its engine's real exposition text."""

from __future__ import annotations

import math

import pytest
from expositions import PARASERVE, SGLANG, VLLM, VLLM_OLD

from paraserve.controller.measurement.exposition import ExpositionError, parse
from paraserve.controller.measurement.metric_profiles import profile_for, read
from paraserve.controller.measurement.quantile import histogram_quantile


def test_paraserve_profile() -> None:
    reading = read(profile_for("paraserve"), parse(PARASERVE))
    assert reading.memory_used_bytes == 1_313_024
    assert reading.parameters_bytes == 723_200
    assert reading.kv_cache_bytes == 524_288
    assert reading.kv_cache_usage is None
    assert reading.requests == 30 and reading.tokens == 240
    assert reading.prefill is not None and reading.decode is not None
    assert reading.prefill[math.inf] == 30 and reading.decode[math.inf] == 210
    # rank 0.99 × 210 = 207.9 lies in (2.5 ms, 5 ms], which holds 97 of them.
    expected = 0.0025 + 0.0025 * (207.9 - 113) / 97
    assert histogram_quantile(0.99, reading.decode) == pytest.approx(expected)
    # rank 29.7 lies in (10 ms, 25 ms]: 10.7 of its 11.
    assert histogram_quantile(0.99, reading.prefill) == pytest.approx(0.01 + 0.015 * 10.7 / 11)


def test_vllm_profile() -> None:
    reading = read(profile_for("vllm"), parse(VLLM))
    assert reading.requests == 100  # summed over finished_reason
    assert reading.tokens == 25_600
    assert reading.kv_cache_usage == pytest.approx(0.4125)
    assert reading.memory_used_bytes is None  # vLLM exports no device memory of the rank
    assert reading.prefill is not None and reading.decode is not None
    assert histogram_quantile(0.99, reading.prefill) == pytest.approx(0.175)
    assert histogram_quantile(0.99, reading.decode) == pytest.approx(
        0.025 + 0.025 * (25_245 - 25_000) / 500
    )


def test_older_vllm_names_are_read_too() -> None:
    reading = read(profile_for("vllm"), parse(VLLM_OLD))
    assert reading.kv_cache_usage == 0.5
    assert reading.decode is not None
    assert histogram_quantile(0.5, reading.decode) == pytest.approx(0.01)
    assert reading.prefill is None and reading.tokens is None
    assert reading.requests == 7


def test_sglang_profile() -> None:
    reading = read(profile_for("sglang"), parse(SGLANG))
    assert reading.requests == 400 and reading.tokens == 51_200
    assert reading.kv_cache_usage == pytest.approx(0.23)  # the fuller TP rank
    assert reading.memory_used_bytes is None
    assert reading.prefill is not None and reading.decode is not None
    assert histogram_quantile(0.99, reading.prefill) == pytest.approx(0.2 + 0.2 * 96 / 100)
    assert histogram_quantile(0.99, reading.decode) == pytest.approx(
        0.01 + 0.01 * (50_688 - 40_000) / 10_800
    )


def test_a_profile_reads_nothing_of_another_engine() -> None:
    reading = read(profile_for("sglang"), parse(VLLM))
    assert reading == type(reading)()


def test_garbage_is_an_exposition_error() -> None:
    with pytest.raises(ExpositionError):
        parse("<html>502 Bad Gateway</html>\n")
