"""GPU memory of engine ranks from dcgm-exporter, and the loop measuring a vLLM deployment.

The vLLM page is a real one (vLLM 0.32's CPU build, TP=2 head, after 4 requests); the GPU page
comes from the DCGM-format stand-in (e2e/engines/dcgm_standin.py), which reports process
memory in dcgm-exporter's format.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from e2e.engines.dcgm_standin import GpuSample, render

from paraserve.controller.measurement import device_memory
from paraserve.controller.measurement.exposition import parse
from paraserve.controller.measurement.measure_loop import Measurer, MeasureSettings
from paraserve.controller.rank_pods import INDEX as RANK_PODS
from paraserve.controller.rank_pods import RankPod

VLLM_PAGE = (Path(__file__).parent / "fixtures" / "vllm-0.32.0-tp2-head.metrics").read_text()
MIB = 2**20


def test_selectors_are_equality_and_existence_terms() -> None:
    assert device_memory.parse_selector("app=nvidia-dcgm-exporter") == {
        "app": "nvidia-dcgm-exporter"
    }
    assert device_memory.parse_selector("app==x, gpu") == {"app": "x", "gpu": None}
    for bad in ("", "a=", "a!=b", "tier in (x)", "a,,b"):
        with pytest.raises(ValueError, match="selector"):
            device_memory.parse_selector(bad)


def test_framebuffer_used_is_joined_on_namespace_and_pod() -> None:
    page = render(
        [
            GpuSample("serving", "llama-0-0", "rank", 0, 3500),
            GpuSample("serving", "llama-0-1", "rank", 1, 3000),
        ]
    )
    # dcgm-exporter's old label names, and a GPU no pod holds.
    page += 'DCGM_FI_DEV_FB_USED{gpu="2",pod_namespace="other",pod_name="x-0-0"} 10\n'
    page += 'DCGM_FI_DEV_FB_USED{gpu="3",namespace="",pod=""} 77\n'
    used = device_memory.used_bytes_by_pod(parse(page))
    assert used == {
        ("serving", "llama-0-0"): 3500 * MIB,
        ("serving", "llama-0-1"): 3000 * MIB,
        ("other", "x-0-0"): 10 * MIB,
    }


def test_a_pod_with_two_gpus_reports_its_fuller_one() -> None:
    page = render([GpuSample("ns", "p", "c", 0, 10), GpuSample("ns", "p", "c", 1, 30)])
    assert device_memory.used_bytes_by_pod(parse(page)) == {("ns", "p"): 30 * MIB}


def test_what_is_missing_is_said() -> None:
    by_pod = {("ns", "a"): 1.0}
    kwargs: dict[str, Any] = {"selector": "app=nvidia-dcgm-exporter"}
    none = device_memory.rank_memory("ns", ["a"], {}, exporters=0, exporters_read=0, **kwargs)
    assert none.used_bytes == () and "no dcgm-exporter pod matches app=nvidia" in str(
        none.not_measured
    )
    unread = device_memory.rank_memory("ns", ["a"], {}, exporters=2, exporters_read=0, **kwargs)
    assert unread.not_measured == "none of the 2 dcgm-exporter pods could be read"
    part = device_memory.rank_memory(
        "ns", ["a", "b"], by_pod, exporters=1, exporters_read=1, **kwargs
    )
    assert part.used_bytes == (1.0,)
    assert "no DCGM_FI_DEV_FB_USED for 1 of 2 ranks (b)" in str(part.not_measured)
    whole = device_memory.rank_memory("ns", ["a"], by_pod, exporters=1, exporters_read=1, **kwargs)
    assert whole == device_memory.RankMemory((1.0,), None)


def test_exporter_settings_come_from_the_environment() -> None:
    settings = MeasureSettings.from_environ(
        {"PARASERVE_GPU_EXPORTER_SELECTOR": "app=dcgm", "PARASERVE_GPU_EXPORTER_PORT": "9500"}
    )
    assert (settings.gpu_exporter_selector, settings.gpu_exporter_port) == ("app=dcgm", 9500)
    assert MeasureSettings().gpu_exporter_selector == "app=nvidia-dcgm-exporter"
    with pytest.raises(ValueError, match="PARASERVE_GPU_EXPORTER_SELECTOR"):
        MeasureSettings.from_environ({"PARASERVE_GPU_EXPORTER_SELECTOR": "a in (b)"})
    with pytest.raises(ValueError, match="PARASERVE_GPU_EXPORTER_PORT"):
        MeasureSettings.from_environ({"PARASERVE_GPU_EXPORTER_PORT": "0"})


# -- the loop, on a vLLM deployment ---------------------------------------------------------


class RecordingCluster:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_deployment(
        self, namespace: str, name: str, patch: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self.patches.append(patch)
        return {}


def rank(name: str, k: int, address: str | None) -> RankPod:
    return RankPod(
        name=name,
        uid=f"u{k}",
        replica=0,
        rank=k,
        template_hash="h",
        phase="Running",
        ready=True,
        metrics_address=address,
    )


async def serve(pages: dict[str, str]) -> tuple[web.AppRunner, int]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.path], content_type="text/plain")

    app = web.Application()
    for path in pages:
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def measure_vllm(with_exporter: bool) -> dict[str, Any]:
    gpu_page = render(
        [
            GpuSample("serving", "llama-0-0", "rank", 0, 3400),
            GpuSample("serving", "llama-0-1", "rank", 1, 3900),
        ]
    )
    runner, port = await serve({"/metrics": VLLM_PAGE})
    exporter_runner, exporter_port = await serve({"/metrics": gpu_page})
    body = {
        "metadata": {"name": "llama", "namespace": "serving", "generation": 1},
        "spec": {
            "model": {"name": "tiny", "parameters": "13M"},
            "parallelism": {"tensor": 2},
            "engine": {"name": "vllm"},
        },
        "status": {"phase": "Ready", "plan": {"memory": {"gpuMemoryBytes": 80 * 2**30}}},
    }
    # Only the head serves /metrics: the headless rank has no address and must not be scraped.
    ranks = [rank("llama-0-0", 0, f"127.0.0.1:{port}"), rank("llama-0-1", 1, None)]
    exporter = device_memory.ExporterPod(
        name="dcgm-standin",
        namespace="gpu-operator",
        uid="e",
        ready=True,
        metrics_address=f"127.0.0.1:{exporter_port}",
    )
    cluster = RecordingCluster()
    measurer = Measurer(cluster, MeasureSettings(timeout=2, address_annotation=True))  # type: ignore[arg-type]
    measurer.bind(
        {
            "deployments": {("serving", "llama"): [body]},
            RANK_PODS: {("serving", "llama"): ranks},
            device_memory.INDEX: {device_memory.ALL: [exporter]} if with_exporter else {},
        }
    )
    try:
        async with aiohttp.ClientSession() as session:
            await measurer.measure_all(session, asyncio.Semaphore(4))
    finally:
        await runner.cleanup()
        await exporter_runner.cleanup()
    (patch,) = cluster.patches
    return dict(patch["status"])


def test_a_vllm_deployment_is_measured_from_its_head_and_its_gpus() -> None:
    status = asyncio.run(asyncio.wait_for(measure_vllm(with_exporter=True), timeout=30))
    measured = status["measured"]
    assert measured["profile"] == "vllm"  # the engine's, though spec.metrics.profile is default
    assert (measured["ranksScraped"], measured["ranksUnreachable"]) == (1, 0)
    assert measured["prefillP99Seconds"] > 0 and measured["decodeP99PerTokenSeconds"] > 0
    assert measured["maxMemoryBytesPerGpu"] == 3900 * MIB  # the fuller rank, the headless one
    assert measured["memoryUtilization"] == pytest.approx(3900 * MIB / (80 * 2**30), abs=1e-6)
    assert "memoryNotMeasured" not in measured
    assert status["memory"].startswith("4.09 GB/")


def test_without_an_exporter_status_says_why_memory_is_missing() -> None:
    status = asyncio.run(asyncio.wait_for(measure_vllm(with_exporter=False), timeout=30))
    measured = status["measured"]
    assert "maxMemoryBytesPerGpu" not in measured
    assert measured["memoryNotMeasured"].startswith("no dcgm-exporter pod matches")
    assert measured["prefillP99Seconds"] > 0
