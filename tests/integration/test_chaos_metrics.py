"""Chaos: a rank whose /metrics is 1 MB, sent in chunks, slowly → the operator reports what the
rank says, or says clearly that it could not read it; never a wrong figure.

Two one-rank deployments: "big" serves 1 MB in 16 KiB chunks over 1.2 s (inside the 3 s
scrape timeout), "slow" the same over 8 s. The first chunk of each ends in the middle of the
memory figure (`…used_bytes 75` | `00000000`), as a server's buffer may cut any line.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from chaos_tools import ChaosOperator, RankEndpoint, figures
from e2e.cluster.local import LocalCluster
from operator_fixtures import deployment, pods_of, running, wait

pytestmark = [pytest.mark.timeout(300), pytest.mark.chaos]

MEASURE_ENV = {
    "PARASERVE_MEASURE_INTERVAL": "1",
    "PARASERVE_MEASURE_WINDOW": "6",
    "PARASERVE_MEASURE_TIMEOUT": "3",
    "PARASERVE_MEASURE_REFRESH": "30",
    "PARASERVE_MEASURE_ADDRESS_ANNOTATION": "true",
}
MEMORY = {"big": 7_500_000_000, "slow": 9_250_000_000}
SECONDS = {"big": 1.2, "slow": 8.0}
CHUNK = 16 * 1024


def exposition(memory: int) -> bytes:
    """About 1 MB: the memory figure first (an untyped sample), then 4,400 long series
    nobody asked for."""
    note = "x" * 200
    lines = [
        f"paraserve_rank_memory_used_bytes {memory}",
        "# HELP paraserve_chaos_padding Series an engine exports that the operator ignores.",
        "# TYPE paraserve_chaos_padding gauge",
        *(f'paraserve_chaos_padding{{series="{i:05d}",note="{note}"}} {i}' for i in range(4400)),
    ]
    return ("\n".join(lines) + "\n").encode()


def pieces(body: bytes, seconds: float) -> list[tuple[bytes, float]]:
    """The body in chunks, the first one cut two digits into the memory figure."""
    cut = body.index(b"used_bytes ") + len(b"used_bytes ") + 2
    rest = [body[i : i + CHUNK] for i in range(cut, len(body), CHUNK)]
    pause = seconds / len(rest)
    return [(body[:cut], 0.0), *((piece, pause) for piece in rest)]


def test_a_megabyte_of_slow_chunked_metrics_is_read_right_or_refused(
    cluster: LocalCluster, inference_crd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bodies = {name: exposition(memory) for name, memory in MEMORY.items()}
    endpoints = {
        name: RankEndpoint(lambda name=name: pieces(bodies[name], SECONDS[name])) for name in MEMORY
    }
    with (
        cluster.namespace() as namespace,
        cluster.gpu_pool("1 x 2 x H100-80GB") as pool,
        figures(capsys, "chaos: 1 MB of chunked, slow /metrics") as report,
    ):
        operator = ChaosOperator(
            cluster,
            tmp_path,
            "-n",
            namespace,
            "--leader-election-id",
            "paraserve-chaos-metrics",
            identity="chaos-metrics",
            env=MEASURE_ENV,
        )
        operator.start_healthy()
        try:
            for name in MEMORY:
                cluster.apply(
                    deployment(
                        name,
                        pool.node_selector,
                        model={"name": "m", "dtype": "float16", "parameters": "1B"},
                        parallelism={"pipeline": 1, "tensor": 1, "sequence": 1},
                    ),
                    namespace=namespace,
                )
            for name in MEMORY:
                wait(cluster, lambda name=name: running(pods_of(cluster, namespace, name)), name)
                cluster.kubectl(
                    "annotate", "pod", f"{name}-0-0", "-n", namespace, "--overwrite",
                    f"paraserve.dev/metrics-address={endpoints[name].address}",
                )  # fmt: skip

            seen: dict[str, list[object]] = {name: [] for name in MEMORY}
            measured: dict[str, dict[str, object]] = {}

            def settled() -> bool:
                for name in MEMORY:
                    body = cluster.get("inferencedeployments", name, namespace=namespace)
                    measured[name] = (body.get("status") or {}).get("measured") or {}
                    figure = measured[name].get("maxMemoryBytesPerGpu")
                    if figure is not None and figure not in seen[name]:
                        seen[name].append(figure)
                big, slow = measured["big"], measured["slow"]
                wrong = [f for f in seen["big"] if f != MEMORY["big"]] + seen["slow"]
                # The slow rank is unreachable before its endpoint listens too: settled once the
                # operator has said why after a scrape of the slow page (or the deadline).
                log = operator.log_path.read_text(errors="replace")
                said = any("slow-0-0" in line and "within" in line for line in log.splitlines())
                return bool(wrong) or (
                    big.get("maxMemoryBytesPerGpu") == MEMORY["big"]
                    and big.get("ranksScraped") == 1
                    and slow.get("ranksUnreachable") == 1
                    and said
                )

            started = time.monotonic()
            deadline = started + 90
            while not settled() and time.monotonic() < deadline:
                time.sleep(0.5)
            log = operator.log_path.read_text(errors="replace")
        finally:
            operator.stop()
            for endpoint in endpoints.values():
                endpoint.close()

        clear = [line for line in log.splitlines() if "slow-0-0" in line and "within" in line]
        report += [
            f"exposition: {len(bodies['big']):,} bytes in chunks of {CHUNK // 1024} KiB, "
            f"the first cut inside the memory figure",
            f"big (sent in {SECONDS['big']} s, timeout 3 s): memory figures shown "
            f"{seen['big']} (the rank says {MEMORY['big']}), status {measured['big']}",
            f"slow (sent in {SECONDS['slow']} s): memory figures shown {seen['slow']}, "
            f"status {measured['slow']}",
            f"the operator's word on the slow rank: {clear[0].strip()[-160:] if clear else None}",
            f"scrapes served: big {endpoints['big'].scrapes}, slow {endpoints['slow'].scrapes}",
        ]
        assert seen["big"] == [MEMORY["big"]], f"wrong memory figures for big: {seen['big']}"
        assert measured["big"].get("ranksScraped") == 1
        assert measured["big"].get("ranksUnreachable") == 0
        assert seen["slow"] == [], f"a figure from a rank never read in time: {seen['slow']}"
        assert measured["slow"].get("ranksUnreachable") == 1
        assert measured["slow"].get("ranksScraped") == 0
        assert clear, "no clear error about the slow rank in the operator's log"
