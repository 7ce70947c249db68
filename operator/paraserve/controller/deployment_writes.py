"""Writes to an InferenceDeployment: one writer at a time, reading its own last write.

A leaf (it imports api_writes alone): the reconcile and the measurement loop share one.

The reconcile and the measurement loop both write a deployment, each guarded by the
resourceVersion it read. The watch shows a write some time after it was made; a writer that
read the deployment from the watch meanwhile would send the version before its own write and
get a conflict, and retry, and conflict again while the watch lags (at scale, a storm of 409s).
So the object each write returned is kept until the watch shows that version or a later one,
and is read instead of the older one; and the two writers of a deployment take turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from paraserve.controller.api_writes import StatusWriter, Urgency

Key = tuple[str, str]  # (namespace, name)


def _version(body: Mapping[str, Any] | None) -> str | None:
    if body is None:
        return None
    value = (body.get("metadata") or {}).get("resourceVersion")
    return str(value) if value is not None else None


class DeploymentWrites:
    def __init__(
        self,
        cluster: StatusWriter,
        watched: Callable[[Key], Mapping[str, Any] | None],
    ) -> None:
        self.cluster = cluster
        self._watched = watched
        # key → (versions older than our last write, the object that write returned)
        self._written: dict[Key, tuple[frozenset[str], dict[str, Any]]] = {}
        self._locks: dict[Key, asyncio.Lock] = {}

    def lock(self, key: Key) -> asyncio.Lock:
        """Held by whoever reads, decides and writes one deployment."""
        return self._locks.setdefault(key, asyncio.Lock())

    def current(self, key: Key) -> Mapping[str, Any] | None:
        """The deployment as the watch shows it, or as our last write left it if the watch
        still shows the version that write was based on."""
        watched = self._watched(key)
        written = self._written.get(key)
        if written is None:
            return watched
        older, body = written
        if watched is None or _version(watched) not in older:
            # Deleted, or the watch caught up (our write or a later one): the watch is right.
            del self._written[key]
            return watched
        return body

    async def patch(
        self,
        key: Key,
        patch: dict[str, Any],
        *,
        resource_version: str | None,
        subresource: str | None = None,
        urgency: Urgency = Urgency.PHASE,
    ) -> dict[str, Any] | None:
        """Merge-patch the deployment if unchanged since `resource_version`; None on conflict."""
        written = await self.cluster.patch_deployment(
            *key,
            patch,
            resource_version=resource_version,
            subresource=subresource,
            urgency=urgency,
        )
        if written is not None and _version(written) != resource_version:
            older = {v for v in (resource_version, _version(self._watched(key))) if v}
            if key in self._written:
                older |= self._written[key][0]
            self._written[key] = (frozenset(older), written)
        return written

    def forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._written.pop(key, None)
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]
