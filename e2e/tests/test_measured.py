"""status.measured comes from the ranks: a real PP=2 × TP=2 × SP=2 replica of a tiny model.

On kind the rank containers serve their metrics and the operator scrapes their pod IPs. On the
local control plane kwok pods run nothing, so e2e/rankrunner.py runs each rank pod's own
`paraserve worker` as a local process and points the operator at it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from e2e.tests.conftest import Pool, Target
from e2e.tests.deployments import TINY, load

pytestmark = pytest.mark.timeout(600)

MEASURED = (
    "maxMemoryBytesPerGpu",
    "prefillP99Seconds",
    "decodeP99PerTokenSeconds",
    "throughputRps",
)


def test_tiny_model_is_measured_on_its_ranks(
    target: Target, pool: Pool, namespace: str, tmp_path: Path
) -> None:
    kube = target.kube
    body = load(TINY, pool.node_selector)
    name = body["metadata"]["name"]
    with contextlib.ExitStack() as stack:
        runner = None
        if not target.runs_containers:
            from e2e.rankrunner import RankRunner

            runner = stack.enter_context(RankRunner(kube.kubeconfig, namespace, name, tmp_path))
        kube.apply(body, namespace=namespace)

        def measured() -> dict[str, Any] | None:
            if runner is not None and runner.exited:
                raise AssertionError(runner.exited[0].log_path.read_text()[-3000:])
            state = kube.get("infd", name, namespace=namespace).get("status") or {}
            numbers = state.get("measured") or {}
            # A first window may close before rank 0 completes a request: wait for one that
            # saw traffic rather than judging the one that did not.
            if all(numbers.get(k) for k in MEASURED) and numbers.get("ranksScraped") == 4:
                return dict(state)
            return None

        state = kube.wait_for(
            measured, timeout=420, interval=2, what=f"{name}: status.measured from 4 ranks",
            explain=target.operator_log_tail,
        )  # fmt: skip
    numbers = state["measured"]
    estimate = state["plan"]["memory"]["totalBytes"]
    assert numbers["maxMemoryBytesPerGpu"] > 0, numbers
    # Read from the ranks, never copied from the estimate.
    assert numbers["maxMemoryBytesPerGpu"] != estimate
    assert numbers["throughputRps"] > 0 and numbers["prefillP99Seconds"] > 0
    assert numbers.get("sampledAt")
    slo = next(c for c in state["conditions"] if c["type"] == "MeetsSLO")
    assert slo["status"] in ("True", "False") and slo["message"], slo
