"""The API writes the rooms make, as Protocols: reconciling/ and measurement/ are handed an
object with these methods, and running/cluster_io.Cluster is the one that makes the calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


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
    ) -> dict[str, Any] | None: ...


class ClusterWrites(StatusWriter, Protocol):
    """Every write a reconcile makes: the owned objects, the rank pods, status and events."""

    async def create_all(self, objs: Sequence[Mapping[str, Any]]) -> list[bool]: ...

    async def apply(self, obj: Mapping[str, Any]) -> None: ...

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None: ...

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str
    ) -> None: ...
