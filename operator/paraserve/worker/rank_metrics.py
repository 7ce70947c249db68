"""The rank's Prometheus metrics and the HTTP endpoint that serves them on the metrics port.

The names are a contract with the operator's scraper: ``paraserve.api.metric_names``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from paraserve.api.metric_names import (
    DECODE_TOKEN_LATENCY,
    GENERATED_TOKENS,
    MEMORY,
    MEMORY_KINDS,
    MEMORY_USED,
    PREFILL_LATENCY,
    RANK_INFO,
    REQUESTS,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
)
from paraserve.api.rank_env import RankEnv

PREFILL_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
DECODE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


class RankMetrics:
    """Every metric of one rank, in its own registry."""

    def __init__(self, env: RankEnv, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.memory = Gauge(MEMORY, "Bytes the rank holds, by kind.", ["kind"], registry=r)
        self.memory_used = Gauge(
            MEMORY_USED,
            "The rank's GPU-memory figure: peak reserved on GPU; on CPU parameters + "
            "KV cache + peak activations.",
            registry=r,
        )
        self.prefill = Histogram(
            PREFILL_LATENCY,
            "Time to first token of a request: queueing + prefill, seconds.",
            buckets=PREFILL_BUCKETS,
            registry=r,
        )
        self.decode = Histogram(
            DECODE_TOKEN_LATENCY,
            "Latency of one generated token after the first (one decode step), seconds.",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            REQUESTS, "Requests completed (counted by rank 0 of the replica only).", registry=r
        )
        self.tokens = Counter(
            GENERATED_TOKENS,
            "Tokens generated (counted by rank 0 of the replica only).",
            registry=r,
        )
        self.waiting = Gauge(
            REQUESTS_WAITING, "Requests queued, not yet generating (rank 0 only).", registry=r
        )
        self.running = Gauge(
            REQUESTS_RUNNING, "Requests in the batch being generated (rank 0 only).", registry=r
        )
        info = Gauge(
            RANK_INFO,
            "Where this rank sits; always 1.",
            ["rank", "pp_rank", "tp_rank", "sp_rank", "replica"],
            registry=r,
        )
        info.labels(
            rank=str(env.rank),
            pp_rank=str(env.pp_rank),
            tp_rank=str(env.tp_rank),
            sp_rank=str(env.sp_rank),
            replica=str(env.replica),
        ).set(1)

    def set_memory(self, **kinds: int) -> None:
        """Set the named kinds (e.g. ``parameters=…``); unknown kinds are a programming error."""
        for kind, value in kinds.items():
            if kind not in MEMORY_KINDS:
                raise ValueError(f"unknown memory kind {kind!r}")
            self.memory.labels(kind=kind).set(value)

    def set_memory_used(self, value: int) -> None:
        self.memory_used.set(value)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """prometheus-client's WSGI app on ``path`` (404 elsewhere), plus ``/healthz``."""

    def __init__(
        self, registry: CollectorRegistry, port: int, path: str, addr: str = "0.0.0.0"
    ) -> None:
        metrics_app = make_wsgi_app(registry)
        self.ready = False

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            route = environ.get("PATH_INFO") or "/"
            if route == path:
                return metrics_app(environ, start_response)
            if route == "/healthz":
                status = "200 OK" if self.ready else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain")])
                return [b"ok\n" if self.ready else b"starting\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"metrics are at {path}\n".encode()]

        self.server = make_server(
            addr, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
