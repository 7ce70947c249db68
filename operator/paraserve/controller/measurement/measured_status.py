"""Pure measurement: rank scrapes over a window → `status.measured` and the MeetsSLO condition.

Latency P99s are `histogram_quantile(0.99, sum by (le) (increase(<histogram>_bucket[w])))`
over every scraped rank, where the window w runs from the oldest scrape of the rank kept within
the window to now — what Prometheus computes for a range vector of that span. A rank seen for
the first time (or restarted: its counters went down) contributes its cumulative counts.
Throughput is the sum over ranks of the request counter's increase divided by the span; it
needs two scrapes, so it is empty on the first one. Memory is the worst (largest) rank's.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from paraserve.api import ConditionType, MeasuredStatus, SloSpec, StalledReplica, memory_column
from paraserve.controller import merge_patch
from paraserve.controller.measurement.metric_profiles import RankReading
from paraserve.controller.measurement.quantile import (
    bucket_increase,
    counter_increase,
    histogram_quantile,
    sum_buckets,
)

P99: Final = 0.99

#: Figures compared with a relative tolerance to decide whether status is rewritten.
MATERIAL_FIELDS: Final = (
    "maxMemoryBytesPerGpu",
    "memoryUtilization",
    "prefillP99Seconds",
    "decodeP99PerTokenSeconds",
    "throughputRps",
    "kvCacheUtilization",
)
#: Fields any change of which is material.
EXACT_FIELDS: Final = (
    "ranksScraped",
    "ranksUnreachable",
    "profile",
    "memoryNotMeasured",
    # A stall reported or over is what the reconcile acts on: always written at once.
    "stalledReplicas",
)

# MeetsSLO reasons.
OBJECTIVES_MET: Final = "ObjectivesMet"
OBJECTIVES_MISSED: Final = "ObjectivesMissed"
NOT_MEASURED: Final = "NotMeasured"
NO_OBJECTIVES: Final = "NoObjectives"
RANKS_UNREACHABLE: Final = "RanksUnreachable"


@dataclass(frozen=True)
class Scrape:
    """One rank's reading at one time (monotonic seconds)."""

    at: float
    reading: RankReading


class History:
    """The scrapes of each rank that are still inside the window, keyed by pod uid."""

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self._scrapes: dict[str, deque[Scrape]] = {}

    def record(self, key: str, scrape: Scrape) -> Scrape | None:
        """Keep `scrape`; return the baseline to compare it with (None on the first one).

        The baseline is the oldest scrape not older than the window; when the interval is
        longer than the window, the previous scrape.
        """
        kept = self._scrapes.setdefault(key, deque())
        start = scrape.at - self.window
        while len(kept) > 1 and kept[1].at <= start:
            kept.popleft()
        baseline = next((s for s in kept if s.at >= start), kept[-1] if kept else None)
        kept.append(scrape)
        return baseline

    def retain(self, keys: Iterable[str]) -> None:
        """Forget ranks that are gone (their pods were deleted)."""
        wanted = set(keys)
        for key in [k for k in self._scrapes if k not in wanted]:
            del self._scrapes[key]


@dataclass(frozen=True)
class Measurement:
    max_memory_bytes: int | None = None
    memory_utilization: float | None = None
    prefill_p99: float | None = None
    decode_p99_per_token: float | None = None
    throughput_rps: float | None = None
    kv_cache_utilization: float | None = None
    window_seconds: float | None = None
    ranks_scraped: int = 0
    ranks_unreachable: int = 0
    memory_not_measured: str | None = None
    stalled: tuple[StalledReplica, ...] = ()


def _windowed_p99(
    windows: Sequence[tuple[Scrape, Scrape | None]], which: str, q: float
) -> float | None:
    increases = []
    for current, baseline in windows:
        now: dict[float, float] | None = getattr(current.reading, which)
        if now is None:
            continue
        before = getattr(baseline.reading, which) if baseline is not None else None
        increases.append(bucket_increase(now, before))
    return histogram_quantile(q, sum_buckets(increases)) if increases else None


