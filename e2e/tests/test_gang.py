"""A replica is a gang: losing one rank recreates all of them. Scaling adds whole replicas."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.tests.conftest import Pool, Target
from e2e.tests.deployments import REVIEW_FITTING, TINY, review

pytestmark = pytest.mark.timeout(300)


def ranks(target: Target, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    pods = target.kube.items("pods", namespace, f"paraserve.dev/deployment={name}")
    return {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}


def all_running(pods: dict[str, dict[str, Any]], count: int) -> bool:
    phases = [p.get("status", {}).get("phase") for p in pods.values()]
    return len(phases) == count and all(phase == "Running" for phase in phases)


def test_losing_a_rank_recreates_the_replica(target: Target, pool: Pool, namespace: str) -> None:
    kube = target.kube
    body = review(REVIEW_FITTING, pool.node_selector)
    name = body["metadata"]["name"]
    kube.apply(body, namespace=namespace)
    before = kube.wait_for(
        lambda: (pods := ranks(target, namespace, name)) and all_running(pods, 8) and pods,
        timeout=180, what="8 ranks Running", explain=target.operator_log_tail,
    )  # fmt: skip
    old_uids = {p["metadata"]["uid"] for p in before.values()}
    victim = f"{name}-0-5"
    kube.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")

    def recreated() -> bool:
        pods = ranks(target, namespace, name)
        fresh = {p["metadata"]["uid"] for p in pods.values()}
        return all_running(pods, 8) and not fresh & old_uids

    kube.wait_for(recreated, timeout=180, what="the whole replica recreated",
                  explain=target.operator_log_tail)  # fmt: skip
    state = kube.get("infd", name, namespace=namespace)["status"]
    assert state["restarts"] >= 1, state
    events = kube.items("events", namespace)
    assert any(
        e["involvedObject"].get("name") == name and e["reason"] == "ReplicaRestart" for e in events
    ), [e["reason"] for e in events]


def test_scaling_adds_and_removes_whole_replicas(
    target: Target, pool: Pool, namespace: str
) -> None:
    kube = target.kube
    body = review(TINY, pool.node_selector)
    name = body["metadata"]["name"]
    kube.apply(body, namespace=namespace)
    kube.wait_for(lambda: all_running(ranks(target, namespace, name), 4), timeout=180,
                  what="4 ranks", explain=target.operator_log_tail)  # fmt: skip
    kube.kubectl("scale", "infd", name, "-n", namespace, "--replicas=2")

    def two_replicas() -> bool:
        pods = ranks(target, namespace, name)
        replicas = {p["metadata"]["labels"]["paraserve.dev/replica"] for p in pods.values()}
        return all_running(pods, 8) and replicas == {"0", "1"}

    kube.wait_for(two_replicas, timeout=180, what="2 replicas × 4 ranks",
                  explain=target.operator_log_tail)  # fmt: skip
    kube.kubectl("scale", "infd", name, "-n", namespace, "--replicas=1")
    kube.wait_for(lambda: all_running(ranks(target, namespace, name), 4), timeout=180,
                  what="back to 4 ranks", explain=target.operator_log_tail)  # fmt: skip
