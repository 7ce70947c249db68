"""A loopback TCP proxy a test can stall: a network partition between one client and a server.

Put it between a client and the API server (a kubeconfig whose server is the proxy's
address; TLS passes through untouched). `freeze()` stops every byte in both directions, on
open connections and on new ones, as a partition does; the client's requests hang. `thaw()`
heals it: the connections that lived through the partition are reset and whatever they had
in flight is lost, as TCP gives up on a partition that outlasts it, and new connections flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any


class StallProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = 0
        self.frozen_at: float | None = None  # epoch seconds of the last freeze
        self.connections = 0
        self.resets = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._flowing = asyncio.Event()
        self._open: set[asyncio.StreamWriter] = set()
        # Connections that saw the partition: reset when it heals.
        self._partitioned: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def start(self) -> StallProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def freeze(self) -> float:
        """Stop all traffic; returns the epoch time of the freeze."""
        self._call(self._freeze())
        assert self.frozen_at is not None
        return self.frozen_at

    def thaw(self) -> None:
        """Heal: reset the connections the partition caught, then let traffic flow again."""
        self._call(self._thaw())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> StallProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- on the proxy's loop ---------------------------------------------------------------

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _freeze(self) -> None:
        self.frozen_at = time.time()
        self._flowing.clear()
        self._partitioned |= self._open

    async def _thaw(self) -> None:
        for writer in list(self._partitioned):
            self.resets += 1
            writer.transport.abort()
        self._partitioned.clear()
        self._flowing.set()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.transport.abort()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(client_w)
        if not self._flowing.is_set():
            self._partitioned.add(client_w)
        try:
            await self._flowing.wait()
            if client_w.transport.is_closing():
                return
            try:
                server_r, server_w = await asyncio.open_connection(*self.target)
            except OSError:
                client_w.transport.abort()
                return
            self._open.add(server_w)
            pair = (client_w, server_w)
            await asyncio.gather(
                self._pump(client_r, server_w, pair), self._pump(server_r, client_w, pair)
            )
        finally:
            self._open.discard(client_w)
            self._partitioned.discard(client_w)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        client_w, server_w = pair
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                if not self._flowing.is_set():
                    # Caught by the partition: held until it heals, then lost with the reset.
                    self._partitioned.add(client_w)
                    await self._flowing.wait()
                    if client_w.transport.is_closing():
                        break
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if client_w.transport.is_closing():
                # Reset by a thaw: the server side goes too, nothing held is delivered.
                server_w.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    sink.write_eof()
            self._open.discard(server_w)
