"""The operator's own Prometheus metrics: reconciles, their duration, errors and API calls."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OperatorMetrics:
    """One registry per operator process (tests may build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._loop_lag_max = 0.0
        self._gc_pause_max = 0.0
        self.reconciles = Counter(
            "paraserve_operator_reconciles_total",
            "Reconciles of InferenceDeployments, by result.",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "paraserve_operator_reconcile_duration_seconds",
            "Time one reconcile took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.errors = Counter(
            "paraserve_operator_errors_total",
            "Reconciles that failed, by kind of error.",
            ["kind"],
            registry=self.registry,
        )
        self.api_calls = Counter(
            "paraserve_operator_api_calls_total",
            "Calls to the Kubernetes API, by verb, resource and HTTP status (0: no response).",
            ["verb", "resource", "code"],
            registry=self.registry,
        )
        self.api_call_wait_seconds = Histogram(
            "paraserve_operator_api_call_wait_seconds",
            "How long a call to the Kubernetes API waited for a thread of its lane (pods,"
            " deployments, other) before it was sent.",
            ["lane"],
            buckets=_CALL_BUCKETS,
            registry=self.registry,
        )
        self.api_call_seconds = Histogram(
            "paraserve_operator_api_call_duration_seconds",
            "How long a call to the Kubernetes API took once sent, by lane.",
            ["lane"],
            buckets=_CALL_BUCKETS,
            registry=self.registry,
        )
        self.pods_created = Counter(
            "paraserve_operator_pods_created_total",
            "Rank pods created.",
            registry=self.registry,
        )
        self.gang_restarts = Counter(
            "paraserve_operator_gang_restarts_total",
            "Replicas recreated as a gang after a rank failed or disappeared.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "paraserve_operator_queue_depth",
            "Deployments waiting to be reconciled.",
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "paraserve_operator_queue_wait_seconds",
            "From a watch event (or a requested retry) queueing a deployment to a worker"
            " starting its reconcile.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.loop_lag_seconds = Histogram(
            "paraserve_operator_event_loop_lag_seconds",
            "How late a timer of the event loop fired (sampled every 0.1 s): how long"
            " something held the loop.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.loop_lag_max_seconds = Gauge(
            "paraserve_operator_event_loop_lag_max_seconds",
            "The worst event-loop lag sampled since the process started.",
            registry=self.registry,
        )
        self.gc_pause_seconds = Histogram(
            "paraserve_operator_gc_pause_seconds",
            "How long one collection of Python's cyclic garbage collector held the process, by"
            " generation (2: a full collection, which walks every tracked object).",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.gc_pause_max_seconds = Gauge(
            "paraserve_operator_gc_pause_max_seconds",
            "The longest collection of the garbage collector since the process started.",
            registry=self.registry,
        )
        self.leader = Gauge(
            "paraserve_operator_leader",
            "1 while this process holds the leader lease.",
            registry=self.registry,
        )

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag_seconds.observe(seconds)
        if seconds > self._loop_lag_max:
            self._loop_lag_max = seconds
            self.loop_lag_max_seconds.set(seconds)

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        self.gc_pause_seconds.labels(generation=str(generation)).observe(seconds)
        if seconds > self._gc_pause_max:
            self._gc_pause_max = seconds
            self.gc_pause_max_seconds.set(seconds)

    def observe_call(self, verb: str, resource: str, status: int) -> None:
        self.api_calls.labels(verb=verb, resource=resource, code=str(status)).inc()

    def time_call(self, lane: str, waited: float, took: float) -> None:
        self.api_call_wait_seconds.labels(lane=lane).observe(waited)
        self.api_call_seconds.labels(lane=lane).observe(took)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)
