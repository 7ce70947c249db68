"""Where a pod serves its metrics, and reading them over HTTP with bounded concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final, Protocol

import aiohttp

#: The largest exposition read (a rank's is a few KiB; an engine's tens of KiB).
MAX_BYTES: Final = 4 * 1024 * 1024


class Endpoint(Protocol):
    """A pod that serves metrics: a rank or a GPU exporter."""

    @property
    def pod_ip(self) -> str | None: ...

    @property
    def metrics_address(self) -> str | None: ...


class ScrapeError(Exception):
    """A rank's endpoint could not be read: refused, timed out, an HTTP error, too large."""


def metrics_url(pod: Endpoint, port: int, path: str, *, honour_address: bool = False) -> str | None:
    """http://host:port/path of a rank; None when the pod has neither an IP nor an address yet.

    The address annotation is honoured only when the operator was told to: anyone who
    may patch pods could otherwise point the operator's requests at any host.
    """
    if pod.metrics_address and honour_address:
        return f"http://{pod.metrics_address}{path}"
    if not pod.pod_ip:
        return None
    host = f"[{pod.pod_ip}]" if ":" in pod.pod_ip else pod.pod_ip
    return f"http://{host}:{port}{path}"


async def read_to_end(content: aiohttp.StreamReader, cap: int) -> bytes | None:
    """Every byte up to EOF, or None past ``cap``.

    ``content.read(n)`` returns what is buffered, not ``n`` bytes: a page sent in chunks would
    be cut at the first one (a vLLM page is ~70 KB).
    """
    chunks: list[bytes] = []
    total = 0
    async for chunk in content.iter_any():
        total += len(chunk)
        if total > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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
            if (response.content_length or 0) > MAX_BYTES:
                raise ScrapeError(f"{url}: more than {MAX_BYTES} bytes")
            body = await read_to_end(response.content, MAX_BYTES)
            if body is None:
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
