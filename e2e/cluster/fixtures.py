"""pytest fixtures for the local cluster; import them into a conftest.py to use them."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from e2e.cluster import build
from e2e.cluster.local import LocalCluster, running_cluster


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM then unwinds like Ctrl-C: fixtures tear down and the cluster stops in order.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """One local control plane with kwok for the whole session (pools are per test)."""
    if missing := build.missing():
        pytest.fail(
            f"cluster binaries missing ({', '.join(missing)}): run `make cluster-binaries` "
            "or `python -m e2e.cluster build` first (a cold build takes a while)",
            pytrace=False,
        )
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    with running_cluster() as local:
        yield local
