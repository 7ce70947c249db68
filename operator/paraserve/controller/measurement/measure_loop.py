"""The measurement loop: every interval, scrape each deployment's ready ranks and write status.

It runs as one background task beside the reconcile workers (started when kopf starts, so only
while this replica leads) rather than as a kopf timer, which would put a finalizer on every
InferenceDeployment. It reads the deployments index and the rank-pod index the reconcile also
reads (controller/rank_pods.py), and writes
only `status.measured`, the MeetsSLO condition and (once memory was measured) the MEM column.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import kopf
from pydantic import ValidationError

from paraserve.api import ConditionType, InferenceDeploymentSpec, Phase, StalledReplica
from paraserve.controller.api_writes import LaneBusy, StatusWriter, Urgency
from paraserve.controller.deployment_writes import DeploymentWrites
from paraserve.controller.measurement import device_memory, stall
from paraserve.controller.measurement.exposition import ExpositionError, parse
from paraserve.controller.measurement.measured_status import (
    History,
    Scrape,
    aggregate,
    measured_status,
    needs_write,
    slo_condition,
    status_patch,
    verdict_changed,
    with_device_memory,
)
from paraserve.controller.measurement.metric_profiles import RankReading, profile_for, read
from paraserve.controller.measurement.scrape import ScrapeError, fetch_all, metrics_url
from paraserve.controller.rank_pods import INDEX as RANK_PODS
from paraserve.controller.rank_pods import RankPod

logger = logging.getLogger("paraserve.measure")

Key = tuple[str, str]

#: The share of the interval over which one round's deployments start (the rest is slack for
#: the slowest scrapes, so a round still ends within the interval).
SPREAD: Final = 0.8


@dataclass(frozen=True)
class MeasureSettings:
    interval: float = 15.0  # seconds between scrapes; 0 disables the loop
    window: float = 60.0  # span of the counter window (like rate(x[60s]))
    timeout: float = 3.0  # per request
    concurrency: int = 16  # requests in flight, over all deployments
    tolerance: float = 0.05  # relative change that is material
    # Rewrite sampledAt at least this often; 0 (the default): only with a material change, so
    # an idle deployment costs no write at all.
    refresh: float = 0.0
    address_annotation: bool = False  # scrape the pod's metrics-address annotation, if set
    # Where vllm and sglang ranks' GPU memory comes from: dcgm-exporter pods.
    gpu_exporter_selector: str = device_memory.DEFAULT_SELECTOR
    gpu_exporter_port: int = device_memory.DEFAULT_PORT

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> MeasureSettings:
        """PARASERVE_MEASURE_INTERVAL, _WINDOW, _TIMEOUT, _CONCURRENCY, _TOLERANCE, _REFRESH,
        PARASERVE_MEASURE_ADDRESS_ANNOTATION (true|false), PARASERVE_GPU_EXPORTER_SELECTOR
        (a label selector: key=value,key) and PARASERVE_GPU_EXPORTER_PORT.

        ValueError naming the variable when one is not a number in its range.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        # (name, type, least value, whether the least value itself is allowed)
        for name, kind, least, inclusive in (
            ("interval", float, 0, True),  # 0 disables the loop
            ("window", float, 0, False),
            ("timeout", float, 0, False),
            ("concurrency", int, 1, True),
            ("tolerance", float, 0, True),
            ("refresh", float, 0, True),
        ):
            variable = f"PARASERVE_MEASURE_{name.upper()}"
            raw = environ.get(variable)
            if not raw:
                continue
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{variable}={raw!r} is not a number") from None
            if not (value >= least if inclusive else value > least) or value == float("inf"):
                bound = "≥" if inclusive else ">"
                raise ValueError(f"{variable}={raw!r}: must be {bound} {least} and finite")
            values[name] = value
        variable = "PARASERVE_MEASURE_ADDRESS_ANNOTATION"
        raw = (environ.get(variable) or "false").strip().lower()
        if raw not in ("true", "false", "1", "0"):
            raise ValueError(f"{variable}={raw!r}: must be true or false")
        values["address_annotation"] = raw in ("true", "1")
        variable = "PARASERVE_GPU_EXPORTER_SELECTOR"
        if raw := environ.get(variable, "").strip():
            try:
                device_memory.parse_selector(raw)
            except ValueError as error:
                raise ValueError(f"{variable}: {error}") from None
            values["gpu_exporter_selector"] = raw
        variable = "PARASERVE_GPU_EXPORTER_PORT"
        if raw := environ.get(variable, "").strip():
            if not raw.isdigit() or not 1 <= int(raw) <= 65535:
                raise ValueError(f"{variable}={raw!r}: must be a port, 1–65535")
            values["gpu_exporter_port"] = int(raw)
        return cls(**values)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Measurer:
    def __init__(
        self,
        cluster: StatusWriter,
        settings: MeasureSettings,
        clock: Callable[[], float] = time.monotonic,
        writes: DeploymentWrites | None = None,
        may_act_on: Callable[[Key], bool] = lambda key: True,
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self.clock = clock
        self.writes = writes or DeploymentWrites(cluster, self._watched)
        # Whether the operator has seen the whole world before this deployment (the manager's).
        self.may_act_on = may_act_on
        self.deployments: Mapping[Any, Iterable[Any]] = {}
        self.rank_pods: Mapping[Any, Iterable[RankPod]] = {}
        self.gpu_exporters: Mapping[Any, Iterable[device_memory.ExporterPod]] = {}
        # This interval's reading of the GPU exporters, shared by the deployments that need it.
        self._gpu_reading: asyncio.Future[tuple[dict[tuple[str, str], float], int, int]] | None = (
            None
        )
        self._history: dict[Key, History] = {}
        # deployment → head pod uid → its generated-token progress (hang detection).
        self._progress: dict[Key, dict[str, stall.Progress]] = {}
        # What was last logged of the unreachable ranks: their count and the first one's error.
        self._unreachable: dict[Key, tuple[int, str]] = {}
        self._task: asyncio.Task[None] | None = None

    def _watched(self, key: Key) -> Mapping[str, Any] | None:
        store = self.deployments.get(key)
        return next(iter(store), None) if store is not None else None

    def bind(self, indices: Mapping[str, Any]) -> None:
        self.deployments = indices["deployments"]
        self.rank_pods = indices[RANK_PODS]
        self.gpu_exporters = indices.get(device_memory.INDEX, {})

    def start(self) -> None:
        if self.settings.interval > 0:
            self._task = asyncio.create_task(self._run(), name="measure")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        limit = asyncio.Semaphore(max(1, self.settings.concurrency))
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                await self.measure_all(session, limit, spread=self.settings.interval * SPREAD)
                elapsed = time.monotonic() - started
                await asyncio.sleep(max(0.0, self.settings.interval - elapsed))

    async def measure_all(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, *, spread: float = 0.0
    ) -> None:
        """Measure every deployment once; their starts are spread evenly over `spread` seconds.

        All at once, 1,000 deployments' scrapes and status decisions land on the event loop in
        one burst every interval (seconds of stall for the reconciles and the webhook).
        """
        keys = [key for key in list(self.deployments.keys()) if isinstance(key, tuple)]
        self._gpu_reading = None
        for key in [k for k in self._history if k not in keys]:
            del self._history[key]
            self._unreachable.pop(key, None)
            self._progress.pop(key, None)
        gap = spread / len(keys) if keys else 0.0
        started = time.monotonic()
        measuring: list[asyncio.Future[bool]] = []
        try:
            for index, key in enumerate(keys):
                if gap > 0 and (wait := started + index * gap - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                measuring.append(asyncio.ensure_future(self.measure(key, session, limit)))
        except BaseException:  # stopped while pacing: what has started stops too
            for task in measuring:
                task.cancel()
            raise
        results = await asyncio.gather(*measuring, return_exceptions=True)
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            if isinstance(result, Exception):  # one deployment's trouble never stops the loop
                logger.warning("measuring %s/%s failed: %s", *key, result)

    async def read_gpu_exporters(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore
    ) -> tuple[dict[tuple[str, str], float], int, int]:
        """(namespace, pod) → bytes used, from every ready exporter; (that, found, read)."""
        exporters = [e for e in self.gpu_exporters.get(device_memory.ALL, ()) if e.ready]
        honour = self.settings.address_annotation
        urls = [
            metrics_url(e, self.settings.gpu_exporter_port, "/metrics", honour_address=honour)
            for e in exporters
        ]
        texts = await fetch_all(session, urls, limit=limit, timeout=self.settings.timeout)
        readings = []
        for exporter, text in zip(exporters, texts, strict=True):
            try:
                if isinstance(text, ScrapeError):
                    raise text
                readings.append(device_memory.used_bytes_by_pod(parse(text)))
            except (ScrapeError, ExpositionError) as error:
                logger.info("gpu exporter %s/%s: %s", exporter.namespace, exporter.name, error)
        return device_memory.merge(readings), len(exporters), len(readings)

    async def _gpu_memory(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore
    ) -> tuple[dict[tuple[str, str], float], int, int]:
        # One read per interval, however many deployments ask (asyncio: check-then-set is safe).
        if self._gpu_reading is None:
            self._gpu_reading = asyncio.ensure_future(self.read_gpu_exporters(session, limit))
        return await self._gpu_reading

    async def measure(
        self, key: Key, session: aiohttp.ClientSession, limit: asyncio.Semaphore
    ) -> bool:
        """Scrape one deployment's ready ranks; True if status was written."""
        if not self.may_act_on(key):
            return False
        body = self.writes.current(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return False
        status: dict[str, Any] = body.get("status") or {}
        if status.get("phase") in (None, Phase.PENDING.value, Phase.REJECTED.value):
            return False
        try:
            spec = InferenceDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return False  # the reconcile reports it
        wanted = spec.parallelism.world_size
        ready = [
            pod
            for pod in self.rank_pods.get(key, ())
            if pod.serving and pod.replica < spec.replicas and pod.rank < wanted
        ]
        # A rendered engine serves its metrics on the head alone, on the API port.
        engine = spec.engine
        targets = [pod for pod in ready if pod.rank == 0] if engine.rendered else ready
        port = engine.api_port if engine.rendered and engine.api_port else spec.metrics.port
        path = "/metrics" if engine.rendered else spec.metrics.path
        history = self._history.setdefault(key, History(self.settings.window))
        history.retain(pod.uid for pod in targets)
        if not targets:
            return False  # nothing is serving: the last measurement stays, with its time
        profile = profile_for(spec.metrics_profile)
        honour = self.settings.address_annotation
        urls = [metrics_url(pod, port, path, honour_address=honour) for pod in targets]
        texts = await fetch_all(session, urls, limit=limit, timeout=self.settings.timeout)
        now = self.clock()
        windows = []
        unreachable = []
        heads: list[tuple[RankPod, RankReading]] = []
        for target, text in zip(targets, texts, strict=True):
            try:
                if isinstance(text, ScrapeError):
                    raise text
                reading = read(profile, parse(text))
            except (ScrapeError, ExpositionError) as error:
                unreachable.append(f"{target.name}: {error}")
                continue
            if target.rank == 0:
                heads.append((target, reading))
            scrape = Scrape(now, reading)
            windows.append((scrape, history.record(target.uid, scrape)))
        first = f": {unreachable[0]}" if unreachable else ""
        # Logged when the count or the first rank's error changes (a rank not listening yet, then
        # too slow), not every interval.
        if (len(unreachable), first) != self._unreachable.get(key, (0, "")):
            self._unreachable[key] = (len(unreachable), first)
            logger.info("%s/%s: %d ranks unreachable%s", *key, len(unreachable), first)
        gpu = ((status.get("plan") or {}).get("memory") or {}).get("gpuMemoryBytes")
        gpu_bytes = int(gpu) if gpu else None
        measurement = aggregate(windows, unreachable=len(unreachable), gpu_memory_bytes=gpu_bytes)
        if engine.rendered:
            by_pod, found, answered = await self._gpu_memory(session, limit)
            memory = device_memory.rank_memory(
                key[0],
                [pod.name for pod in ready],
                by_pod,
                exporters=found,
                exporters_read=answered,
                selector=self.settings.gpu_exporter_selector,
            )
            measurement = with_device_memory(
                measurement,
                memory.used_bytes,
                not_measured=memory.not_measured,
                gpu_memory_bytes=gpu_bytes,
            )
        stalled = self._stalls(key, spec, [p for p in targets if p.rank == 0], heads, now)
        measurement = dataclasses.replace(measurement, stalled=stalled)
        stamp = _now_iso()
        measured = measured_status(measurement, profile.name, stamp)
        condition = slo_condition(measurement, spec.slo)
        # The scrape took a while: decide and write on the deployment as it is now, in turn
        # with the reconcile (one writer at a time, reading its own last write).
        async with self.writes.lock(key):
            body = self.writes.current(key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return False
            status = body.get("status") or {}
            previous = next(
                (
                    c
                    for c in status.get("conditions") or []
                    if c.get("type") == ConditionType.MEETS_SLO.value
                ),
                None,
            )
            if not needs_write(
                status.get("measured"),
                measured,
                previous,
                condition,
                datetime.datetime.now(datetime.UTC),
                tolerance=self.settings.tolerance,
                refresh_seconds=self.settings.refresh,
            ):
                return False
            metadata = body["metadata"]
            patch = status_patch(
                measured, condition, status, generation=metadata.get("generation"), now=stamp
            )
            try:
                written = await self.writes.patch(
                    key,
                    {"status": patch},
                    resource_version=metadata.get("resourceVersion"),
                    subresource="status",
                    urgency=(
                        Urgency.PHASE if verdict_changed(previous, condition) else Urgency.PROGRESS
                    ),
                )
            except LaneBusy:  # figures only, while others wait: the next interval writes them
                return False
        return written is not None  # a conflict: the next interval reads the newer object

    def _stalls(
        self,
        key: Key,
        spec: InferenceDeploymentSpec,
        serving_heads: list[RankPod],
        read_heads: list[tuple[RankPod, RankReading]],
        now: float,
    ) -> tuple[StalledReplica, ...]:
        """The replicas whose head had requests and generated no token for stallTimeout.

        A head that did not answer this time keeps its clock (a flapping endpoint does not
        reset it) but is not judged; an operator restart starts every clock afresh, which only
        delays a detection.
        """
        timeout = spec.failure_policy.stall_timeout
        progress = self._progress.setdefault(key, {})
        if timeout is None:
            progress.clear()
            return ()
        for uid in [u for u in progress if u not in {p.uid for p in serving_heads}]:
            del progress[uid]
        found = []
        for head, reading in read_heads:
            has_requests = stall.busy(reading.waiting, reading.running)
            seen = stall.advance(
                progress.get(head.uid), tokens=reading.tokens, has_requests=has_requests, now=now
            )
            if seen is None:
                progress.pop(head.uid, None)
                continue
            progress[head.uid] = seen
            if stall.stalled(seen, has_requests=has_requests, now=now, timeout=timeout):
                found.append(
                    StalledReplica(
                        replica=head.replica,
                        head=head.name,
                        head_uid=head.uid,
                        message=f"rank 0 ({head.name}) had requests waiting or running and"
                        f" generated no token for {timeout:g}s (failurePolicy.stallTimeout)",
                    )
                )
        return tuple(sorted(found, key=lambda s: s.replica))


def register(registry: kopf.OperatorRegistry, measurer: Measurer) -> None:
    """The loop's start and stop with the operator (the indexes it reads are the watches')."""

    # The GPU exporters, found by their labels (the GPU Operator's by default).
    selector = device_memory.parse_selector(measurer.settings.gpu_exporter_selector)
    labels = {k: kopf.PRESENT if v is None else v for k, v in selector.items()}

    @kopf.index("v1", "pods", id=device_memory.INDEX, labels=labels, registry=registry)
    def gpu_exporters(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {device_memory.ALL: device_memory.ExporterPod.from_pod(body)}

    @kopf.on.startup(id="start-measurement", registry=registry)
    async def start_measurement(**kwargs: Any) -> None:
        measurer.bind(kwargs)
        measurer.start()

    @kopf.on.cleanup(id="stop-measurement", registry=registry)
    async def stop_measurement(**_: Any) -> None:
        await measurer.stop()
