"""Runs reconciles: a work queue fed by watch events, a few workers, retries and a resync.

Nothing here acts on a deployment before kopf has shown it through a watch handler: kopf calls
a handler only once every index of the watches started with it has been fully listed, so by
then the deployment's rank pods are all in memory. Before that, a reconcile would see a
running gang with ranks missing and tear it down (the resync, the measurement loop and
events of other objects can all ask for a deployment earlier).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from paraserve.api import Phase
from paraserve.controller import rank_pods
from paraserve.controller.api_writes import NotLeader
from paraserve.controller.reconciling import architecture_source
from paraserve.controller.reconciling.gang import MAX_EXPONENT
from paraserve.controller.reconciling.reconcile import CONFLICT_RETRY, Key, Reconciler, Views
from paraserve.controller.running import gc_pauses, loop_lag, loop_stalls
from paraserve.controller.running.cluster_io import ApiError
from paraserve.controller.running.operator_metrics import OperatorMetrics
from paraserve.controller.running.workqueue import WorkQueue

logger = logging.getLogger("paraserve.controller")

#: Phases that never change because of the pool alone (Scheduling: every replica is created,
#: its own pods' events wake it); everything else is looked at again whenever GPUs or nodes
#: change (a waiting deployment starts by itself).
_SETTLED: Final = (Phase.READY.value, Phase.RUNNING.value, Phase.SCHEDULING.value)
#: GPU and node events come in bursts (thousands while gangs start): one look per burst.
POKE_DELAY: Final = 0.2

#: Retries of a failing reconcile: 0.5 s doubling up to a minute.
RETRY_BASE: Final = 0.5
RETRY_MAX: Final = 60.0


def retry_delay(failures: int) -> float:
    """The delay before the next attempt; the exponent is capped, so it never overflows."""
    return min(RETRY_MAX, RETRY_BASE * 2.0 ** min(failures, MAX_EXPONENT))


def _nothing() -> None:
    return None


class Manager:
    def __init__(
        self,
        reconciler: Reconciler,
        metrics: OperatorMetrics,
        *,
        acting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.reconciler = reconciler
        self.views: Views = reconciler.views
        self.metrics = metrics
        # False once leadership is lost: no reconcile starts any more.
        self.acting = acting
        self.queue: WorkQueue[Key] = WorkQueue(observe_wait=metrics.queue_wait_seconds.observe)
        # Creates that outlast their reconcile queue the deployment again when answered.
        reconciler.look_again_later = self.queue.add_after
        #: Deployments kopf has shown us through a watch handler (see the module's docstring).
        self.seen: set[Key] = set()
        self.listed_after: float | None = None
        self._poke: asyncio.TimerHandle | None = None
        self._failures: dict[Key, int] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._started = time.monotonic()
        self._stopping = False
        self._stop_gc_timing: Callable[[], None] = _nothing
        self._stop_stall_watch: Callable[[], None] = _nothing

    # -- fed by the watch handlers (on the event loop; from a thread they hand off to it) -----

    def deployment_event(self, key: Key, *, deleted: bool) -> None:
        """The deployment's own watch event: from now on it may be reconciled."""
        if self._off_loop():
            self._hand_off(self.deployment_event, key, deleted=deleted)
            return
        self._note_listed()
        if deleted:
            self.seen.discard(key)
        else:
            self.seen.add(key)
        self._add(key)  # a spec change or a deletion is never held back

    def enqueue(self, key: Key) -> None:
        """A pod, owned object or pool change of this deployment: look at it again, once its
        deferred progress write is due if it has one (nothing earlier would be written)."""
        if self._off_loop():
            self._hand_off(self.enqueue, key)
            return
        self._note_listed()
        due = self.reconciler.counting_until.get(key)
        if due is not None and (wait := due - time.monotonic()) > 0:
            self.queue.add_after(key, wait)
            return
        self._add(key)

    def lane_has_room(self, free: int) -> None:
        """The deployments' write lane has room: look again at those whose progress write was
        refused while it was full."""
        for key in self.reconciler.room_for_progress(free):
            self._add(key)

    def _add(self, key: Key) -> None:
        self.queue.add(key)
        self.metrics.queue_depth.set(len(self.queue))

    def poke_unsettled(self) -> None:
        """GPUs or nodes changed: look again, once per burst, at every deployment that waits."""
        if self._off_loop():
            self._hand_off(self.poke_unsettled)
            return
        self._note_listed()
        if self._poke is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop: at once
            self._look_at_unsettled()
            return
        self._poke = loop.call_later(POKE_DELAY, self._look_at_unsettled)

    def _look_at_unsettled(self) -> None:
        self._poke = None
        for key in sorted(self.seen):
            body = self.views.deployment(key) or {}
            if (body.get("status") or {}).get("phase") not in _SETTLED:
                self.enqueue(key)

    def may_act_on(self, key: Key) -> bool:
        """Whether every index was listed before this deployment was seen (for other loops)."""
        return key in self.seen and self.acting()

    def _off_loop(self) -> bool:
        return self._loop_thread is not None and self._loop_thread != threading.get_ident()

    def _hand_off(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(lambda: fn(*args, **kwargs))

    def _note_listed(self) -> None:
        """kopf calls watch handlers only once its indexes are listed: say when that was."""
        if self.listed_after is None:
            self.listed_after = time.monotonic() - self._started
            logger.info("every watch listed and indexed after %.1fs", self.listed_after)
            # The listed pods' own handlers run one by one from now on, and a reconcile may
            # come first: the pool starts as the complete indexes hold it.
            self.views.seed_pool()

    # -- lifecycle ----------------------------------------------------------------------------

    def bind(self, indices: Mapping[str, Any]) -> None:
        """Take the live kopf indexes (handed to the startup handler)."""
        self.views.deployments = indices["deployments"]
        self.views.nodes = indices["nodes"]
        self.views.gpu_pods = indices["gpu_pods"]
        self.views.rank_pods = indices[rank_pods.INDEX]
        self.views.services = indices["services"]
        self.views.configmaps = indices["configmaps"]
        self.views.model_config_maps = indices[architecture_source.CONFIG_MAPS]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = False
        workers = max(1, self.reconciler.settings.workers)
        for number in range(workers):
            self._spawn(f"reconcile-{number}", self._work)
        self._spawn("resync", self._resync)
        stalls = loop_stalls.StallWatch()
        self._stop_stall_watch = stalls.start(loop_stalls.log_stall)

        def observe_loop_lag(lag: float) -> None:
            self.metrics.observe_loop_lag(lag)
            stalls.beat()  # the same timer tells the watchdog the loop is free

        self._spawn("loop-lag", lambda: loop_lag.sample(observe_loop_lag))
        pauses = gc_pauses.GcPauses()
        self._stop_gc_timing = pauses.install()
        self._spawn("gc-pauses", lambda: gc_pauses.report(pauses, self.metrics.observe_gc_pause))

    async def stop(self) -> None:
        self._stopping = True
        if self._poke is not None:
            self._poke.cancel()
            self._poke = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._stop_gc_timing()
        self._stop_gc_timing = _nothing
        self._stop_stall_watch()
        self._stop_stall_watch = _nothing
        self.reconciler.cancel_creations()
        self.queue.close()

    def _spawn(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.create_task(body(), name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, body, done))

    def _ended(
        self,
        name: str,
        body: Callable[[], Coroutine[Any, Any, None]],
        task: asyncio.Task[None],
    ) -> None:
        """A worker or the resync must never end while the operator runs: say why, restart it."""
        if self._stopping or task.cancelled():
            return
        error = task.exception()
        logger.error("task %s ended; restarting it", name, exc_info=error)
        self.metrics.errors.labels(kind="TaskDied").inc()
        self._spawn(name, body)

    async def _resync(self) -> None:
        """Level-triggered safety net: every deployment is looked at periodically."""
        while True:
            await asyncio.sleep(self.reconciler.settings.resync_seconds)
            for key in sorted(self.seen):
                self.enqueue(key)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._reconcile(key)
            finally:
                self.queue.done(key)
                self.metrics.queue_depth.set(len(self.queue))

    async def _reconcile(self, key: Key) -> None:
        if not self.acting():
            return  # leadership is lost: the process is on its way out
        if key not in self.seen and self.views.deployment(key) is not None:
            return  # its own watch event comes once every index is listed, and queues it
        started = time.monotonic()
        try:
            delay = await self.reconciler.reconcile(key)
        except asyncio.CancelledError:
            raise
        except NotLeader:
            return
        except Exception as error:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            retry = retry_delay(failures)
            expected = isinstance(error, ApiError)
            kind = "ApiError" if expected else type(error).__name__
            self.metrics.errors.labels(kind=kind).inc()
            self.metrics.reconciles.labels(result="error").inc()
            logger.warning(
                "reconcile of %s/%s failed (retry in %.1fs): %s",
                *key,
                retry,
                error,
                exc_info=None if expected else error,
            )
            self.queue.add_after(key, retry)
        else:
            self._failures.pop(key, None)
            result = "conflict" if delay == CONFLICT_RETRY else "ok"
            self.metrics.reconciles.labels(result=result).inc()
            if delay is not None:
                self.queue.add_after(key, delay)
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
