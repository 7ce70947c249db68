"""Measurement: windows over scrapes, the worst rank, throughput, MeetsSLO, material changes,
and the loop against real HTTP endpoints (one of them unreachable)."""

from __future__ import annotations

import asyncio
import datetime
import math
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from expositions import PARASERVE, VLLM

from paraserve.api import SloSpec
from paraserve.api.labels import METRICS_ADDRESS_ANNOTATION
from paraserve.controller.api_writes import LaneBusy, Urgency
from paraserve.controller.measurement.measure_loop import Measurer, MeasureSettings
from paraserve.controller.measurement.measured_status import (
    History,
    Measurement,
    Scrape,
    aggregate,
    measured_status,
    needs_write,
    slo_condition,
    status_patch,
)
from paraserve.controller.measurement.metric_profiles import RankReading
from paraserve.controller.measurement.scrape import metrics_url
from paraserve.controller.rank_pods import INDEX as RANK_PODS
from paraserve.controller.rank_pods import RankPod

INF = math.inf
NOW = datetime.datetime(2026, 1, 1, 0, 10, tzinfo=datetime.UTC)


def reading(
    requests: float = 0.0, prefill: dict[float, float] | None = None, memory: float = 1e9
) -> RankReading:
    return RankReading(
        memory_used_bytes=memory,
        requests=requests,
        prefill=prefill,
        decode={0.01: 0.0, 0.02: 10.0, INF: 10.0},
    )


def test_history_keeps_the_window_and_returns_its_oldest_scrape() -> None:
    history = History(window_seconds=10)
    first = Scrape(0.0, reading())
    assert history.record("r", first) is None
    assert history.record("r", Scrape(4.0, reading())) is first
    assert history.record("r", Scrape(8.0, reading())) is first
    # At t=12 the window starts at 2: the scrape at 4 is the oldest inside it.
    assert history.record("r", Scrape(12.0, reading())).at == 4.0  # type: ignore[union-attr]
    # Scrapes further apart than the window: the previous one is the baseline.
    assert history.record("r", Scrape(40.0, reading())).at == 12.0  # type: ignore[union-attr]
    history.retain([])
    assert history.record("r", Scrape(41.0, reading())) is None


def test_aggregate_windows_latency_and_rates_requests() -> None:
    before = Scrape(0.0, reading(requests=100, prefill={0.1: 90.0, 1.0: 100.0, INF: 100.0}))
    # 60 new requests in 30 s, all slower than 0.1 s: the window shows them, not the past.
    after = Scrape(30.0, reading(requests=160, prefill={0.1: 90.0, 1.0: 160.0, INF: 160.0}))
    other = Scrape(30.0, reading(memory=3e9))  # a rank that counts no requests
    m = aggregate([(after, before), (other, None)], gpu_memory_bytes=int(80e9), unreachable=1)
    assert m.throughput_rps == pytest.approx(2.0)
    assert m.window_seconds == 30.0
    assert m.prefill_p99 == pytest.approx(0.1 + 0.9 * 0.99)
    assert m.max_memory_bytes == int(3e9)
    assert m.memory_utilization == pytest.approx(3 / 80)
    assert (m.ranks_scraped, m.ranks_unreachable) == (2, 1)
    # The first scrape has no rate yet, and its latency is the cumulative histogram.
    first = aggregate([(before, None)])
    assert first.throughput_rps is None and first.window_seconds is None
    assert first.prefill_p99 == pytest.approx(0.1 + 0.9 * 0.9)


def test_a_restarted_rank_counts_from_zero() -> None:
    before = Scrape(0.0, reading(requests=500))
    after = Scrape(10.0, reading(requests=20))
    assert aggregate([(after, before)]).throughput_rps == pytest.approx(2.0)


def test_no_observations_in_the_window_is_not_a_latency() -> None:
    same = reading(requests=5, prefill={0.1: 5.0, INF: 5.0})
    m = aggregate([(Scrape(10.0, same), Scrape(0.0, same))])
    assert m.prefill_p99 is None and m.decode_p99_per_token is None
    assert m.throughput_rps == 0.0


SLO = SloSpec.model_validate(
    {"prefillP99": "1s", "decodeP99PerToken": "100ms", "minThroughputRPS": 2}
)


