"""One reconcile of one InferenceDeployment: plan against the pool, act on the gangs, write status.

Everything is read from in-memory indexes kept by watches; the only API calls are the writes.
A reconcile is level-triggered and idempotent: it may be interrupted at any line and simply
runs again. What it owns (Service, topology ConfigMaps) is compared with what the watch shows,
never with a memory of what was applied, so an object deleted out of band comes back.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from paraserve.api import (
    API_VERSION,
    DEFAULT_WORKER_IMAGE,
    KIND,
    Finding,
    InferenceDeploymentSpec,
    Phase,
    Plan,
    describe_validation_error,
)
from paraserve.controller.api_writes import (
    ClusterWrites,
    LaneBusy,
    NamespaceTerminating,
    NameTaken,
    Urgency,
)
from paraserve.controller.deployment_writes import DeploymentWrites
from paraserve.controller.rank_pods import RankPod
from paraserve.controller.reconciling import (
    architecture_source,
    owned_objects,
    placement,
    stall_reports,
)
from paraserve.controller.reconciling.deployment_status import (
    Observation,
    desired_status,
    is_progress_only,
    phase_event,
    status_patch,
    without_pool_churn,
)
from paraserve.controller.reconciling.gang import (
    FAILURE_REASONS,
    GANG_ANNOTATION,
    REPLICA_RESTART,
    REPLICA_STALLED,
    Backoff,
    CorruptGangState,
    Decision,
    GangState,
    RestartLimit,
    decide,
)
from paraserve.engines import codes as engine_codes
from paraserve.engines import with_engine_checks
from paraserve.planner import Pool, codes, plan
from paraserve.planner.live_pool import LivePool

logger = logging.getLogger("paraserve.controller")

Key = tuple[str, str]  # (namespace, name)

INVALID_SPEC: Final = "InvalidSpec"
INVALID_NAME: Final = "InvalidName"
#: Wrong whatever the cluster looks like (the others depend on the pool).
STATIC_CODES: Final = frozenset(
    {
        INVALID_SPEC,
        INVALID_NAME,
        codes.INVALID_PARALLELISM,
        codes.INVALID_MODEL_CONFIG,
        *engine_codes.ERRORS,
    }
)
NAME_TAKEN: Final = "NameTaken"
GANG_STATE_UNREADABLE: Final = "GangStateUnreadable"
# After a write conflict the watch has a newer object on its way; look again shortly.
CONFLICT_RETRY: Final = 1.0
# How long a placement holds its GPUs once its create has answered while the watch has not
# shown the pod (it normally does within milliseconds; a pod never shown releases them after
# this). Until its create answers, however long the reconcile's writes wait their turn, a
# placement holds its GPUs without limit; one never posted releases them when the reconcile ends.
RESERVATION_SECONDS: Final = 30.0
# A pod this process created is not created again while the watch has not shown it yet
# (it normally does within a second; a pod deleted before being shown is recreated after this).
EXPECT_SECONDS: Final = 15.0
# Status writes that only count ranks (no phase, generation or condition change) are spaced.
PROGRESS_WRITE_INTERVAL: Final = 1.0
# How long a reconcile waits for its pod creates; the rest finish in the background and queue
# the deployment again. While thousands of pods are created, a create waits seconds for its
# turn at the API server, and a reconcile that waited for all of them held its worker: the
# status of deployments whose pods were all Running waited behind them (50 s at 3,000 pods).
CREATES_WAITED_FOR: Final = 1.0
# Creates that failed after their reconcile returned: the deployment is looked at again after.
CREATE_RETRY: Final = 5.0
# A namespace seen terminating is left alone this long before it is looked at again.
TERMINATING_RECHECK: Final = 60.0
# An object of ours whose name another object holds: looked at again after this.
NAME_TAKEN_RETRY: Final = 30.0


@dataclass(frozen=True)
class Judgement:
    """The verdict on one spec, as the reconcile reaches it and the webhook reports it."""

    spec: InferenceDeploymentSpec | None  # None: the spec does not parse
    rejection: Finding | None  # the first reason it cannot run, if any
    plan: Plan | None = None
    pool: Pool | None = None


class ReconcileMetrics(Protocol):
    """The operator metrics a reconcile counts (running/operator_metrics.OperatorMetrics)."""

    registry: CollectorRegistry
    pods_created: Counter
    gang_restarts: Counter


@dataclass
class ControllerSettings:
    default_image: str = DEFAULT_WORKER_IMAGE
    backoff: Backoff = field(default_factory=Backoff)
    resync_seconds: float = 60.0
    workers: int = 256
    # A rank the scheduler cannot place this long fails its gang (it is re-placed).
    unschedulable_after: float = 120.0
    # A rank bound to a node but not started this long (ContainerCreating) fails its gang.
    start_after: float = 600.0


class Views:
    """Read access to the operator's in-memory indexes (kopf keeps them, we only read), and the
    pool kept from node and GPU-pod events (`live`: no reconcile rebuilds it from every pod)."""

    def __init__(self) -> None:
        self.deployments: Mapping[Any, Iterable[Any]] = {}
        self._nodes: Mapping[Any, Iterable[Any]] = {}
        self._gpu_pods: Mapping[Any, Iterable[Any]] = {}
        self.rank_pods: Mapping[Any, Iterable[Any]] = {}
        self.services: Mapping[Any, Iterable[Any]] = {}
        self.configmaps: Mapping[Any, Iterable[Any]] = {}
        self.model_config_maps: Mapping[Any, Iterable[Any]] = {}
        self.live = LivePool()

    @property
    def nodes(self) -> Mapping[Any, Iterable[Any]]:
        return self._nodes

    @nodes.setter
    def nodes(self, index: Mapping[Any, Iterable[Any]]) -> None:
        """An index of node views: `live` is set to what it holds now (the watch tells it the
        rest)."""
        self._nodes = index
        self.live.set_nodes(index.get(ALL, ()))

    @property
    def gpu_pods(self) -> Mapping[Any, Iterable[Any]]:
        return self._gpu_pods

    @gpu_pods.setter
    def gpu_pods(self, index: Mapping[Any, Iterable[Any]]) -> None:
        self._gpu_pods = index
        self.live.set_pods(index.get(ALL, ()))

    def seed_pool(self) -> None:
        """`live` set to every node and GPU pod the indexes hold now (once all are listed)."""
        self.live.set_nodes(self._nodes.get(ALL, ()))
        self.live.set_pods(self._gpu_pods.get(ALL, ()))

    def deployment(self, key: Key) -> dict[str, Any] | None:
        store = self.deployments.get(key)
        return next(iter(store), None) if store is not None else None

    def deployment_keys(self) -> list[Key]:
        return list(self.deployments.keys())

    def all_nodes(self) -> list[dict[str, Any]]:
        return list(self.nodes.get(ALL, ()))

    def all_gpu_pods(self) -> list[dict[str, Any]]:
        return list(self.gpu_pods.get(ALL, ()))

    def ranks_of(self, key: Key) -> list[RankPod]:
        return list(self.rank_pods.get(key, ()))

    def owned_by(self, key: Key) -> list[dict[str, Any]]:
        """The Services and ConfigMaps labelled as this deployment's, as the watch shows them."""
        return [*self.services.get(key, ()), *self.configmaps.get(key, ())]

    def config_map_data(self, namespace: str, name: str) -> Mapping[str, str | None] | None:
        return architecture_source.config_map_data(self.model_config_maps, namespace, name)