def aggregate(
    windows: Sequence[tuple[Scrape, Scrape | None]],
    *,
    unreachable: int = 0,
    gpu_memory_bytes: int | None = None,
    quantile: float = P99,
) -> Measurement:
    """The deployment's figures from each scraped rank's (current, baseline) pair."""
    memories = [
        c.reading.memory_used_bytes for c, _ in windows if c.reading.memory_used_bytes is not None
    ]
    worst = int(max(memories)) if memories else None
    usages = [c.reading.kv_cache_usage for c, _ in windows if c.reading.kv_cache_usage is not None]
    rate, spans = 0.0, []
    for current, baseline in windows:
        if baseline is None or current.at <= baseline.at:
            continue
        now, before = current.reading.requests, baseline.reading.requests
        if now is None or before is None:
            continue
        span = current.at - baseline.at
        rate += counter_increase(now, before) / span
        spans.append(span)
    return Measurement(
        max_memory_bytes=worst,
        memory_utilization=worst / gpu_memory_bytes
        if worst is not None and gpu_memory_bytes
        else None,
        prefill_p99=_windowed_p99(windows, "prefill", quantile),
        decode_p99_per_token=_windowed_p99(windows, "decode", quantile),
        throughput_rps=rate if spans else None,
        kv_cache_utilization=max(usages) if usages else None,
        window_seconds=max(spans) if spans else None,
        ranks_scraped=len(windows),
        ranks_unreachable=unreachable,
    )


def with_device_memory(
    m: Measurement,
    used_bytes: Sequence[float],
    *,
    not_measured: str | None,
    gpu_memory_bytes: int | None,
) -> Measurement:
    """Memory read from the GPUs (dcgm-exporter) rather than the ranks: the worst rank's."""
    worst = int(max(used_bytes)) if used_bytes else None
    return dataclasses.replace(
        m,
        max_memory_bytes=worst,
        memory_utilization=worst / gpu_memory_bytes
        if worst is not None and gpu_memory_bytes
        else None,
        memory_not_measured=not_measured,
    )


def _seconds(value: float) -> str:
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


def slo_condition(m: Measurement, slo: SloSpec) -> dict[str, Any]:
    """MeetsSLO: False if any objective is missed; Unknown if one cannot be judged; else True."""
    checks: list[tuple[str, float | None, float, bool]] = []  # name, measured, target, upper
    if slo.prefill_p99 is not None:
        checks.append(("prefill P99", m.prefill_p99, slo.prefill_p99, True))
    if slo.decode_p99_per_token is not None:
        checks.append(
            ("decode P99 per token", m.decode_p99_per_token, slo.decode_p99_per_token, True)
        )
    if slo.min_throughput_rps is not None:
        checks.append(("throughput", m.throughput_rps, slo.min_throughput_rps, False))
    if not checks:
        return _condition("True", NO_OBJECTIVES, "spec.slo sets no objectives")
    if m.ranks_scraped == 0:
        return _condition(
            "Unknown",
            RANKS_UNREACHABLE,
            f"no rank's metrics could be read ({m.ranks_unreachable} unreachable)",
        )
    missed, unknown, met = [], [], []
    for name, value, target, upper in checks:
        shown = (lambda v: f"{v:.3g} req/s") if not upper else _seconds
        if value is None:
            unknown.append(f"{name}: not measured yet")
        elif (value > target) if upper else (value < target):
            missed.append(f"{name} {shown(value)} {'>' if upper else '<'} {shown(target)}")
        else:
            met.append(f"{name} {shown(value)} {'≤' if upper else '≥'} {shown(target)}")
    if missed:
        return _condition("False", OBJECTIVES_MISSED, "; ".join(missed + unknown + met))
    if unknown:
        return _condition("Unknown", NOT_MEASURED, "; ".join(unknown + met))
    return _condition("True", OBJECTIVES_MET, "; ".join(met))