def test_meets_slo() -> None:
    good = Measurement(
        prefill_p99=0.5, decode_p99_per_token=0.05, throughput_rps=3, ranks_scraped=4
    )
    condition = slo_condition(good, SLO)
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "MeetsSLO",
        "True",
        "ObjectivesMet",
    )
    assert "prefill P99 500 ms ≤ 1 s" in condition["message"]


def test_misses_slo_with_the_numbers() -> None:
    slow = Measurement(
        prefill_p99=1.5, decode_p99_per_token=None, throughput_rps=1, ranks_scraped=4
    )
    condition = slo_condition(slow, SLO)
    assert (condition["status"], condition["reason"]) == ("False", "ObjectivesMissed")
    assert "prefill P99 1.5 s > 1 s" in condition["message"]
    assert "throughput 1 req/s < 2 req/s" in condition["message"]
    assert "decode P99 per token: not measured yet" in condition["message"]


def test_unknown_until_measured_and_when_unreachable() -> None:
    partial = Measurement(prefill_p99=0.5, ranks_scraped=4)
    assert slo_condition(partial, SLO)["status"] == "Unknown"
    assert slo_condition(partial, SLO)["reason"] == "NotMeasured"
    dark = Measurement(ranks_scraped=0, ranks_unreachable=4)
    assert slo_condition(dark, SLO)["reason"] == "RanksUnreachable"
    assert slo_condition(dark, SloSpec())["reason"] == "NoObjectives"


def _written(m: Measurement, at: str = "2026-01-01T00:09:00Z") -> dict[str, Any]:
    return measured_status(m, "paraserve", at)


def test_only_material_changes_are_written() -> None:
    base = Measurement(max_memory_bytes=1000, prefill_p99=0.5, throughput_rps=10, ranks_scraped=4)
    old, cond = _written(base), slo_condition(base, SLO)
    tiny = Measurement(
        max_memory_bytes=1010, prefill_p99=0.51, throughput_rps=10.3, ranks_scraped=4
    )
    assert not needs_write(old, _written(tiny), cond, slo_condition(tiny, SLO), NOW)
    moved = Measurement(max_memory_bytes=1000, prefill_p99=0.6, throughput_rps=10, ranks_scraped=4)
    assert needs_write(old, _written(moved), cond, slo_condition(moved, SLO), NOW)
    fewer = Measurement(
        max_memory_bytes=1000,
        prefill_p99=0.5,
        throughput_rps=10,
        ranks_scraped=3,
        ranks_unreachable=1,
    )
    assert needs_write(old, _written(fewer), cond, slo_condition(fewer, SLO), NOW)
    # Unchanged figures are still refreshed once sampledAt is older than the refresh period.
    later = NOW + datetime.timedelta(minutes=5)
    assert needs_write(old, _written(base), cond, cond, later, refresh_seconds=300)
    assert not needs_write(old, _written(base), cond, cond, NOW, refresh_seconds=300)
    assert needs_write(None, _written(base), None, cond, NOW)


def test_status_patch_replaces_only_meets_slo_and_keeps_its_transition_time() -> None:
    current = {
        "plan": {"memory": {"gpuMemoryBytes": 80_000_000_000}},
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "AllRanksReady"},
            {"type": "MeetsSLO", "status": "True", "reason": "ObjectivesMet",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ],
    }  # fmt: skip
    m = Measurement(max_memory_bytes=34_250_000_000, ranks_scraped=8)
    condition = {"type": "MeetsSLO", "status": "True", "reason": "NoObjectives", "message": ""}
    patch = status_patch(_written(m), condition, current, generation=3, now="2026-01-01T00:10:00Z")
    assert patch["memory"] == "34.25 GB/80 GB (42.8%)"
    assert patch["conditions"][0] == current["conditions"][0]
    assert patch["conditions"][1]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert patch["conditions"][1]["observedGeneration"] == 3
    flipped = {**condition, "status": "False"}
    patch = status_patch(_written(m), flipped, current, generation=3, now="2026-01-01T00:10:00Z")
    assert patch["conditions"][1]["lastTransitionTime"] == "2026-01-01T00:10:00Z"
    # Without a measured memory the MEM column is left to the estimate.
    assert "memory" not in status_patch(
        _written(Measurement()), condition, current, generation=1, now="x"
    )


