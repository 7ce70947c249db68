"""Hang detection: the pure decision, the names each profile reads, and the loop reporting a
stalled head in status.measured (and forgetting it once tokens flow again)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from expositions import SGLANG, VLLM

from paraserve.controller import merge_patch
from paraserve.controller.measurement import stall
from paraserve.controller.measurement.exposition import parse
from paraserve.controller.measurement.measure_loop import Measurer, MeasureSettings
from paraserve.controller.measurement.metric_profiles import profile_for, read
from paraserve.controller.rank_pods import INDEX as RANK_PODS
from paraserve.controller.rank_pods import RankPod

FIXTURES = Path(__file__).parent / "fixtures"


def test_busy_needs_a_gauge_and_counts_waiting_or_running() -> None:
    assert stall.busy(None, None) is None
    assert stall.busy(0, 0) is False
    assert stall.busy(3, None) is True and stall.busy(None, 1) is True


def test_no_token_while_requests_wait_for_the_timeout_is_a_stall() -> None:
    seen = stall.advance(None, tokens=10, has_requests=True, now=0.0)
    seen = stall.advance(seen, tokens=10, has_requests=True, now=20.0)
    assert seen == stall.Progress(tokens=10, since=0.0)
    assert not stall.stalled(seen, has_requests=True, now=20.0, timeout=30)
    seen = stall.advance(seen, tokens=10, has_requests=True, now=30.0)
    assert stall.stalled(seen, has_requests=True, now=30.0, timeout=30)


def test_progress_idling_or_a_counter_reset_restart_the_clock() -> None:
    start = stall.Progress(tokens=10, since=0.0)
    assert stall.advance(start, tokens=11, has_requests=True, now=50.0) == stall.Progress(11, 50.0)
    assert stall.advance(start, tokens=3, has_requests=True, now=50.0) == stall.Progress(3, 50.0)
    idle = stall.advance(start, tokens=10, has_requests=False, now=50.0)
    assert idle == stall.Progress(10, 50.0)
    assert not stall.stalled(idle, has_requests=False, now=500.0, timeout=30)


def test_a_head_without_the_metrics_is_never_judged() -> None:
    start = stall.Progress(tokens=10, since=0.0)
    assert stall.advance(start, tokens=None, has_requests=True, now=99.0) is None
    assert stall.advance(start, tokens=10, has_requests=None, now=99.0) is None
    assert not stall.stalled(None, has_requests=True, now=99.0, timeout=30)


@pytest.mark.parametrize(
    ("profile", "text", "waiting", "running", "tokens"),
    [
        ("vllm", VLLM, None, 3.0, 25600.0),
        ("vllm", (FIXTURES / "vllm-0.32.0-tp2-head.metrics").read_text(), 0.0, 0.0, 56.0),
        ("sglang", SGLANG, None, 4.0, 51200.0),
        (
            "paraserve",
            "paraserve_requests_waiting 5.0\nparaserve_requests_running 0.0\n"
            "paraserve_generated_tokens_total 96.0\n",
            5.0,
            0.0,
            96.0,
        ),
    ],
)
def test_each_profile_reads_the_queue_the_batch_and_the_generated_tokens(
    profile: str, text: str, waiting: float | None, running: float | None, tokens: float
) -> None:
    reading = read(profile_for(profile), parse(text))
    assert (reading.waiting, reading.running, reading.tokens) == (waiting, running, tokens)


def test_sglang_names_its_queue_num_queue_reqs() -> None:
    text = 'sglang:num_queue_reqs{model_name="q"} 7\nsglang:num_running_reqs{model_name="q"} 0\n'
    reading = read(profile_for("sglang"), parse(text))
    assert (reading.waiting, reading.running) == (7.0, 0.0)


# -- the loop --------------------------------------------------------------------------------


class PatchingCluster:
    """Applies each status patch to the one stored deployment, as the API server would."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.patches: list[dict[str, Any]] = []

    async def patch_deployment(
        self, namespace: str, name: str, patch: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self.patches.append(patch)
        updated = merge_patch.apply(self.body, patch)
        version = int(updated["metadata"]["resourceVersion"]) + 1
        updated["metadata"]["resourceVersion"] = str(version)
        self.body.clear()
        self.body.update(updated)
        return copy.deepcopy(updated)


def _head(port: int) -> RankPod:
    return RankPod(
        name="d-0-0",
        uid="head-uid",
        replica=0,
        rank=0,
        template_hash="h",
        phase="Running",
        ready=True,
        metrics_address=f"127.0.0.1:{port}",
    )


async def _stall_then_recover() -> list[Any]:
    text = ["paraserve_requests_waiting 3\nparaserve_generated_tokens_total 40\n"]

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=text[0], content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    body = {
        "metadata": {"name": "d", "namespace": "ns", "generation": 1, "resourceVersion": "7"},
        "spec": {
            "model": {"name": "m", "parameters": "1B"},
            "failurePolicy": {"stallTimeout": "30s"},
        },
        "status": {"phase": "Ready"},
    }
    cluster = PatchingCluster(body)
    now = [100.0]
    measurer = Measurer(
        cluster, MeasureSettings(timeout=2, address_annotation=True), clock=lambda: now[0]
    )  # type: ignore[arg-type]
    measurer.bind({"deployments": {("ns", "d"): [body]}, RANK_PODS: {("ns", "d"): [_head(port)]}})
    seen = []
    try:
        async with aiohttp.ClientSession() as session:
            for at, served in ((100.0, None), (120.0, None), (131.0, None), (140.0, "60")):
                now[0] = at
                if served is not None:
                    text[0] = (
                        f"paraserve_requests_waiting 3\nparaserve_generated_tokens_total {served}\n"
                    )
                await measurer.measure(("ns", "d"), session, asyncio.Semaphore(2))
                seen.append(
                    copy.deepcopy((body["status"].get("measured") or {}).get("stalledReplicas"))
                )
    finally:
        await runner.cleanup()
    return seen


def test_the_loop_reports_a_stalled_head_and_forgets_it_when_tokens_flow_again() -> None:
    seen = asyncio.run(asyncio.wait_for(_stall_then_recover(), timeout=30))
    assert seen[0] is None and seen[1] is None  # 0 s, 20 s without a token: not yet
    assert seen[2] == [
        {
            "replica": 0,
            "head": "d-0-0",
            "headUid": "head-uid",
            "message": "rank 0 (d-0-0) had requests waiting or running and generated no token"
            " for 30s (failurePolicy.stallTimeout)",
        }
    ]
    assert seen[3] is None  # tokens again: the report is nulled
