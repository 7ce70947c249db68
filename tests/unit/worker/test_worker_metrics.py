"""The metrics endpoint serves the contract's names, and memory figures are the tensors held."""

import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from paraserve.api import InferenceDeploymentSpec
from paraserve.api.rank_env import parse_rank_env
from paraserve.worker.allocation import allocation_report
from paraserve.worker.groups import form_groups
from paraserve.worker.loadgen import LoadProfile
from paraserve.worker.rank_metrics import MetricsServer, RankMetrics
from paraserve.worker.rank_runtime import RunConfig, build_rank, serve
from paraserve.worker.shape import TINY_ARCHITECTURE, ModelShape


def scrape(port: int, path: str = "/metrics") -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def served_rank():
    env = parse_rank_env({"PARASERVE_METRICS_PATH": "/stats"})
    metrics = RankMetrics(env)
    server = MetricsServer(metrics.registry, 0, env.metrics_path, "127.0.0.1").start()
    config = RunConfig(
        shape=ModelShape.tiny(),
        dtype=torch.float32,
        kv_cache_dtype=torch.float32,
        max_batch_size=2,
        max_sequence_length=32,
        layer_range=(0, 4),
        load=LoadProfile(rate=0, requests=3, prompt_length=5, output_tokens=4),
        exit_when_done=True,
    )
    rank = build_rank(form_groups(env, torch.device("cpu")), config, metrics)
    serve(rank, threading.Event())
    yield rank, server
    server.stop()


def test_endpoint_serves_the_contract_names(served_rank) -> None:
    _, server = served_rank
    samples = scrape(server.port, "/stats")
    names = {name for name, _ in samples}
    for name in (
        "paraserve_rank_memory_bytes",
        "paraserve_rank_memory_used_bytes",
        "paraserve_prefill_latency_seconds_bucket",
        "paraserve_decode_token_latency_seconds_bucket",
        "paraserve_requests_total",
        "paraserve_generated_tokens_total",
        "paraserve_rank_info",
    ):
        assert name in names, name
    info = (("pp_rank", "0"), ("rank", "0"), ("replica", "0"), ("sp_rank", "0"), ("tp_rank", "0"))
    assert samples[("paraserve_rank_info", info)] == 1
    assert samples[("paraserve_requests_total", ())] == 3
    assert samples[("paraserve_generated_tokens_total", ())] == 12
    assert samples[("paraserve_prefill_latency_seconds_count", ())] == 3
    assert samples[("paraserve_decode_token_latency_seconds_count", ())] == 9  # 3 × (4 − 1)


def test_memory_figures_equal_the_tensor_bytes_held(served_rank) -> None:
    rank, server = served_rank
    samples = scrape(server.port, "/stats")

    def memory(kind: str) -> float:
        return samples[("paraserve_rank_memory_bytes", (("kind", kind),))]

    weights = sum(t.numel() * t.element_size() for t in rank.weights.tensors())
    cache = sum(t.numel() * t.element_size() for t in (*rank.cache.keys, *rank.cache.values))
    assert memory("parameters") == weights == 723200  # planner's formula for tiny, float32
    assert memory("kv_cache") == cache == 2 * 4 * 2 * 2 * 32 * 16 * 4
    assert memory("activations_peak") == rank.meter.peak > 0
    assert memory("process_rss") > weights
    assert samples[("paraserve_rank_memory_used_bytes", ())] == weights + cache + rank.meter.peak

    spec = InferenceDeploymentSpec.model_validate(
        {
            "model": {"name": "tiny", "dtype": "float32", "architecture": TINY_ARCHITECTURE},
            "serving": {"maxBatchSize": 2, "maxSequenceLength": 32},
        }
    )
    (row,) = allocation_report(spec)
    assert (row.parameters_bytes, row.kv_cache_bytes) == (memory("parameters"), memory("kv_cache"))
    assert row.ratio == 1.0


def test_other_paths_are_404_and_health_is_served(served_rank) -> None:
    _, server = served_rank
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    assert error.value.code == 404
    server.ready = True
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as ok:
        assert ok.status == 200


def test_stall_after_keeps_accepting_but_generates_nothing_more() -> None:
    env = parse_rank_env({})
    metrics = RankMetrics(env)
    server = MetricsServer(metrics.registry, 0, env.metrics_path, "127.0.0.1").start()
    config = RunConfig(
        shape=ModelShape.tiny(),
        dtype=torch.float32,
        kv_cache_dtype=torch.float32,
        max_batch_size=1,
        max_sequence_length=32,
        layer_range=(0, 4),
        load=LoadProfile(rate=0, requests=5, prompt_length=5, output_tokens=4),
        stall_after=2,
        heartbeat_seconds=0.05,
    )
    rank = build_rank(form_groups(env, torch.device("cpu")), config, metrics)
    stop = threading.Event()
    serving = threading.Thread(target=serve, args=(rank, stop), daemon=True)
    serving.start()
    try:
        deadline = time.monotonic() + 30
        samples = scrape(server.port)
        while samples[("paraserve_requests_total", ())] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            samples = scrape(server.port)
        time.sleep(0.3)  # more heartbeats: nothing more is generated
        samples = scrape(server.port)
        assert samples[("paraserve_requests_total", ())] == 2
        assert samples[("paraserve_generated_tokens_total", ())] == 8
        assert samples[("paraserve_requests_waiting", ())] == 3  # accepted, never taken
        assert samples[("paraserve_requests_running", ())] == 0
        assert serving.is_alive()  # it still serves (and heartbeats its peers)
    finally:
        stop.set()
        serving.join(timeout=10)
        server.stop()
    assert not serving.is_alive()
