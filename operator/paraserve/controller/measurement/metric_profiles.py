"""Metric profiles: which names of paraserve's, vLLM's and SGLang's endpoints give each figure.

What each profile reports as memory is deliberately narrow:

* ``paraserve``: ``paraserve_rank_memory_used_bytes``, the rank's own GPU-memory figure (peak
  reserved by the CUDA allocator on GPU; parameters + KV cache + peak activations on CPU).
* ``vllm`` / ``sglang``: these engines export no device-memory figure of the rank. They export
  the fraction of their KV-cache pool in use (``vllm:kv_cache_usage_perc``, formerly
  ``vllm:gpu_cache_usage_perc``; ``sglang:token_usage``), reported as ``kvCacheUtilization``.
  Memory is left empty: usage × GPU memory would be a guess of a part of the pool, not a
  measurement of what the rank holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from paraserve.api import MetricsProfile, metric_names
from paraserve.controller.measurement.exposition import Exposition


@dataclass(frozen=True)
class MetricProfile:
    """Names to read, each a list of alternatives where an engine renamed a metric."""

    name: str
    prefill_histograms: tuple[str, ...]
    decode_histograms: tuple[str, ...]
    request_counters: tuple[str, ...]
    token_counters: tuple[str, ...]
    memory_used_gauges: tuple[str, ...] = ()
    kv_cache_usage_gauges: tuple[str, ...] = ()
    # The head's queue and batch, for hang detection (with token_counters).
    waiting_gauges: tuple[str, ...] = ()
    running_gauges: tuple[str, ...] = ()
    # paraserve only: the held bytes by kind, for comparing with the planner's estimate.
    memory_by_kind: str | None = None


@dataclass(frozen=True)
class RankReading:
    """What one scrape of one rank says, in the profile-independent shape."""

    memory_used_bytes: float | None = None
    parameters_bytes: float | None = None
    kv_cache_bytes: float | None = None
    kv_cache_usage: float | None = None
    prefill: dict[float, float] | None = None
    decode: dict[float, float] | None = None
    requests: float | None = None
    tokens: float | None = None
    waiting: float | None = None
    running: float | None = None


# The names our own worker exports (the contract is in api, beside the worker's side of it).
PARASERVE = MetricProfile(
    name=MetricsProfile.PARASERVE.value,
    prefill_histograms=(metric_names.PREFILL_LATENCY,),
    decode_histograms=(metric_names.DECODE_TOKEN_LATENCY,),
    request_counters=(metric_names.REQUESTS,),
    token_counters=(metric_names.GENERATED_TOKENS,),
    memory_used_gauges=(metric_names.MEMORY_USED,),
    memory_by_kind=metric_names.MEMORY,
    waiting_gauges=(metric_names.REQUESTS_WAITING,),
    running_gauges=(metric_names.REQUESTS_RUNNING,),
)

VLLM = MetricProfile(
    name=MetricsProfile.VLLM.value,
    prefill_histograms=("vllm:time_to_first_token_seconds",),
    # vLLM ≥ 0.9 renamed time_per_output_token to inter_token_latency; read either.
    decode_histograms=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    request_counters=("vllm:request_success_total",),
    token_counters=("vllm:generation_tokens_total",),
    kv_cache_usage_gauges=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    waiting_gauges=("vllm:num_requests_waiting",),
    running_gauges=("vllm:num_requests_running",),
)

SGLANG = MetricProfile(
    name=MetricsProfile.SGLANG.value,
    prefill_histograms=("sglang:time_to_first_token_seconds",),
    decode_histograms=(
        "sglang:inter_token_latency_seconds",
        "sglang:time_per_output_token_seconds",
    ),
    request_counters=("sglang:num_requests_total",),
    token_counters=("sglang:generation_tokens_total",),
    kv_cache_usage_gauges=("sglang:token_usage",),
    waiting_gauges=("sglang:num_queue_reqs",),
    running_gauges=("sglang:num_running_reqs",),
)

PROFILES: dict[str, MetricProfile] = {p.name: p for p in (PARASERVE, VLLM, SGLANG)}


def profile_for(name: str | MetricsProfile) -> MetricProfile:
    return PROFILES[MetricsProfile(name).value]


def _first_buckets(exposition: Exposition, names: tuple[str, ...]) -> dict[float, float] | None:
    for name in names:
        buckets = exposition.buckets(name)
        if buckets is not None:
            return buckets
    return None


def _first(exposition: Exposition, names: tuple[str, ...], *, largest: bool) -> float | None:
    for name in names:
        value = exposition.maximum(name) if largest else exposition.total(name)
        if value is not None:
            return value
    return None


def read(profile: MetricProfile, exposition: Exposition) -> RankReading:
    """The figures of one rank's scrape; a metric the endpoint lacks is None, never a guess."""
    by_kind = profile.memory_by_kind
    return RankReading(
        # A rank's memory is one figure; several series (engines) → the largest is the rank's.
        memory_used_bytes=_first(exposition, profile.memory_used_gauges, largest=True),
        parameters_bytes=exposition.labelled(by_kind, kind=metric_names.KIND_PARAMETERS)
        if by_kind
        else None,
        kv_cache_bytes=exposition.labelled(by_kind, kind=metric_names.KIND_KV_CACHE)
        if by_kind
        else None,
        kv_cache_usage=_first(exposition, profile.kv_cache_usage_gauges, largest=True),
        prefill=_first_buckets(exposition, profile.prefill_histograms),
        decode=_first_buckets(exposition, profile.decode_histograms),
        # Counters are summed over their labels (vLLM splits requests by finished_reason).
        requests=_first(exposition, profile.request_counters, largest=False),
        tokens=_first(exposition, profile.token_counters, largest=False),
        # Gauges summed over their series (an engine labels them by model or engine index).
        waiting=_first(exposition, profile.waiting_gauges, largest=False),
        running=_first(exposition, profile.running_gauges, largest=False),
    )