def _condition(status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": ConditionType.MEETS_SLO.value,
        "status": status,
        "reason": reason,
        "message": message,
    }


def measured_status(m: Measurement, profile: str, sampled_at: str) -> dict[str, Any]:
    """`status.measured` on the wire (camelCase, empty figures left out)."""
    return MeasuredStatus(
        max_memory_bytes_per_gpu=m.max_memory_bytes,
        memory_utilization=_round(m.memory_utilization, 6),
        prefill_p99_seconds=_round(m.prefill_p99, 6),
        decode_p99_per_token_seconds=_round(m.decode_p99_per_token, 6),
        throughput_rps=_round(m.throughput_rps, 4),
        kv_cache_utilization=_round(m.kv_cache_utilization, 4),
        window_seconds=_round(m.window_seconds, 1),
        profile=profile,
        sampled_at=sampled_at,
        ranks_scraped=m.ranks_scraped,
        ranks_unreachable=m.ranks_unreachable,
        memory_not_measured=m.memory_not_measured,
        stalled_replicas=list(m.stalled) or None,
    ).to_wire()


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _differs(old: Any, new: Any, tolerance: float) -> bool:
    if old is None or new is None:
        return old is not new
    try:
        a, b = float(old), float(new)
    except (TypeError, ValueError):
        return bool(old != new)
    return abs(a - b) > tolerance * max(abs(a), abs(b))


def _parse_time(text: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        return None


def verdict_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """MeetsSLO says something else than before (or is new): what a user waits to read."""
    return old is None or any(old.get(k) != new.get(k) for k in ("status", "reason"))


def needs_write(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    old_condition: Mapping[str, Any] | None,
    new_condition: Mapping[str, Any],
    now: datetime.datetime,
    *,
    tolerance: float = 0.05,
    refresh_seconds: float = 0.0,
) -> bool:
    """Whether the change is material: a figure moved by more than `tolerance` (relative),
    a count or the condition changed, or (if `refresh_seconds` is not 0) the last write is
    older than that. Nothing else is: an idle deployment is never rewritten for a new time."""
    if not old or verdict_changed(old_condition, new_condition):
        return True
    if any(old.get(k) != new.get(k) for k in EXACT_FIELDS):
        return True
    if any(_differs(old.get(k), new.get(k), tolerance) for k in MATERIAL_FIELDS):
        return True
    if not refresh_seconds:
        return False
    written = _parse_time(old.get("sampledAt"))
    return written is None or (now - written).total_seconds() >= refresh_seconds


def status_patch(
    measured: Mapping[str, Any],
    condition: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    """The merge patch of status: measured, the MEM column when memory was measured, and the
    conditions list with MeetsSLO replaced (its transition time kept while its status holds)."""
    conditions = [dict(c) for c in current.get("conditions") or [] if isinstance(c, Mapping)]
    previous = next((c for c in conditions if c.get("type") == condition["type"]), None)
    same = previous is not None and previous.get("status") == condition["status"]
    stamped = {
        **condition,
        "lastTransitionTime": (previous or {}).get("lastTransitionTime") if same else now,
        **({"observedGeneration": generation} if generation is not None else {}),
    }
    others = [c for c in conditions if c.get("type") != condition["type"]]
    # A figure that drops out (no rate any more, no memory reading) is nulled, not left stale.
    patch: dict[str, Any] = {
        "measured": merge_patch.diff(current.get("measured"), measured),
        "conditions": [*others, stamped],
    }
    worst = measured.get("maxMemoryBytesPerGpu")
    if worst is not None:
        gpu = ((current.get("plan") or {}).get("memory") or {}).get("gpuMemoryBytes")
        patch["memory"] = memory_column(int(worst), gpu, estimated=False)
    return patch
