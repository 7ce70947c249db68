"""Units parse in one place each: bytes, parameter counts, durations, dtypes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paraserve.api import (
    Dtype,
    format_bytes,
    format_count,
    format_percent,
    parse_bytes,
    parse_count,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80Gi", 80 * 2**30),
        ("80G", 80_000_000_000),
        ("81559Mi", 81559 * 2**20),
        ("16.75G", 16_750_000_000),
        ("1Ki", 1024),
        ("1k", 1000),
        ("1e9", 1_000_000_000),
        ("123", 123),
        (123, 123),
        ("0.5Gi", 2**29),
        ("1Ti", 2**40),
        (" 8 ", 8),
    ],
)
def test_quantities_of_bytes(text: object, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["80GB", "eighty", "", "-1Gi", "1.5", "1m", True, None, [1]])
def test_bad_quantities_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_bytes(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("70B", 70_000_000_000),
        ("8.03B", 8_030_000_000),
        ("405B", 405_000_000_000),
        ("7b", 7_000_000_000),
        ("70e9", 70_000_000_000),
        ("1.5T", 1_500_000_000_000),
        ("125M", 125_000_000),
        (70_000_000_000, 70_000_000_000),
        (7e9, 7_000_000_000),
    ],
)
def test_parameter_counts(text: object, expected: int) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize("bad", ["70X", "B", "0", "-7B", "seventy", False, {}])
def test_bad_parameter_counts_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_count(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100ms", 0.1),
        ("1s", 1.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("2h", 7200.0),
        ("0.8", 0.8),
        (1, 1.0),
        (0.075, 0.075),
    ],
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["fast", "1 s", "ms", "-1s", "1d", None])
def test_bad_durations_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_dtype_bytes() -> None:
    assert [d.bytes for d in Dtype] == [4, 2, 2, 1, 1, 0.5]
    assert Dtype.INT4.bytes_for(3) == 2  # two values per byte, rounded up
    assert Dtype.FLOAT16.bytes_for(70_000_000_000) == 140_000_000_000


def test_formatting_uses_decimal_units() -> None:
    assert format_bytes(17.5e9) == "17.5 GB"
    assert format_bytes(34.25e9) == "34.25 GB"
    assert format_bytes(80e9) == "80 GB"
    assert format_percent(0.428125) == "42.8 %"
    assert format_percent(0.85) == "85 %"
    assert format_count(70_000_000_000) == "70B"
    assert format_count(8_030_000_000) == "8.03B"


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=12),
        st.from_regex(r"[-+]?[0-9.]{1,6}([eE][-+]?[0-9]{1,10})?(Ki|Mi|Gi|k|M|G|B|T|ms|s|m|h)?"),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e999999999", "1e999999999Gi"]),
    )
)
def test_parsers_fail_only_with_value_error(value: object) -> None:
    for parse in (parse_bytes, parse_count, parse_duration):
        try:
            result = parse(value)
        except ValueError:
            continue
        assert result >= 0