ALL: Final = "all"


#: Phases a deployment rests in until something changes: what users and tools wait for.
SETTLED_PHASES: Final = frozenset(
    {Phase.READY, Phase.WAITING, Phase.REJECTED, Phase.DEGRADED, Phase.FAILED}
)


def _status_urgency(
    current: Mapping[str, Any], patch: Mapping[str, Any], progress_only: bool
) -> Urgency:
    if progress_only:
        return Urgency.PROGRESS
    phase = patch.get("phase")
    if phase is not None and phase != current.get("phase") and phase in SETTLED_PHASES:
        return Urgency.SETTLED
    return Urgency.PHASE


def _commit_point(decision: Decision) -> bool:
    """The gang state must be stored before the decision is carried out: pods are deleted or
    created, or a failure is counted (a restart counted is counted once, even if we die)."""
    return bool(decision.create or decision.delete or decision.events)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scheduled_message(status: Mapping[str, Any], reason: str) -> str | None:
    """The message of the Scheduled condition if it has this reason (an Event was posted)."""
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Scheduled":
            return str(condition.get("message")) if condition.get("reason") == reason else None
    return None


def contains(observed: Any, desired: Any) -> bool:
    """Whether `observed` carries every field of `desired` (the server may add its own)."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            contains(observed.get(key), value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    return bool(observed == desired)


def up_to_date(observed: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """An owned object as the watch shows it against the one the reconcile would write."""
    metadata, wanted = observed.get("metadata") or {}, desired["metadata"]
    if not contains(metadata.get("labels"), wanted.get("labels") or {}):
        return False
    if not contains(metadata.get("ownerReferences"), wanted.get("ownerReferences") or []):
        return False
    if "data" in desired and observed.get("data") != desired["data"]:
        return False
    return "spec" not in desired or contains(observed.get("spec"), desired["spec"])


class Reconciler:
    def __init__(
        self,
        cluster: ClusterWrites,
        views: Views,
        settings: ControllerSettings,
        metrics: ReconcileMetrics,
        clock: Callable[[], float] = time.time,
        writes: DeploymentWrites | None = None,
    ) -> None:
        self.cluster = cluster
        self.views = views
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.writes = writes or DeploymentWrites(cluster, views.deployment)
        self._last_write: dict[Key, float] = {}
        #: deployment → when its deferred progress-only status write is due. Until then a watch
        #: event can only count ranks again: the manager lets events wait for it (a gang of
        #: 1,024 ranks starting sends thousands, each a whole reconcile).
        self.counting_until: dict[Key, float] = {}
        #: Deployments whose progress write was refused (LaneBusy), oldest first.
        self.parked: dict[Key, None] = {}
        # deployment → pod → expiry: pods created, not yet shown by the watch.
        self._created: dict[Key, dict[str, float]] = {}
        self._look_again: dict[Key, float] = {}
        # deployment → (uid, template hash, stages) and its topology ConfigMap: the document
        # of 1,024 ranks costs milliseconds to render, and every reconcile compares it.
        self._topologies: dict[Key, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        # (namespace, pod) → (expiry, node): placed ranks not yet seen by the watch.
        self._reserved: dict[tuple[str, str], tuple[float, str]] = {}
        # deployment → the pods its reconcile running now has placed (held until it ends).
        self._placing: dict[Key, set[tuple[str, str]]] = {}
        # namespace → when it was seen being deleted
        self._terminating: dict[str, float] = {}
        # Creates still in flight after CREATES_WAITED_FOR, and what one of them found holding
        # a name of ours (said by the deployment's next reconcile).
        self._creating: set[asyncio.Future[list[bool]]] = set()
        self._taken_later: dict[Key, str] = {}
        #: Queue a deployment again after a delay (the manager's queue; set by the manager).
        self.look_again_later: Callable[[Key, float], None] = lambda key, delay: None

    async def reconcile(self, key: Key) -> float | None:
        """Bring one deployment one step closer to its spec; the delay to look again, if any."""
        async with self.writes.lock(key):
            try:
                return await self._reconcile(key)
            except NamespaceTerminating:
                self._leave_namespace(key)
                return None

    async def _reconcile(self, key: Key) -> float | None:
        self.counting_until.pop(key, None)
        self.parked.pop(key, None)
        body = self.writes.current(key)
        if body is None:
            self._last_write.pop(key, None)
            self.writes.forget([key])
            self._created.pop(key, None)
            self._topologies.pop(key, None)
            return None
        metadata = body.get("metadata", {})
        if metadata.get("deletionTimestamp"):
            return None  # the garbage collector removes what we own
        namespace, name = key
        seen_terminating = self._terminating.get(namespace)
        if seen_terminating is not None:
            if time.monotonic() - seen_terminating < TERMINATING_RECHECK:
                return None
            del self._terminating[namespace]
        status: dict[str, Any] = body.get("status") or {}
        resource_version = metadata.get("resourceVersion")
        uid = str(metadata.get("uid", ""))
        # Pods left by a deleted deployment of the same name wait for the garbage collector.
        pods = [p for p in self.views.ranks_of(key) if p.owner_uid in ("", uid)]
        self._forget_shown_creations(key, pods)
        unreadable: str | None = None
        try:
            state = GangState.parse((metadata.get("annotations") or {}).get(GANG_ANNOTATION))
        except CorruptGangState as error:
            # Surfaced, and rebuilt from what is certain (never silently started over).
            unreadable = str(error)
            state = GangState.recovered(pods, int(status.get("restarts") or 0))

        judgement = self.judge(key, body.get("spec") or {})
        spec, rejection, verdict = judgement.spec, judgement.rejection, judgement.plan
        decision: Decision | None = None
        gpus_free: int | None = None
        taken: str | None = None
        if spec is not None and verdict is not None and judgement.pool is not None:
            pool = judgement.pool
            own_used = sum(1 for p in pods if p.node and not p.broken)
            gpus_free = max(0, verdict.gpus_free - own_used)
            if rejection is None:
                decision, placements = self._decide(
                    key,
                    spec,
                    pool,
                    pods,
                    state,
                    generation=metadata.get("generation"),
                    stalled=stall_reports.stalled_replicas(status.get("measured"), pods),
                )
                if unreadable is not None:
                    decision = replace(decision, state_changed=True)
                try:
                    restarting = any(e.reason in FAILURE_REASONS for e in decision.events)
                    # Pods vanishing because their namespace goes are no gang failure.
                    if restarting and await self.cluster.namespace_terminating(namespace):
                        raise NamespaceTerminating(f"namespace {namespace} is being deleted")
                    if unreadable is not None:
                        logger.warning("%s/%s: %s; rebuilt from the pods", *key, unreadable)
                        await self._event(body, "Warning", GANG_STATE_UNREADABLE, unreadable)
                    applied, taken = await self._act(
                        key, metadata, spec, verdict, decision, placements, resource_version
                    )
                finally:
                    self._release_unposted(key)
                if applied is None:
                    return CONFLICT_RETRY
                resource_version = applied or resource_version
                state = decision.state
                if taken is not None and taken != _scheduled_message(status, NAME_TAKEN):
                    await self._event(body, "Warning", NAME_TAKEN, taken)

        observation = Observation(
            name=name,
            generation=metadata.get("generation"),
            spec=spec,
            plan=verdict,
            rejection=rejection,
            decision=decision,
            pods=pods,
            state=state,
            gpus_free=gpus_free,
            name_taken=taken,
        )
        desired = desired_status(observation, status, _now_iso())
        patch = without_pool_churn(status, status_patch(status, desired))
        requeue = decision.requeue_after if decision is not None else None
        if taken is not None:
            requeue = min(requeue, NAME_TAKEN_RETRY) if requeue is not None else NAME_TAKEN_RETRY
        expected = self._look_again.pop(key, None)
        if expected is not None:
            requeue = expected if requeue is None else min(requeue, expected)
        progress_only = bool(patch) and is_progress_only(status, patch)
        if progress_only:
            # Ranks becoming ready one by one: at most one such write per interval per deployment.
            wait = self._last_write.get(key, -1e9) + PROGRESS_WRITE_INTERVAL - time.monotonic()
            if wait > 0:
                return self._count_later(key, wait, requeue)
        if patch:
            self._last_write[key] = time.monotonic()
            try:
                written = await self.writes.patch(
                    key,
                    {"status": patch},
                    resource_version=resource_version,
                    subresource="status",
                    urgency=_status_urgency(status, patch, progress_only),
                )
            except LaneBusy:  # counts only, while others wait: the next write carries them
                return self._count_when_there_is_room(key, requeue)
            if written is None:
                return CONFLICT_RETRY
            resource_version = written.get("metadata", {}).get("resourceVersion")
            announcement = phase_event(status, desired, observation)
            if announcement is not None:
                await self._event(body, *announcement)
        if decision is not None and decision.state_changed and not _commit_point(decision):
            # Bookkeeping (a replica formed, a back-off reset), no commit point: written after
            # the status, so that the status a user waits for never waits behind it. Never
            # refused (until it is stored, a rank that vanishes would be filled in alone instead
            # of failing a formed gang), and ahead of the gangs starting: it holds its
            # deployment while it waits.
            kept = await self._store_gang(key, decision.state, resource_version, Urgency.PHASE)
            if kept is None:
                return CONFLICT_RETRY
        return requeue

    async def _store_gang(
        self, key: Key, state: GangState, resource_version: str | None, urgency: Urgency
    ) -> dict[str, Any] | None:
        """Write the gang annotation if the deployment is unchanged since read; None on a
        conflict."""
        return await self.writes.patch(
            key,
            {"metadata": {"annotations": {GANG_ANNOTATION: state.serialize()}}},
            resource_version=resource_version,
            urgency=urgency,
        )

    def _count_later(self, key: Key, wait: float, requeue: float | None) -> float:
        """A progress write put off for `wait` seconds: the deployment is looked at again then,
        and the pod events meanwhile do not queue it (manager.py)."""
        self.counting_until[key] = time.monotonic() + wait
        return min(wait, requeue) if requeue is not None else wait

    def _count_when_there_is_room(self, key: Key, requeue: float | None) -> float | None:
        """A progress write refused while more urgent ones wait (LaneBusy): the deployment is
        looked at again when the lane has room (room_for_progress), or at its next pod event
        (held for PROGRESS_WRITE_INTERVAL, as after any progress write). Not on a timer: 300
        deployments retrying every second kept the event loop from the watch."""
        self.parked[key] = None
        self.counting_until[key] = time.monotonic() + PROGRESS_WRITE_INTERVAL
        return requeue

    def room_for_progress(self, free: int) -> list[Key]:
        """The deployment lane has `free` threads and nobody waits: the deployments whose
        progress writes were refused longest ago, as many as there is room for."""
        keys: list[Key] = []
        while self.parked and len(keys) < free:
            key = next(iter(self.parked))
            del self.parked[key]
            self.counting_until.pop(key, None)
            keys.append(key)
        return keys

    # -- steps -----------------------------------------------------------------------------

    def judge(self, key: Key, raw_spec: Mapping[str, Any]) -> Judgement:
        """Parse, check the name, read architectureFrom's ConfigMap, build the pool as this
        deployment sees it, plan. Reads only.

        The admission webhook calls exactly this, so it can never disagree with the reconcile.
        """
        spec, rejection = self.parse_spec(key[1], raw_spec)
        if spec is None:
            return Judgement(spec=None, rejection=rejection)
        # model.architectureFrom: its ConfigMap read from the index; unread, nothing is planned.
        spec, unresolved = architecture_source.resolve(spec, key[0], self.views.config_map_data)
        if unresolved is not None:
            return Judgement(spec=spec, rejection=rejection or unresolved)
        pool = self.pool_for(key, spec)
        # What the engine refuses is as final as what the planner refuses.
        verdict = with_engine_checks(plan(spec, pool), spec)
        if rejection is None and verdict.errors:
            rejection = verdict.errors[0]
        return Judgement(spec=spec, rejection=rejection, plan=verdict, pool=pool)

    def parse_spec(
        self, name: str, raw_spec: Mapping[str, Any]
    ) -> tuple[InferenceDeploymentSpec | None, Finding | None]:
        try:
            spec = InferenceDeploymentSpec.model_validate(raw_spec)
        except ValidationError as error:
            message = describe_validation_error(error, "spec")
            return None, Finding(code=INVALID_SPEC, message=message)
        problem = owned_objects.name_problem(name, spec)
        return spec, Finding(code=INVALID_NAME, message=problem) if problem else None

    def pool_for(self, key: Key, spec: InferenceDeploymentSpec) -> Pool:
        """The pool as this deployment sees it: its own ranks' GPUs count as free."""
        return self.views.live.pool(spec, without=key)

    def _decide(
        self,
        key: Key,
        spec: InferenceDeploymentSpec,
        pool: Pool,
        pods: list[RankPod],
        state: GangState,
        *,
        generation: int | None = None,
        stalled: Mapping[int, str] | None = None,
    ) -> tuple[Decision, dict[int, dict[int, str]]]:
        """The gang decision, and the node each rank it creates is counted on (by replica).

        Every creation takes its GPUs out of what the next reconcile sees as free, pinned or
        not: without that, two deployments reconciled before the watch shows the other's pods
        would both take the same free GPUs. With tensor-parallel groups within nodes the
        nodes are also pinned; otherwise the scheduler picks and only the count matters.
        """
        tensor = spec.parallelism.tensor
        world_size = spec.parallelism.world_size
        pin = spec.placement.tensor_parallel_within_node and tensor > 1
        # Pinned: whole tensor-parallel groups per node; else one rank at a time.
        unit = tensor if pin else 1
        self._forget_seen_reservations()
        # Where GPUs are free, looked at only when something is to be placed (most reconciles
        # place nothing).
        free_now: list[placement.FreeGpus] = []

        def free() -> placement.FreeGpus:
            if not free_now:
                counts = self.views.live.free_by_node(spec)
                self._subtract_reserved(counts)
                free_now.append(placement.FreeGpus(counts))
            return free_now[0]

        groups: dict[int, dict[int, str]] = {}

        def fits(replicas: int, replica: int) -> bool:
            wanted = spec.model_copy(update={"replicas": replicas})
            if not plan(wanted, pool).schedulable_now:
                return False
            chosen = placement.place_groups(range(world_size // unit), unit, free())
            if chosen is None:
                return False
            groups[replica] = chosen
            return True

        decision = decide(
            desired_replicas=spec.replicas,
            world_size=world_size,
            template_hash=owned_objects.template_hash(spec, self.settings.default_image),
            pods=pods,
            state=state,
            now=self.clock(),
            fits=fits,
            backoff=self.settings.backoff,
            unschedulable_after=self.settings.unschedulable_after,
            start_after=self.settings.start_after,
            limit=RestartLimit(
                max_restarts=spec.failure_policy.max_restarts,
                window=spec.failure_policy.restart_window,
            ),
            generation=generation,
            stalled=stalled,
        )
        for replica, only in decision.create:
            if only is None:
                continue
            # Ranks filled in after an interrupted creation: pinned ones join their group's node.
            known = (
                {
                    p.rank // unit: node
                    for p in pods
                    if p.replica == replica and (node := p.planned_node or p.node)
                }
                if pin
                else {}
            )
            missing = sorted({rank // unit for rank in only} - set(known))
            extra = (placement.place_groups(missing, unit, free()) if missing else None) or {}
            groups[replica] = {**known, **extra}
        by_rank = {
            replica: {
                rank: node
                for rank in range(world_size)
                if (node := chosen.get(rank // unit)) is not None
            }
            for replica, chosen in groups.items()
        }
        self._reserve(key, decision, by_rank, spec)
        return decision, by_rank

    def _forget_shown_creations(self, key: Key, pods: list[RankPod]) -> None:
        """Pods the watch shows (or that were never shown in time) are no longer expected: a
        rank deleted after being shown is created again at once."""
        pending = self._created.get(key)
        if not pending:
            return
        shown = {p.name for p in pods}
        now = time.monotonic()
        for name, expires in list(pending.items()):
            if name in shown or expires < now:
                del pending[name]

    def _forget_seen_reservations(self) -> None:
        """A placed rank the watch has shown holds its GPU in the live pool: its reservation
        goes (in every reconcile, before the pod could be deleted and its name placed again)."""
        seen = self.views.live
        now = time.monotonic()
        for pod, (expires, _) in list(self._reserved.items()):
            if pod in seen or expires < now:
                del self._reserved[pod]

    def _subtract_reserved(self, free: dict[str, int]) -> None:
        """Ranks placed by a reconcile whose pods the watch has not shown yet still hold GPUs:
        without this, two deployments reconciled at once could be placed on the same GPUs."""
        self._forget_seen_reservations()
        for _, node in self._reserved.values():
            if node in free:
                free[node] = max(0, free[node] - 1)

    def _reserve(
        self,
        key: Key,
        decision: Decision,
        nodes: Mapping[int, Mapping[int, str]],
        spec: InferenceDeploymentSpec,
    ) -> None:
        namespace, name = key
        pending = self._created.get(key) or {}
        now = time.monotonic()
        placing = self._placing.setdefault(key, set())
        for replica, only in decision.create:
            chosen = nodes.get(replica) or {}
            for rank in only if only is not None else range(spec.parallelism.world_size):
                node = chosen.get(rank)
                pod = owned_objects.pod_name(name, replica, rank)
                if node is None or pending.get(pod, 0.0) >= now:
                    continue  # posted already: it goes where it was placed, and holds that
                # Held while this reconcile acts (its gang annotation and Service may wait
                # long for the API server): _record_creates or _release_unposted ends it.
                self._reserved[(namespace, pod)] = (math.inf, node)
                placing.add((namespace, pod))

    def _release_unposted(self, key: Key) -> None:
        """The reconcile has ended: its placements never posted (a conflict, an error, a
        name taken) free their GPUs; those posted hold them until answered and shown."""
        pending = self._created.get(key) or {}
        for pod in self._placing.pop(key, ()):
            held = self._reserved.get(pod)
            if held is not None and held[0] == math.inf and pod[1] not in pending:
                del self._reserved[pod]

    async def _act(
        self,
        key: Key,
        metadata: Mapping[str, Any],
        spec: InferenceDeploymentSpec,
        verdict: Plan,
        decision: Decision,
        nodes: Mapping[int, Mapping[int, str]],
        resource_version: str | None,
    ) -> tuple[str | None, str | None]:
        """Persist gang state, then delete, then create: the resourceVersion after (None on a
        conflict), and why an object could not be created if another holds its name."""
        namespace, name = key
        taken_meanwhile = self._taken_later.pop(key, None)
        if taken_meanwhile is not None:  # found by creates that outlasted an earlier reconcile
            return resource_version or "", taken_meanwhile
        if decision.state_changed and _commit_point(decision):
            # The commit point: a restart counted here is counted once, even if we die next.
            written = await self._store_gang(key, decision.state, resource_version, Urgency.GANG)
            if written is None:
                return None, None
            resource_version = written.get("metadata", {}).get("resourceVersion")
        owner = owned_objects.Owner(
            name=name, namespace=namespace, uid=str(metadata.get("uid", ""))
        )
        hash_ = owned_objects.template_hash(spec, self.settings.default_image)
        try:
            await self._apply_owned(key, owner, spec, verdict, hash_)
        except NameTaken as error:
            return resource_version or "", error.message
        if decision.delete:
            # Why, in the log too: an Event may not get through (and is gone after an hour).
            reasons = "; ".join(f"{e.reason}: {e.message}" for e in decision.events)
            logger.info(
                "%s/%s: deleting %d pods: %s (%s)",
                namespace,
                name,
                len(decision.delete),
                " ".join(p.name for p in decision.delete),
                reasons
                or f"restarting {list(decision.restarting)}, stopped {list(decision.stopped)}",
            )
            await self.cluster.delete_pods(namespace, [(p.name, p.uid) for p in decision.delete])
        if decision.create:
            pin = spec.placement.tensor_parallel_within_node and spec.parallelism.tensor > 1
            tensor = spec.parallelism.tensor
            to_post = self._ranks_to_post(key, decision, spec.parallelism.world_size)
            manifests = [
                pod
                for replica, ranks in to_post
                for pod in owned_objects.replica_pods(
                    owner,
                    spec,
                    replica,
                    hash_=hash_,
                    default_image=self.settings.default_image,
                    only_ranks=ranks,
                    group_nodes=(
                        {rank // tensor: node for rank, node in nodes.get(replica, {}).items()}
                        if pin
                        else None
                    ),
                    counted_on=None if pin else nodes.get(replica),
                )
            ]
            # Every one posted and not shown yet: nothing to send, say or announce again.
            if manifests:
                # In flight: never posted twice meanwhile, its GPUs held however long it waits
                # (until it is answered: _record_creates).
                self._hold(key, manifests, expected=math.inf, reserved=math.inf)
                creating = asyncio.ensure_future(self.cluster.create_all(manifests))
                done, _ = await asyncio.wait({creating}, timeout=CREATES_WAITED_FOR)
                if done:
                    failure = creating.exception()
                    self._record_creates(key, manifests, None if failure else creating.result())
                    if isinstance(failure, NameTaken):
                        return resource_version or "", failure.message
                    if failure is not None:
                        raise failure
                else:  # answered later: _created_later records them and queues the deployment
                    self._creating.add(creating)
                    creating.add_done_callback(
                        lambda finished: self._created_later(key, manifests, finished)
                    )
                whole = [r for r, only in decision.create if only is None]
                if whole:
                    replicas = ", ".join(str(r) for r in whole)
                    world_size = spec.parallelism.world_size
                    message = f"creating replica {replicas}: {world_size} ranks each"
                    await self._event({"metadata": metadata}, "Normal", "CreatingReplica", message)
        for event in decision.events:
            if event.reason in (REPLICA_RESTART, REPLICA_STALLED):
                self.metrics.gang_restarts.inc()
            await self._event({"metadata": metadata}, event.type, event.reason, event.message)
        return resource_version or "", None

    def _ranks_to_post(
        self, key: Key, decision: Decision, world_size: int
    ) -> list[tuple[int, list[int]]]:
        """The ranks of `decision.create` to post now, by replica: not those posted already.

        A reconcile that ran while the watch had not shown all of an earlier one's pods would
        post them again (and get 409s, doubling the load while a gang starts). They are left
        out before rendering: at 1,024 ranks the render is what costs, and a starting gang is
        reconciled once per batch of its pods' events.
        """
        _, name = key
        pending = self._created.setdefault(key, {})
        now = time.monotonic()
        to_post: list[tuple[int, list[int]]] = []
        waiting: list[float] = []
        for replica, only in decision.create:
            ranks = []
            for rank in only if only is not None else range(world_size):
                due = pending.get(owned_objects.pod_name(name, replica, rank), 0.0)
                if due < now:
                    ranks.append(rank)
                elif due < math.inf:
                    waiting.append(due)
            if ranks:
                to_post.append((replica, ranks))
        # Look again when they are due, in case they were never shown (those still in flight
        # queue the deployment when they are answered).
        if waiting:
            self._look_again[key] = min(waiting) - now + 0.1
        return to_post

    def _hold(
        self,
        key: Key,
        manifests: Sequence[Mapping[str, Any]],
        *,
        expected: float | None,
        reserved: float,
    ) -> None:
        """Until when each pod is expected from the watch (None: no longer, post it again) and
        until when its placement's GPUs stay reserved (monotonic times)."""
        namespace, _ = key
        pending = self._created.setdefault(key, {})
        for manifest in manifests:
            pod = manifest["metadata"]["name"]
            if expected is None:
                pending.pop(pod, None)
            else:
                pending[pod] = expected
            placed = self._reserved.get((namespace, pod))
            if placed is not None:
                self._reserved[(namespace, pod)] = (reserved, placed[1])

    def _record_creates(
        self, key: Key, manifests: Sequence[Mapping[str, Any]], created: Sequence[bool] | None
    ) -> None:
        """The creates of `manifests` have answered (`created`; None: not all of them did).

        Created, they are expected from the watch for EXPECT_SECONDS; else they are posted again
        by the next reconcile. Either way their GPUs stay reserved for RESERVATION_SECONDS
        from now, not from their placement: a create may wait longer than that for its turn.
        """
        now = time.monotonic()
        self._hold(
            key,
            manifests,
            expected=None if created is None else now + EXPECT_SECONDS,
            reserved=now + RESERVATION_SECONDS,
        )
        if created is None:
            return
        self.metrics.pods_created.inc(sum(created))
        logger.info(
            "%s/%s: created %d of %d pods (the rest existed already)",
            *key,
            sum(created),
            len(manifests),
        )

    def _created_later(
        self,
        key: Key,
        manifests: Sequence[Mapping[str, Any]],
        finished: asyncio.Future[list[bool]],
    ) -> None:
        """Creates that outlasted their reconcile have answered: record them, say what went
        wrong as the reconcile would have, and look at the deployment again."""
        self._creating.discard(finished)
        if finished.cancelled():
            self._record_creates(key, manifests, None)
            return
        error = finished.exception()
        self._record_creates(key, manifests, None if error is not None else finished.result())
        delay = 0.0
        if isinstance(error, NamespaceTerminating):
            self._leave_namespace(key)
            return
        if isinstance(error, NameTaken):
            self._taken_later[key] = error.message
        elif error is not None:
            logger.warning(
                "%s/%s: creating pods failed (retry in %.1fs): %s", *key, CREATE_RETRY, error
            )
            delay = CREATE_RETRY
        self.look_again_later(key, delay)

    def _leave_namespace(self, key: Key) -> None:
        """Its namespace is being deleted: left alone for TERMINATING_RECHECK."""
        self._terminating[key[0]] = time.monotonic()
        logger.info("%s: namespace is being deleted; leaving %s alone", *key)

    def cancel_creations(self) -> None:
        """Stop waiting for creates still in flight (the process is stopping)."""
        for creating in list(self._creating):
            creating.cancel()

    async def _apply_owned(
        self,
        key: Key,
        owner: owned_objects.Owner,
        spec: InferenceDeploymentSpec,
        verdict: Plan,
        hash_: str,
    ) -> None:
        """The headless Service, an engine's client Service and this version's topology
        ConfigMap, written when the watch shows them missing or different; topologies no pod
        uses any more are deleted."""
        wanted = [
            owned_objects.headless_service(owner, spec),
            self._topology_configmap(key, owner, spec, verdict, hash_),
        ]
        if (api := owned_objects.api_service(owner, spec)) is not None:
            wanted.append(api)
        observed = {(o.get("kind"), o["metadata"].get("name")): o for o in self.views.owned_by(key)}
        for obj in wanted:
            seen = observed.get((obj["kind"], obj["metadata"]["name"]))
            if seen is None or not up_to_date(seen, obj):
                await self.cluster.apply(obj)
        in_use = {p.template_hash for p in self.views.ranks_of(key)} | {hash_}
        for (kind, name), obj in observed.items():
            labels = obj["metadata"].get("labels") or {}
            version = labels.get(owned_objects.LABEL_TEMPLATE_HASH)
            if kind == "ConfigMap" and version is not None and version not in in_use:
                uid = str(obj["metadata"].get("uid", ""))
                await self.cluster.delete_object("ConfigMap", owner.namespace, name, uid)

    def _topology_configmap(
        self,
        key: Key,
        owner: owned_objects.Owner,
        spec: InferenceDeploymentSpec,
        verdict: Plan,
        hash_: str,
    ) -> dict[str, Any]:
        """This version's topology ConfigMap, rendered again only when what it is made of
        changes: the owner, the template (the hash covers every field it reads) or the stages."""
        made_of = (owner.uid, hash_, tuple(verdict.stages))
        kept = self._topologies.get(key)
        if kept is not None and kept[0] == made_of:
            return kept[1]
        configmap = owned_objects.topology_configmap(owner, spec, verdict.stages, hash_)
        self._topologies[key] = (made_of, configmap)
        return configmap

    async def _event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        metadata = body.get("metadata", {})
        involved = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
        }
        try:
            await self.cluster.post_event(involved, type_=type_, reason=reason, message=message)
        except Exception as error:  # an Event is a courtesy; never fail a reconcile for it
            logger.warning("could not post event %s: %s", reason, error)
