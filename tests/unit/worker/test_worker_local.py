"""`python -m paraserve.worker.local` takes its rank processes with it when it stops or dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
WORKER_ARGS = ["--rate", "0", "--requests", "1", "--prompt-length", "4", "--output-tokens", "2"]


def _two_free_ports() -> int:
    """A base port whose next one is free too (rank k serves on base + k)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports")


def _processes_marked(marker: str) -> set[int]:
    """Processes whose environment carries the marker (the launcher's children inherit it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.add(int(entry.name))
    return found


def _launch(base: int, marker: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PARASERVE_TEST_MARKER": marker}
    command = [sys.executable, "-m", "paraserve.worker.local", "--pipeline", "2"]
    command += ["--metrics-port-base", str(base), "--", *WORKER_ARGS, "--log-level", "warning"]
    launcher = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    for port in (base, base + 1):
        while True:
            assert launcher.poll() is None, launcher.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the ranks did not serve within 120 s"
                time.sleep(0.3)
    return launcher


def _gone_within(marker: str, seconds: float) -> float:
    started = time.monotonic()
    while _processes_marked(marker) and time.monotonic() - started < seconds:
        time.sleep(0.2)
    left = _processes_marked(marker)
    assert not left, f"{len(left)} rank processes still running"
    return time.monotonic() - started


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_the_launcher_stops_every_rank(how: signal.Signals) -> None:
    marker = uuid.uuid4().hex
    launcher = _launch(_two_free_ports(), marker)
    try:
        ranks = _processes_marked(marker) - {launcher.pid}
        assert len(ranks) >= 2  # two ranks (and the fork server)
        launcher.send_signal(how)
        code = launcher.wait(timeout=30)
        took = _gone_within(marker, 20)
        print(f"{how.name}: every rank gone {took:.1f}s after the launcher")
        if how is signal.SIGTERM:
            assert code == 128 + signal.SIGTERM
    finally:
        for pid in _processes_marked(marker):  # never leave them behind, even on a failure
            os.kill(pid, signal.SIGKILL)