def test_target_address_annotation_overrides_the_pod_ip() -> None:
    pod: dict[str, Any] = {
        "metadata": {
            "name": "d-0-1",
            "uid": "u",
            "labels": {"paraserve.dev/replica": "0", "paraserve.dev/rank": "1"},
        },
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.7",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    target = RankPod.from_pod(pod)
    assert target is not None and target.serving
    assert metrics_url(target, 9400, "/metrics") == "http://127.0.0.7:9400/metrics"
    pod["metadata"]["annotations"] = {METRICS_ADDRESS_ANNOTATION: "127.0.0.1:9555"}
    annotated = RankPod.from_pod(pod)
    assert annotated is not None
    # Only an operator told to trust the annotation follows it; by default the pod IP stands.
    assert metrics_url(annotated, 9400, "/metrics") == "http://127.0.0.7:9400/metrics"
    assert (
        metrics_url(annotated, 9400, "/metrics", honour_address=True)
        == "http://127.0.0.1:9555/metrics"
    )
    pod["status"]["conditions"] = []
    assert not RankPod.from_pod(pod).serving  # type: ignore[union-attr]


# -- the loop against real endpoints --------------------------------------------------------


def running(
    name: str,
    uid: str,
    replica: int,
    rank: int,
    ready: bool,
    pod_ip: str | None,
    address: str | None,
) -> RankPod:
    """A running rank pod, Ready or not, as the rank-pod index holds it."""
    return RankPod(
        name=name,
        uid=uid,
        replica=replica,
        rank=rank,
        template_hash="h",
        phase="Running",
        ready=ready,
        pod_ip=pod_ip,
        metrics_address=address,
    )


class RecordingCluster:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_deployment(
        self, namespace: str, name: str, patch: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self.patches.append(patch)
        return {}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _deployment(slo: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "d", "namespace": "ns", "generation": 1, "resourceVersion": "7"},
        "spec": {
            "model": {"name": "m", "parameters": "1B"},
            "parallelism": {"pipeline": 1, "tensor": 2},
            "slo": slo,
        },
        "status": {"phase": "Ready", "plan": {"memory": {"gpuMemoryBytes": 80_000_000_000}}},
    }


async def _measure_once(text: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One pass of the loop over a live endpoint serving `text`, a closed port and an extra pod."""
    patches, written = await _measure(text, spec, {}, RecordingCluster())
    assert written
    return patches


async def _measure(
    text: str, spec: dict[str, Any], status: dict[str, Any], cluster: RecordingCluster
) -> tuple[list[dict[str, Any]], bool]:
    """The patches one pass wrote, and whether it says it wrote."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    targets = [
        running("d-0-0", "u0", 0, 0, True, None, f"127.0.0.1:{port}"),
        running("d-0-1", "u1", 0, 1, True, None, f"127.0.0.1:{_closed_port()}"),
        running("d-0-2", "u2", 0, 2, True, "127.0.0.9", None),  # rank ≥ world size: ignored
    ]
    body = _deployment({"prefillP99": "1s"})
    body["spec"].update(spec)
    body["status"].update(status)
    measurer = Measurer(cluster, MeasureSettings(timeout=2, address_annotation=True))  # type: ignore[arg-type]
    measurer.bind({"deployments": {("ns", "d"): [body]}, RANK_PODS: {("ns", "d"): targets}})
    try:
        async with aiohttp.ClientSession() as session:
            written = await measurer.measure(("ns", "d"), session, asyncio.Semaphore(2))
    finally:
        await runner.cleanup()
    return cluster.patches, written


class BusyLane(RecordingCluster):
    """The deployments' lane is full: a write of figures alone is refused (LaneBusy)."""

    async def patch_deployment(
        self, namespace: str, name: str, patch: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        if kwargs.get("urgency") is Urgency.PROGRESS:
            raise LaneBusy("more urgent writes wait")
        return await super().patch_deployment(namespace, name, patch, **kwargs)


def test_new_figures_wait_for_room_and_a_new_verdict_does_not() -> None:
    [first] = asyncio.run(asyncio.wait_for(_measure_once(PARASERVE, {}), timeout=30))
    older = {**first["status"]["measured"], "ranksUnreachable": 0}

    def measure(conditions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
        status = {"measured": older, "conditions": conditions}
        return asyncio.run(asyncio.wait_for(_measure(PARASERVE, {}, status, BusyLane()), 30))

    # The same verdict, other figures: refused while the lane is busy, nothing written.
    assert measure(first["status"]["conditions"]) == ([], False)
    # A new verdict (it was False) is sent, busy or not.
    missed = [{**first["status"]["conditions"][0], "status": "False", "reason": "Missed"}]
    patches, written = measure(missed)
    assert written and patches[0]["status"]["conditions"][0]["status"] == "True"


def test_the_loop_reads_the_endpoints_and_reports_an_unreachable_rank() -> None:
    [patch] = asyncio.run(asyncio.wait_for(_measure_once(PARASERVE, {}), timeout=30))
    measured = patch["status"]["measured"]
    assert measured["ranksScraped"] == 1 and measured["ranksUnreachable"] == 1
    assert measured["maxMemoryBytesPerGpu"] == 1_313_024
    assert measured["profile"] == "paraserve"
    assert measured["prefillP99Seconds"] == pytest.approx(0.01 + 0.015 * 10.7 / 11, abs=1e-6)
    assert "throughputRps" not in measured  # one scrape: no rate yet
    [condition] = patch["status"]["conditions"]
    assert (condition["type"], condition["status"]) == ("MeetsSLO", "True")


def test_the_vllm_profile_reports_kv_cache_use_and_no_memory() -> None:
    spec = {"metrics": {"profile": "vllm", "port": 8000}}
    [patch] = asyncio.run(asyncio.wait_for(_measure_once(VLLM, spec), timeout=30))
    measured = patch["status"]["measured"]
    assert measured["profile"] == "vllm"
    assert measured["kvCacheUtilization"] == pytest.approx(0.4125)
    assert measured["prefillP99Seconds"] == pytest.approx(0.175)
    assert "maxMemoryBytesPerGpu" not in measured and "memory" not in patch["status"]


def test_settings_come_from_the_operator_environment() -> None:
    settings = MeasureSettings.from_environ(
        {"PARASERVE_MEASURE_INTERVAL": "2", "PARASERVE_MEASURE_CONCURRENCY": "4"}
    )
    assert (settings.interval, settings.concurrency, settings.window) == (2.0, 4, 60.0)
    assert MeasureSettings.from_environ({}) == MeasureSettings()
    assert MeasureSettings.from_environ({"PARASERVE_MEASURE_ADDRESS_ANNOTATION": "true"}) == (
        MeasureSettings(address_annotation=True)
    )


@pytest.mark.parametrize(
    ("phase", "ready"),
    [("Rejected", True), ("Pending", True), ("Scheduling", False)],
)
def test_nothing_is_scraped_or_written_without_ready_ranks_of_a_planned_deployment(
    phase: str, ready: bool
) -> None:
    async def scenario() -> tuple[bool, list[dict[str, Any]]]:
        body = _deployment({})
        body["status"]["phase"] = phase
        cluster = RecordingCluster()
        measurer = Measurer(cluster, MeasureSettings(timeout=0.5))  # type: ignore[arg-type]
        target = running("d-0-0", "u0", 0, 0, ready, "127.255.255.1", None)
        measurer.bind(
            {
                "deployments": {("ns", "d"): [body]},
                RANK_PODS: {("ns", "d"): [target]},
            }
        )
        async with aiohttp.ClientSession() as session:
            written = await measurer.measure(("ns", "d"), session, asyncio.Semaphore(1))
        return written, cluster.patches

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=10)) == (False, [])


def test_a_figure_that_drops_out_is_nulled_not_left_under_a_fresh_time() -> None:
    from paraserve.controller import merge_patch

    before = {"measured": _written(Measurement(throughput_rps=10, window_seconds=60.0))}
    now = _written(Measurement(), at="2026-01-01T00:10:00Z")  # no rate any more
    condition = {"type": "MeetsSLO", "status": "True", "reason": "NoObjectives", "message": ""}
    patch = status_patch(now, condition, before, generation=1, now="2026-01-01T00:10:00Z")
    assert patch["measured"]["throughputRps"] is None
    assert merge_patch.apply(before, patch)["measured"] == now


def test_an_idle_deployment_is_never_rewritten_for_a_new_sampled_at() -> None:
    """Unchanged figures an hour later: no write with the operator's settings."""
    base = Measurement(max_memory_bytes=1000, prefill_p99=0.5, throughput_rps=10, ranks_scraped=4)
    old, cond = _written(base), slo_condition(base, SLO)
    settings = MeasureSettings.from_environ({})
    an_hour_later = NOW + datetime.timedelta(hours=1)
    assert not needs_write(
        old,
        _written(base, at="2026-01-01T01:09:00Z"),
        cond,
        cond,
        an_hour_later,
        tolerance=settings.tolerance,
        refresh_seconds=settings.refresh,
    )
