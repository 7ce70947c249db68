"""Reading a rank's page: to the end however it is sent, and never past the byte cap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from paraserve.controller.measurement import scrape
from paraserve.controller.measurement.exposition import parse

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def big_page(size: int) -> bytes:
    """A valid exposition of at least ``size`` bytes, ending in a sample the parser must see."""
    lines = ["# TYPE filler gauge"]
    i = 0
    while sum(len(line) + 1 for line in lines) < size:
        lines.append(f'filler{{series="{i:08d}",padding="{"x" * 64}"}} {i}')
        i += 1
    lines += ["# TYPE last_sample gauge", "last_sample 42", ""]
    return "\n".join(lines).encode()


async def serve_and_fetch(handler: Handler, timeout: float = 10.0) -> str:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            return await scrape.fetch(session, f"http://127.0.0.1:{port}/metrics", timeout)
    finally:
        await runner.cleanup()


def chunked_slowly(body: bytes, pieces: int, pause: float) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain; version=0.0.4"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
            await asyncio.sleep(pause)
        await response.write_eof()
        return response

    return handler


def test_a_chunked_page_over_200_kb_sent_slowly_is_read_whole() -> None:
    body = big_page(210 * 1024)
    text = asyncio.run(serve_and_fetch(chunked_slowly(body, pieces=40, pause=0.02)))
    assert text.encode() == body
    assert parse(text).maximum("last_sample") == 42


def test_a_page_past_the_cap_is_refused_without_reading_it_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scrape, "MAX_BYTES", 100 * 1024)
    body = big_page(300 * 1024)
    with pytest.raises(scrape.ScrapeError, match="more than 102400 bytes"):
        asyncio.run(serve_and_fetch(chunked_slowly(body, pieces=30, pause=0.0)))


def test_a_declared_length_past_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrape, "MAX_BYTES", 1024)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 4096)

    with pytest.raises(scrape.ScrapeError, match="more than 1024 bytes"):
        asyncio.run(serve_and_fetch(handler))
