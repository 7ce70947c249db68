"""Lease leader election against an in-memory Lease endpoint with resourceVersion checks."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from paraserve.controller.running.cluster_io import Result
from paraserve.controller.running.leader import LeaderElector, LeaseTimings

FAST = LeaseTimings(lease_duration=1.0, renew_deadline=0.2, retry_period=0.05)


class LeaseServer:
    """GET/POST/PUT of one Lease, with optimistic concurrency like the API server."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    async def request(self, verb: str, path: str, body: Any = None, **_: Any) -> Result:
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
