"""Parsing of the units a spec is written in: bytes, parameter counts, durations, dtypes.

Each unit is parsed here and nowhere else; the Annotated types plug the parsers into
pydantic and tell the CRD generator how the field looks on the wire.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from decimal import Decimal, DecimalException, InvalidOperation
from functools import wraps
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, WithJsonSchema

# Kubernetes resource.Quantity suffixes (binary and decimal SI); "m" (milli) makes no sense
# for bytes or parameter counts and is rejected.
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^\s*([+]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]{0,2})\s*$")

# Parameter counts as model cards write them: 7B, 8.03B, 405B, 1.5T, 125M, or 70e9.
_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}

_DURATION_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")


def _number(text: str, what: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a valid {what}") from None


# Kubernetes stores quantities as int64; anything larger (or NaN, infinite) is a typo.
_LIMIT = Decimal(2**63 - 1)


def _bounded(amount: Decimal, value: Any) -> Decimal:
    if not amount.is_finite() or abs(amount) > _LIMIT:
        raise ValueError(f"{value!r} is out of range")
    return amount


_T = TypeVar("_T")


def _arithmetic_is_bad_input(parse: Callable[[Any], _T]) -> Callable[[Any], _T]:
    """Decimal overflow and friends (``10E999999``) are bad input, not crashes."""

    @wraps(parse)
    def guarded(value: Any) -> _T:
        try:
            return parse(value)
        except DecimalException:
            raise ValueError(f"{value!r} is out of range") from None

    return guarded


def _reject_non_scalar(value: Any, what: str, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"expected {what} (e.g. {example}), got {type(value).__name__}")


@_arithmetic_is_bad_input
def parse_bytes(value: Any) -> int:
    """A Kubernetes quantity of bytes (``80Gi``, ``80G``, ``81559Mi``, ``1e9``, 123) → int."""
    _reject_non_scalar(value, "a quantity of bytes", "80Gi, 80G or 85899345920")
    if isinstance(value, int | float | Decimal):
        amount = Decimal(value)
    else:
        match = _QUANTITY.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a quantity of bytes (e.g. 80Gi, 80G, 81559Mi)")
        number, suffix = match.groups()
        if suffix in _BINARY:
            scale = _BINARY[suffix]
        elif suffix in _DECIMAL:
            scale = _DECIMAL[suffix]
        elif suffix == "":
            scale = 1
        elif suffix[:1].upper() in _DECIMAL and suffix[1:] == "B":
            prefix = suffix[0].upper()
            raise ValueError(
                f"{value!r}: unknown unit {suffix!r}; write {number}{prefix} (decimal)"
                f" or {number}{prefix}i (binary)"
            )
        else:
            raise ValueError(
                f"{value!r}: unknown unit {suffix!r} (use Ki, Mi, Gi, Ti or k, M, G, T)"
            )
        amount = _number(number, "quantity") * scale
    amount = _bounded(amount, value)
    if amount < 0:
        raise ValueError(f"{value!r} is negative")
    if amount != amount.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(amount)


@_arithmetic_is_bad_input
def parse_count(value: Any) -> int:
    """A parameter count (``70B``, ``8.03B``, ``405B``, ``1.5T``, ``70e9``, 7000000000) → int."""
    _reject_non_scalar(value, "a parameter count", "70B, 8.03B or 70e9")
    if isinstance(value, int | float | Decimal):
        amount = Decimal(value)
    else:
        text = value.strip().replace("_", "")
        suffix = text[-1:].upper() if text[-1:].isalpha() and text[-1:].lower() != "e" else ""
        number = text[: len(text) - len(suffix)] if suffix else text
        if suffix not in _COUNT_SUFFIX:
            raise ValueError(f"{value!r}: unknown suffix {suffix!r} (use K, M, B or T)")
        amount = _number(number, "parameter count (e.g. 70B, 8.03B, 70e9)")
        amount *= _COUNT_SUFFIX[suffix]
    amount = _bounded(amount, value)
    if amount <= 0:
        raise ValueError(f"{value!r}: a parameter count must be positive")
    return int(amount.to_integral_value())


@_arithmetic_is_bad_input
def parse_duration(value: Any) -> float:
    """A duration (``100ms``, ``1s``, ``1m30s``, or a number of seconds) → seconds."""
    _reject_non_scalar(value, "a duration", "100ms, 1s or 0.5")
    if isinstance(value, int | float | Decimal):
        seconds = Decimal(value)
    else:
        text = value.strip()
        try:
            seconds = Decimal(text)
        except InvalidOperation:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"{value!r} is not a duration (e.g. 100ms, 1s, 1m30s)") from None
            seconds = sum((Decimal(n) * _DURATION_UNITS[u] for n, u in parts), Decimal(0))
    seconds = _bounded(seconds, value)
    if seconds < 0:
        raise ValueError(f"{value!r}: a duration must not be negative")
    return float(seconds)


class Dtype(enum.StrEnum):
    """Numeric type of weights or KV cache."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT8 = "float8"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bits(self) -> int:
        return _DTYPE_BITS[self]

    @property
    def bytes(self) -> float:
        """Bytes per element; int4 packs two per byte."""
        return self.bits / 8

    def bytes_for(self, elements: int) -> int:
        """Bytes taken by ``elements`` values, rounded up to a whole byte."""
        return -(-elements * self.bits // 8)


_DTYPE_BITS = {
    Dtype.FLOAT32: 32,
    Dtype.BFLOAT16: 16,
    Dtype.FLOAT16: 16,
    Dtype.FLOAT8: 8,
    Dtype.INT8: 8,
    Dtype.INT4: 4,
}

# On the wire (CRD) these accept an integer or a string; the generator maps this marker.
INT_OR_STRING = {"x-kubernetes-int-or-string": True}

Bytes = Annotated[int, BeforeValidator(parse_bytes), WithJsonSchema(INT_OR_STRING)]
ParameterCount = Annotated[int, BeforeValidator(parse_count), WithJsonSchema(INT_OR_STRING)]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(INT_OR_STRING)]


def format_bytes(value: float, unit: str = "GB") -> str:
    """Decimal GB (or the given SI unit) with at most two decimals: 17.5 GB, 34.25 GB."""
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
    return f"{_trim(value / scale)} {unit}"


def format_count(count: int) -> str:
    """A parameter count as model cards write it: 70000000000 → 70B, 8030000000 → 8.03B."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            return f"{_trim(count / scale)}{suffix}"
    return str(count)


def format_percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal: 0.428125 → 42.8 %, 0.85 → 85 %."""
    return f"{fraction * 100:.1f}".removesuffix(".0") + " %"


def _trim(number: float) -> str:
    text = f"{number:.2f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"
