"""The API writes the rooms make, as Protocols: reconciling/ and measurement/ are handed an
object with these methods, and running/cluster_io.Cluster is the one that makes the calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, Protocol


class Urgency(IntEnum):
    """Which of the deployments' writes goes first when many wait for the API server (lower
    first): what a user or a tool waits on before what is rewritten anyway."""

    #: The phase comes to rest (Ready, Waiting, Rejected, Degraded, Failed): the answer
    #: `kubectl wait`, rollouts and people wait for.
    SETTLED = 0
    #: Another phase or a condition's verdict changes (Scheduling, Running, MeetsSLO), and the
    #: gang's bookkeeping once a gang has started (a replica formed).
    PHASE = 1
    #: The gang annotation: the commit point before a replica's pods are created or deleted.
    GANG = 2
    #: Counts of ranks ready or scheduled, measured figures: the next write carries them too,
    #: so they are not sent while others wait (LaneBusy).
    PROGRESS = 3


class NotLeader(Exception):
    """A write refused before it was sent: this process no longer holds the Lease."""


class LaneBusy(Exception):
    """Not sent: more urgent writes wait for the API server, and this one (a progress count,
    measured figures) would be carried by the deployment's next write anyway. Waiting in line,
    it would hold its deployment: that deployment's next write, perhaps the one that says
    Ready, would wait behind it."""


class WriteRefused(Exception):
    """A write the API server refused for a reason the reconcile acts on, not retries."""

    def __init__(self, message: str) -> None:
        #: For a person: what was refused and why.
        self.message = message
        super().__init__(message)


class NamespaceTerminating(WriteRefused):
    """The namespace is being deleted: nothing can be created in it any more (HTTP 403)."""


class NameTaken(WriteRefused):
    """An object of the name exists and is not ours: it is never taken for ours (HTTP 409)."""


class StatusWriter(Protocol):
    """Merge-patch a deployment (or its status) if unchanged since read; None on conflict."""

    async def patch_deployment(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        resource_version: str | None,
        subresource: str | None = None,
        urgency: Urgency = Urgency.PHASE,
    ) -> dict[str, Any] | None: ...


class ClusterWrites(StatusWriter, Protocol):
    """Every write a reconcile makes: the owned objects, the rank pods, status and events."""

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]: ...

    async def apply(self, obj: Mapping[str, Any]) -> None: ...

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None: ...

    async def delete_object(self, kind: str, namespace: str, name: str, uid: str) -> None: ...

    async def namespace_terminating(self, namespace: str) -> bool: ...

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str
    ) -> None: ...
