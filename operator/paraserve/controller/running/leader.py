"""Leader election on a coordination.k8s.io Lease, as client-go does it: one replica acts.

A candidate takes the Lease when it is free or its holder stopped renewing for a whole lease
duration (measured on the candidate's own clock, so clock skew between nodes does not matter),
and the leader renews it every retry period. A leader that cannot renew within the renew
deadline stops acting; the process then exits so its supervisor restarts it as a candidate.
A restarted process with the same identity (the pod name) takes its own Lease back at once.

Every call is bounded by what is left of the renew deadline, and the right to write (the
`Fence`) runs out at the renew deadline after the last renewal that succeeded, measured from
when that renewal started: before any other replica can see the Lease expire. The elector
should have a Cluster of its own (its own threads and connections), so that a pool busy with
pod creates never delays a renewal.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from paraserve.controller.running.cluster_io import ApiError, Cluster

logger = logging.getLogger("paraserve.leader")


@dataclass(frozen=True)
class LeaseTimings:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class Fence:
    """Until when this process may write: the renew deadline after the last renewal began."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.valid_until = float("-inf")

    def extend(self, renewal_started: float, renew_deadline: float) -> None:
        self.valid_until = max(self.valid_until, renewal_started + renew_deadline)

    def revoke(self) -> None:
        self.valid_until = float("-inf")

    def held(self) -> bool:
        return self.clock() < self.valid_until

    def left(self) -> float:
        return self.valid_until - self.clock()


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        cluster: Cluster,
        *,
        namespace: str,
        name: str,
        identity: str,
        timings: LeaseTimings = LeaseTimings(),
        fence: Fence | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings
        self.fence = fence or Fence()
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def path(self) -> str:
        return (
            f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}"
            f"/leases/{quote(self.name)}"
        )

    async def acquire(self) -> None:
        """Return once this process holds the Lease."""
        announced = False
        while True:
            started = time.monotonic()
            try:
                acquired = await asyncio.wait_for(
                    self._try_acquire_or_renew(), timeout=self.timings.renew_deadline
                )
            except Exception as error:  # the API server may be briefly away: keep trying
                logger.warning(
                    "cannot reach lease %s/%s: %s", self.namespace, self.name, error or "timeout"
                )
                acquired = False
            if acquired:
                self.fence.extend(started, self.timings.renew_deadline)
                logger.info("acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
                return
            if not announced:
                logger.info(
                    "waiting for lease %s/%s (held by another replica)", self.namespace, self.name
                )
                announced = True
            await asyncio.sleep(self.timings.retry_period)

    async def hold(self) -> None:
        """Renew every retry period; return once no renewal succeeded for the renew deadline.

        No call may outlive the fence: a renewal that hangs is abandoned when the right to
        write runs out, and the fence is revoked before this returns.
        """
        while True:
            await asyncio.sleep(min(self.timings.retry_period, max(0.0, self.fence.left())))
            started = time.monotonic()
            left = self.fence.left()
            if left <= 0:
                break
            try:
                renewed = await asyncio.wait_for(self._try_acquire_or_renew(), timeout=left)
            except TimeoutError:
                logger.warning("lease renewal did not answer within %.1fs", left)
                renewed = False
            except Exception as error:
                logger.warning("lease renewal failed: %s", error)
                renewed = False
            if renewed:
                self.fence.extend(started, self.timings.renew_deadline)
        self.fence.revoke()
        logger.error("lost lease %s/%s", self.namespace, self.name)

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a standby takes over at once."""
        self.fence.revoke()
        current = await self.cluster.request("GET", self.path, resource="leases")
        spec = current.body.get("spec") or {}
        if not current.ok or spec.get("holderIdentity") != self.identity:
            return
        body = dict(current.body)
        body["spec"] = {**spec, "holderIdentity": None, "leaseDurationSeconds": 1}
        await self.cluster.request("PUT", self.path, body, resource="leases")

    async def _try_acquire_or_renew(self) -> bool:
        now = _micro_time()
        duration = max(1, math.ceil(self.timings.lease_duration))  # whole seconds on the wire
        current = await self.cluster.request("GET", self.path, resource="leases")
        if current.status == 404:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            path = self.path.rsplit("/", 1)[0]
            created = await self.cluster.request("POST", path, lease, resource="leases")
            return created.ok
        if not current.ok:
            raise ApiError("get", self.path, current.status, str(current.body))
        spec = current.body.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        held_for = float(spec.get("leaseDurationSeconds") or duration)
        expired = time.monotonic() - self._observed_at > held_for
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        new_spec = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": duration,
            "renewTime": now,
        }
        if holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = transitions + 1
        body = {**current.body, "spec": new_spec}  # carries resourceVersion: a guarded update
        updated = await self.cluster.request("PUT", self.path, body, resource="leases")
        if updated.ok:
            new = updated.body.get("spec") or {}
            self._observed = (new.get("holderIdentity"), new.get("renewTime"), duration)
            self._observed_at = time.monotonic()
        return updated.ok
