"""Where each rank serves its metrics, and reading them over HTTP with bounded concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from paraserve.controller.reconciling import owned_objects

#: Overrides the pod IP and port, for ranks whose metrics are served elsewhere (a sidecar,
#: a proxy, or a test harness running the rank outside its pod): ``host:port``.
METRICS_ADDRESS_ANNOTATION: Final = "paraserve.dev/metrics-address"

#: The largest exposition read (a rank's is a few KiB; an engine's tens of KiB).
MAX_BYTES: Final = 4 * 1024 * 1024


class ScrapeError(Exception):
    """A rank's endpoint could not be read: refused, timed out, an HTTP error, too large."""


@dataclass(frozen=True)
class Target:
    """One rank pod as the measurement loop sees it."""

    name: str
    uid: str
    replica: int
    rank: int
    ready: bool
    pod_ip: str | None
    address: str | None  # the annotation, when set

    def url(self, port: int, path: str, *, honour_address: bool = False) -> str | None:
        """http://host:port/path; None when the pod has neither an IP nor an address yet.

        The address annotation is honoured only when the operator was told to: anyone who
        may patch pods could otherwise point the operator's requests at any host.
        """
        if self.address and honour_address:
            return f"http://{self.address}{path}"
        if not self.pod_ip:
            return None
        host = f"[{self.pod_ip}]" if ":" in self.pod_ip else self.pod_ip
        return f"http://{host}:{port}{path}"

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> Target | None:
        """From a Pod object; None when it is not a rank pod."""
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        status = pod.get("status") or {}
        coordinates = owned_objects.replica_and_rank(labels)
        if coordinates is None:
            return None
        replica, rank = coordinates
        conditions = status.get("conditions") or []
        ready = (
            status.get("phase") == "Running"
            and metadata.get("deletionTimestamp") is None
            and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        )
        return cls(
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            replica=replica,
            rank=rank,
            ready=ready,
            pod_ip=status.get("podIP") or None,
            address=(metadata.get("annotations") or {}).get(METRICS_ADDRESS_ANNOTATION) or None,
        )


async def fetch(session: aiohttp.ClientSession, url: str, timeout: float) -> str:
    """The text at `url`; ScrapeError for anything but a 200 within the timeout."""
    try:
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"Accept": "text/plain;version=0.0.4"},
        ) as response:
            if response.status != 200:
                raise ScrapeError(f"{url}: HTTP {response.status}")
            body = await response.content.read(MAX_BYTES + 1)
            if len(body) > MAX_BYTES:
                raise ScrapeError(f"{url}: more than {MAX_BYTES} bytes")
            return body.decode("utf-8", "replace")
    except TimeoutError:
        raise ScrapeError(f"{url}: no answer within {timeout:g}s") from None
    except aiohttp.ClientError as error:
        raise ScrapeError(f"{url}: {error}") from None


async def fetch_all(
    session: aiohttp.ClientSession,
    urls: Sequence[str | None],
    *,
    limit: asyncio.Semaphore,
    timeout: float,
) -> list[str | ScrapeError]:
    """Each URL's text or its error, in order; at most `limit` requests in flight."""

    async def one(url: str | None) -> str | ScrapeError:
        if url is None:
            return ScrapeError("the pod has no IP and no metrics address yet")
        async with limit:
            try:
                return await fetch(session, url, timeout)
            except ScrapeError as error:
                return error

    return list(await asyncio.gather(*(one(url) for url in urls)))
