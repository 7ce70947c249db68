"""The review's two strategies: PP=8 × TP=2 refused with its arithmetic, PP=4 × TP=2 × SP=2 run.

The pool is 2 nodes × 4 GPUs: PP=8 × TP=2 needs 16 GPUs (8 TP groups of 2; 4 fit), PP=4 × TP=2
needs 8 with each TP group on one node.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from e2e.tests.conftest import Pool, Target
from e2e.tests.deployments import REVIEW_FITTING, REVIEW_IMPOSSIBLE, review

pytestmark = pytest.mark.timeout(300)

ARITHMETIC = "PP=8 × TP=2 = 16 GPUs required"


def rank_pods(target: Target, namespace: str, name: str) -> list[dict[str, Any]]:
    return target.kube.items("pods", namespace, f"paraserve.dev/deployment={name}")


def status(target: Target, namespace: str, name: str) -> dict[str, Any]:
    return dict(target.kube.get("infd", name, namespace=namespace).get("status") or {})


def test_impossible_strategy_is_refused_with_its_arithmetic(
    target: Target, pool: Pool, namespace: str
) -> None:
    kube = target.kube
    body = review(REVIEW_IMPOSSIBLE, pool.node_selector)
    text = yaml.safe_dump(body)

    # The webhook refuses it at the prompt once it knows the pool (dry runs ask it too).
    def refused() -> bool:
        attempt = kube.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=text, check=False
        )
        return attempt.returncode != 0

    kube.wait_for(
        refused, timeout=60, what="the webhook refusing", explain=target.operator_log_tail
    )
    result = kube.kubectl("apply", "-n", namespace, "-f", "-", input=text, check=False)
    assert result.returncode != 0, result.stdout
    assert ARITHMETIC in result.stderr and "InsufficientGPUs" in result.stderr, result.stderr
    assert "(2 nodes × 4)" in result.stderr, result.stderr

    name = body["metadata"]["name"]
    assert not rank_pods(target, namespace, name)


def test_fitting_strategy_runs_one_rank_per_gpu(target: Target, pool: Pool, namespace: str) -> None:
    kube = target.kube
    body = review(REVIEW_FITTING, pool.node_selector)
    name = body["metadata"]["name"]
    kube.apply(body, namespace=namespace)

    def running() -> list[dict[str, Any]] | None:
        pods = rank_pods(target, namespace, name)
        ready = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
        phase = status(target, namespace, name).get("phase")
        return pods if len(ready) == 8 and phase in ("Running", "Ready") else None

    pods = kube.wait_for(
        running, timeout=180, what=f"{name}: 8 ranks Running", explain=target.operator_log_tail
    )
    state = status(target, namespace, name)
    assert state["worldSize"] == 8 and state["gpusRequired"] == 8
    assert [s["layers"] for s in state["plan"]["stages"]] == [[0, 20], [20, 40], [40, 60], [60, 80]]

    by_rank = {int(p["metadata"]["labels"]["paraserve.dev/rank"]): p for p in pods}
    assert sorted(by_rank) == list(range(8))
    for rank, pod in by_rank.items():
        labels = pod["metadata"]["labels"]
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        pp_rank, tp_rank = divmod(rank, 2)
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "8"
        assert env["PARASERVE_PP_RANK"] == str(pp_rank) and env["PARASERVE_TP_RANK"] == str(tp_rank)
        assert env["PARASERVE_SP_SIZE"] == "2" and env["PARASERVE_SP_RANK"] == str(tp_rank)
        assert env["PARASERVE_STAGE_LAYERS"] == f"{pp_rank * 20}:{pp_rank * 20 + 20}"
        assert env["MASTER_PORT"] == "29500" and env["MASTER_ADDR"].startswith(f"{name}-0-0.{name}")
        assert labels["paraserve.dev/pp-rank"] == str(pp_rank)
        assert container["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
        assert pod["spec"]["nodeName"] in pool.nodes
    # Each TP group sits on one node; the pool's 8 GPUs are all used.
    for pp_rank in range(4):
        group = {by_rank[pp_rank * 2 + t]["spec"]["nodeName"] for t in range(2)}
        assert len(group) == 1, group
    per_node = {n: 0 for n in pool.nodes}
    for pod in pods:
        per_node[pod["spec"]["nodeName"]] += 1
    assert sorted(per_node.values()) == [4, 4]

    kube.get("service", name, namespace=namespace)
    [mounted] = {v["configMap"]["name"] for v in pods[0]["spec"]["volumes"] if v.get("configMap")}
    kube.get("configmap", mounted, namespace=namespace)
    table = kube.kubectl("get", "infd", name, "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "PP", "TP", "SP"], header
    assert row.split()[1:4] == ["4", "2", "2"], row
