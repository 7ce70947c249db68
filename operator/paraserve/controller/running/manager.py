"""Runs reconciles: a work queue fed by watch events, a few workers, retries and a resync."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from paraserve.api import Phase
from paraserve.controller import rank_pods
from paraserve.controller.reconciling.reconcile import CONFLICT_RETRY, Key, Reconciler, Views
from paraserve.controller.running.cluster_io import ApiError
from paraserve.controller.running.operator_metrics import OperatorMetrics
from paraserve.controller.running.workqueue import WorkQueue

logger = logging.getLogger("paraserve.controller")

#: Phases that never change because of the pool alone; everything else is looked at again
#: whenever GPUs or nodes change (a waiting deployment starts by itself).
_SETTLED: Final = (Phase.READY.value, Phase.RUNNING.value)


class Manager:
    def __init__(self, reconciler: Reconciler, metrics: OperatorMetrics) -> None:
        self.reconciler = reconciler
        self.views: Views = reconciler.views
        self.metrics = metrics
        self.queue: WorkQueue[Key] = WorkQueue()
        self._failures: dict[Key, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- fed by the watch handlers -----------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        self.queue.add(key)
        self.metrics.queue_depth.set(len(self.queue))

    def poke_unsettled(self) -> None:
        """GPUs or nodes changed: look again at every deployment that is not running."""
        for key in self.views.deployment_keys():
            body = self.views.deployment(key) or {}
            if (body.get("status") or {}).get("phase") not in _SETTLED:
                self.enqueue(key)

    # -- lifecycle ----------------------------------------------------------------------------

    def bind(self, indices: Mapping[str, Any]) -> None:
        """Take the live kopf indexes (handed to the startup handler)."""
        self.views.deployments = indices["deployments"]
        self.views.nodes = indices["nodes"]
        self.views.gpu_pods = indices["gpu_pods"]
        self.views.rank_pods = indices[rank_pods.INDEX]

    def start(self) -> None:
        workers = max(1, self.reconciler.settings.workers)
        for number in range(workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"reconcile-{number}"))
        self._tasks.append(asyncio.create_task(self._resync(), name="resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.queue.close()

    async def _resync(self) -> None:
        """Level-triggered safety net: every deployment is looked at periodically."""
        while True:
            await asyncio.sleep(self.reconciler.settings.resync_seconds)
            for key in self.views.deployment_keys():
                self.enqueue(key)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            self.metrics.queue_depth.set(len(self.queue))
            started = time.monotonic()
            try:
                delay = await self.reconciler.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                retry = min(60.0, 0.5 * 2**failures)
                kind = type(error).__name__ if not isinstance(error, ApiError) else "ApiError"
                self.metrics.errors.labels(kind=kind).inc()
                self.metrics.reconciles.labels(result="error").inc()
                logger.warning("reconcile of %s/%s failed (retry in %.1fs): %s", *key, retry, error)
                self.queue.add_after(key, retry)
            else:
                self._failures.pop(key, None)
                result = "conflict" if delay == CONFLICT_RETRY else "ok"
                self.metrics.reconciles.labels(result=result).inc()
                if delay is not None:
                    self.queue.add_after(key, delay)
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - started)
                self.queue.done(key)
