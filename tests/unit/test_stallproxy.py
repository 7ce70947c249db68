"""The stall proxy the leader-freeze chaos test puts between an operator and the API server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from e2e.stallproxy import StallProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """A loopback echo server; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def connect(proxy: StallProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.settimeout(0.5)
    return sock


def test_traffic_flows_until_frozen_and_a_partitioned_connection_is_reset(echo: int) -> None:
    with StallProxy("127.0.0.1", echo) as proxy:
        old = connect(proxy)
        old.sendall(b"hello")
        assert old.recv(100) == b"hello"

        frozen_at = proxy.freeze()
        assert abs(frozen_at - time.time()) < 5
        old.sendall(b"lost")
        with pytest.raises(TimeoutError):
            old.recv(100)
        during = connect(proxy)  # accepted, but nothing passes
        during.sendall(b"held")
        with pytest.raises(TimeoutError):
            during.recv(100)

        proxy.thaw()
        # What the partition caught is never delivered: those connections are reset.
        for sock in (old, during):
            with pytest.raises((ConnectionError, OSError)):
                data = sock.recv(100)
                if not data:
                    raise ConnectionResetError("closed")
        assert proxy.resets >= 2

        fresh = connect(proxy)
        fresh.sendall(b"again")
        assert fresh.recv(100) == b"again"
        for sock in (old, during, fresh):
            sock.close()
