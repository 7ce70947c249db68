"""Lease leader election against an in-memory Lease endpoint with resourceVersion checks."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest

from paraserve.controller.api_writes import NotLeader
from paraserve.controller.running.cluster_io import Cluster, Result
from paraserve.controller.running.leader import Fence, LeaderElector, LeaseTimings

FAST = LeaseTimings(lease_duration=1.0, renew_deadline=0.2, retry_period=0.05)


class LeaseServer:
    """GET/POST/PUT of one Lease, with optimistic concurrency like the API server."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.hang = False

    async def request(self, verb: str, path: str, body: Any = None, **_: Any) -> Result:
        if self.hang:
            await asyncio.Event().wait()  # a partition: no answer, no error
        if self.down:
            raise ConnectionError("API server unreachable")
        if verb == "GET":
            if self.lease is None:
                return Result(404, {})
            return Result(200, copy.deepcopy(self.lease))
        if verb == "POST":
            if self.lease is not None:
                return Result(409, {})
            return Result(201, self._store(body))
        if verb == "PUT":
            assert self.lease is not None
            if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                return Result(409, {})
            return Result(200, self._store(body))
        raise AssertionError(verb)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        return (self.lease or {}).get("spec", {}).get("holderIdentity")


def elector(server: LeaseServer, identity: str) -> LeaderElector:
    return LeaderElector(
        server,  # type: ignore[arg-type]
        namespace="default",
        name="paraserve-operator",
        identity=identity,
        timings=FAST,
    )


def test_first_candidate_leads_and_the_second_waits_until_the_lease_expires():
    async def scenario() -> None:
        server = LeaseServer()
        first, second = elector(server, "a"), elector(server, "b")
        await first.acquire()
        assert server.holder == "a"
        assert not await second._try_acquire_or_renew()
        # "a" stops renewing (killed): "b" takes over one lease duration later, on its own clock.
        waiting = asyncio.create_task(second.acquire())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await asyncio.wait_for(waiting, timeout=3)
        assert server.holder == "b"
        assert server.lease is not None and server.lease["spec"]["leaseTransitions"] == 1

    asyncio.run(scenario())


def test_the_same_identity_takes_its_lease_back_at_once():
    async def scenario() -> None:
        server = LeaseServer()
        await elector(server, "pod-0").acquire()
        restarted = elector(server, "pod-0")
        assert await restarted._try_acquire_or_renew()

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_gives_up_and_a_release_frees_the_lease():
    async def scenario() -> None:
        server = LeaseServer()
        leader = elector(server, "a")
        await leader.acquire()
        holding = asyncio.create_task(leader.hold())
        await asyncio.sleep(0.12)
        assert not holding.done()  # renewing
        server.down = True
        await asyncio.wait_for(holding, timeout=2)  # returned: leadership lost
        server.down = False
        await leader.acquire()
        await leader.release()
        assert server.holder is None
        assert await elector(server, "b")._try_acquire_or_renew()

    asyncio.run(scenario())


def test_a_renewal_that_hangs_stops_every_write_before_the_lease_can_expire():
    """A partitioned leader: GET/PUT never answer. It must give up (not hang with them) and
    stop writing before a standby, waiting one lease duration, can take over."""
    timings = LeaseTimings(lease_duration=1.0, renew_deadline=0.4, retry_period=0.1)

    async def scenario() -> tuple[float, float, bool]:
        server = LeaseServer()
        fence = Fence()
        leader = LeaderElector(
            server,  # type: ignore[arg-type]
            namespace="default",
            name="paraserve-operator",
            identity="a",
            timings=timings,
            fence=fence,
        )
        await leader.acquire()
        assert fence.held()
        holding = asyncio.create_task(leader.hold())
        await asyncio.sleep(0.25)
        server.hang = True
        hung_at = time.monotonic()
        last_renewal = fence.valid_until - timings.renew_deadline
        await asyncio.wait_for(holding, timeout=3)  # returned: it did not hang with the call
        gave_up = time.monotonic()
        return gave_up - hung_at, last_renewal + timings.lease_duration - gave_up, fence.held()

    waited, margin, still_writing = asyncio.run(scenario())
    assert not still_writing
    assert margin > 0  # writes stopped before the lease could expire for anyone else
    print(f"renewal hung: writes stopped {waited:.2f}s later, {margin:.2f}s before expiry")


def test_writes_are_refused_once_the_fence_is_down_and_reads_still_go():
    fence = Fence()
    cluster = Cluster(None, may_write=fence.held)  # no API client: nothing may be sent

    async def scenario() -> None:
        pod = {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
        with pytest.raises(NotLeader):
            await cluster.create(pod)
        with pytest.raises(NotLeader):
            await cluster.patch_deployment("ns", "d", {}, resource_version="1")
        with pytest.raises(AttributeError):  # a read is not fenced: it reaches the (absent) client
            await cluster.request("GET", "/api/v1/namespaces/ns", resource="namespaces")

    try:
        asyncio.run(scenario())
    finally:
        cluster.close()
