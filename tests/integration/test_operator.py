"""The operator against the local control plane: validation, ranks, gangs, scaling, rollouts."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.cluster.local import LocalCluster
from operator_fixtures import (
    TEST_IMAGE,
    OperatorProcess,
    deployment,
    dump,
    env_of,
    infd,
    pods_of,
    running,
    wait,
)

pytestmark = pytest.mark.timeout(300)

# Fits one GPU per stage at PP=2: 7B × 2 B / 2 = 7 GB + 16.75 GB reserve on 80 GB.
SMALL_MODEL = {"name": "meta-llama/Llama-2-7b-hf", "dtype": "float16", "parameters": "7B"}


@pytest.fixture
def namespace(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[str]:
    with cluster.namespace() as name:
        yield name


def phase(cluster: LocalCluster, namespace: str, name: str) -> str | None:
    return infd(cluster, namespace, name).get("status", {}).get("phase")


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == kind)


def events(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.get("events", namespace=namespace)["items"]
    return [e for e in items if e["involvedObject"].get("name") == name]


def test_review_scenario(cluster: LocalCluster, namespace: str, operator: OperatorProcess):
    with cluster.gpu_pool("1 x 8 x A100-80GB") as pool:
        # PP=8 × TP=2 × SP=2 needs 16 GPUs: rejected with the arithmetic, nothing created.
        impossible = deployment(
            "pp8", pool.node_selector, parallelism={"pipeline": 8, "tensor": 2, "sequence": 2}
        )
        cluster.apply(impossible, namespace=namespace)
        wait(cluster, lambda: phase(cluster, namespace, "pp8") == "Rejected", "pp8 Rejected")
        body = infd(cluster, namespace, "pp8")
        validated = condition(body, "Validated")
        assert validated["status"] == "False" and validated["reason"] == "InsufficientGPUs"
        assert "PP=8 × TP=2 = 16 GPUs required" in validated["message"]
        wait(
            cluster,
            lambda: any(
                e["type"] == "Warning" and e["reason"] == "InsufficientGPUs"
                for e in events(cluster, namespace, "pp8")
            ),
            "a Warning event with the code",
            timeout=20,
        )

        # PP=4 × TP=2 × SP=2 needs 8: exactly 8 pods, one GPU each, the right coordinates.
        cluster.apply(deployment("pp4", pool.node_selector), namespace=namespace)
        wait(
            cluster,
            lambda: (
                running(pods_of(cluster, namespace, "pp4"))
                and phase(cluster, namespace, "pp4") in ("Running", "Ready")
            ),
            "pp4 running",
        )
        pods = sorted(pods_of(cluster, namespace, "pp4"), key=lambda p: int(env_of(p)["RANK"]))
        assert [p["metadata"]["name"] for p in pods] == [f"pp4-0-{k}" for k in range(8)]
        layers = ["0:20", "20:40", "40:60", "60:80"]
        for rank, pod in enumerate(pods):
            env = env_of(pod)
            pp, tp = divmod(rank, 2)
            assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "8"
            assert (env["PARASERVE_PP_RANK"], env["PARASERVE_TP_RANK"]) == (str(pp), str(tp))
            assert env["PARASERVE_SP_RANK"] == str(tp) and env["PARASERVE_SP_SIZE"] == "2"
            assert env["PARASERVE_STAGE_LAYERS"] == layers[pp]
            assert env["MASTER_ADDR"] == f"pp4-0-0.pp4.{namespace}.svc"
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert str(limits["nvidia.com/gpu"]) == "1"
            assert pod["spec"]["nodeName"] == pool.nodes[0]
        assert pods_of(cluster, namespace, "pp8") == []

        table = cluster.kubectl("get", "infd", "pp4", "-n", namespace).stdout.split("\n")
        header, row = table[0].split(), table[1].split()
        columns = dict(zip(header, row, strict=False))
        assert (columns["PP"], columns["TP"], columns["SP"], columns["GPUS"]) == (
            "4",
            "2",
            "2",
            "8",
        ), table
        assert columns["READY"] == "8/8"

        service = cluster.get("service", "pp4", namespace=namespace)
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        # The topology the pods mount, one ConfigMap per template version.
        [mounted] = {
            v["configMap"]["name"]
            for p in pods_of(cluster, namespace, "pp4")
            for v in p["spec"]["volumes"]
            if v.get("configMap")
        }
        topology = cluster.get("configmap", mounted, namespace=namespace)
        assert '"worldSize": 8' in topology["data"]["topology.json"]

        # The operator's own metrics and health.
        metrics = operator.get(operator.metrics_port, "/metrics")
        assert "paraserve_operator_reconciles_total" in metrics
        assert "paraserve_operator_api_calls_total" in metrics
        assert operator.get(operator.health_port, "/healthz")


def test_tensor_groups_stay_within_a_node(cluster: LocalCluster, namespace: str):
    with cluster.gpu_pool("2 x 4 x H100-80GB") as pool:
        spec = deployment(
            "tp4", pool.node_selector, parallelism={"pipeline": 2, "tensor": 4, "sequence": 1}
        )
        spec["spec"]["model"]["architecture"]["numKeyValueHeads"] = 8
        cluster.apply(spec, namespace=namespace)
        pods = wait(
            cluster,
            lambda: (p := pods_of(cluster, namespace, "tp4")) and len(p) == 8 and running(p) and p,
            "8 running ranks",
        )
        nodes_of_group: dict[str, set[str]] = {}
        for pod in pods:
            group = pod["metadata"]["labels"]["paraserve.dev/tp-group"]
            nodes_of_group.setdefault(group, set()).add(pod["spec"]["nodeName"])
        assert sorted(nodes_of_group) == ["0-0", "0-1"]
        assert all(len(nodes) == 1 for nodes in nodes_of_group.values()), nodes_of_group
        assert nodes_of_group["0-0"] != nodes_of_group["0-1"]


def test_deleting_a_rank_recreates_only_its_replica(cluster: LocalCluster, namespace: str):
    with cluster.gpu_pool("2 x 8 x A100-80GB") as pool:
        cluster.apply(deployment("gang", pool.node_selector, replicas=2), namespace=namespace)
        wait(
            cluster,
            lambda: len(p := pods_of(cluster, namespace, "gang")) == 16 and running(p),
            "16 running ranks",
        )
        wait(cluster, lambda: phase(cluster, namespace, "gang") == "Ready", "Ready")
        before = {
            p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(cluster, namespace, "gang")
        }

        cluster.kubectl("delete", "pod", "gang-0-3", "-n", namespace, "--wait=false")

        def replica_zero_recreated() -> bool:
            pods = pods_of(cluster, namespace, "gang")
            zero = [p for p in pods if p["metadata"]["labels"]["paraserve.dev/replica"] == "0"]
            return (
                len(zero) == 8
                and running(zero)
                and all(before[p["metadata"]["name"]] != p["metadata"]["uid"] for p in zero)
            )

        try:
            wait(cluster, replica_zero_recreated, "replica 0 recreated as a whole")
        except TimeoutError:
            pytest.fail(dump(cluster, namespace))
        after = {
            p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(cluster, namespace, "gang")
        }
        assert {n: u for n, u in after.items() if n.startswith("gang-1-")} == {
            n: u for n, u in before.items() if n.startswith("gang-1-")
        }
        wait(cluster, lambda: phase(cluster, namespace, "gang") == "Ready", "Ready again")
        assert infd(cluster, namespace, "gang")["status"]["restarts"] == 1
        wait(
            cluster,
            lambda: any(
                e["reason"] == "ReplicaRestart" for e in events(cluster, namespace, "gang")
            ),
            "a ReplicaRestart event",
            timeout=20,
        )


def test_scale_rolling_update_and_delete(cluster: LocalCluster, namespace: str):
    with cluster.gpu_pool("1 x 8 x A100-80GB") as pool:
        small = {"parallelism": {"pipeline": 2, "tensor": 1, "sequence": 1}, "model": SMALL_MODEL}
        cluster.apply(deployment("svc", pool.node_selector, **small), namespace=namespace)

        def replicas_running(n: int, image: str | None = None) -> bool:
            pods = pods_of(cluster, namespace, "svc")
            names = {f"svc-{r}-{k}" for r in range(n) for k in range(2)}
            return (
                {p["metadata"]["name"] for p in pods} == names
                and running(pods)
                and (
                    image is None or all(p["spec"]["containers"][0]["image"] == image for p in pods)
                )
            )

        wait(cluster, lambda: replicas_running(1), "1 replica")
        cluster.kubectl("scale", "infd", "svc", "--replicas=3", "-n", namespace)
        wait(cluster, lambda: replicas_running(3), "3 replicas")
        wait(cluster, lambda: phase(cluster, namespace, "svc") == "Ready", "Ready at 3")
        assert infd(cluster, namespace, "svc")["status"]["replicas"] == 3

        # An image change replaces one replica at a time.
        cluster.kubectl(
            "patch", "infd", "svc", "-n", namespace, "--type=merge",
            "-p", '{"spec": {"worker": {"image": "registry.invalid/worker:v2"}}}',
        )  # fmt: skip
        most_down = 0
        deadline = time.monotonic() + 120
        while not replicas_running(3, "registry.invalid/worker:v2"):
            assert time.monotonic() < deadline, dump(cluster, namespace)
            pods = pods_of(cluster, namespace, "svc")
            serving = {
                r
                for r in range(3)
                if len(
                    group := [
                        p
                        for p in pods
                        if p["metadata"]["labels"]["paraserve.dev/replica"] == str(r)
                    ]
                )
                == 2
                and running(group)
            }
            most_down = max(most_down, 3 - len(serving))
            time.sleep(0.3)
        assert most_down <= 1, "more than one replica was down during the rolling update"
        assert infd(cluster, namespace, "svc")["status"]["restarts"] == 0

        cluster.kubectl("scale", "infd", "svc", "--replicas=1", "-n", namespace)
        wait(cluster, lambda: replicas_running(1, "registry.invalid/worker:v2"), "1 replica")

        # Deletion leaves nothing behind (ownerReferences + the garbage collector).
        cluster.kubectl("delete", "infd", "svc", "-n", namespace, "--wait=false")

        def nothing_left() -> bool:
            pods = pods_of(cluster, namespace, "svc")
            services = cluster.kubectl("get", "service", "svc", "-n", namespace, check=False)
            configmaps = [
                c
                for c in cluster.get("configmaps", namespace=namespace)["items"]
                if c["metadata"].get("labels", {}).get("paraserve.dev/deployment") == "svc"
            ]
            return not pods and services.returncode != 0 and not configmaps

        wait(cluster, nothing_left, "everything deleted", timeout=120)


def test_waiting_deployment_starts_when_gpus_free_up(cluster: LocalCluster, namespace: str):
    with cluster.gpu_pool("1 x 8 x A100-80GB") as pool:
        cluster.apply(deployment("first", pool.node_selector), namespace=namespace)
        wait(cluster, lambda: running(pods_of(cluster, namespace, "first")), "first running")
        second = deployment(
            "second", pool.node_selector, parallelism={"pipeline": 2, "tensor": 2, "sequence": 1}
        )
        cluster.apply(second, namespace=namespace)
        wait(cluster, lambda: phase(cluster, namespace, "second") == "Waiting", "second Waiting")
        body = infd(cluster, namespace, "second")
        assert condition(body, "Validated")["status"] == "True"
        assert condition(body, "Scheduled")["reason"] == "InsufficientFreeGPUs"
        assert pods_of(cluster, namespace, "second") == []

        cluster.kubectl("delete", "infd", "first", "-n", namespace, "--wait=false")
        wait(
            cluster,
            lambda: len(p := pods_of(cluster, namespace, "second")) == 4 and running(p),
            "second started by itself",
            timeout=120,
        )


def test_operator_killed_during_creation_converges(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
):
    count = 20
    with cluster.gpu_pool("6 x 8 x A100-80GB") as pool:
        spec = {"parallelism": {"pipeline": 2, "tensor": 1, "sequence": 1}, "model": SMALL_MODEL}
        bodies = [deployment(f"d{i:02d}", pool.node_selector, **spec) for i in range(count)]
        rng = random.Random(4)

        # Deployments arrive in batches; after each, the operator is killed (SIGKILL) at a random
        # moment — mostly while it creates that batch — and restarted.
        def pod_count() -> int:
            names = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout
            return len(names.split())

        pods_at_kill: list[int] = []
        for batch in range(5):
            operator.wait_healthy()
            cluster.apply(*bodies[batch * 4 : (batch + 1) * 4], namespace=namespace)
            time.sleep(rng.uniform(0.0, 0.6))
            operator.kill()
            pods_at_kill.append(pod_count())
            operator.start()
        print(f"pods when the operator was killed: {pods_at_kill} of {2 * count}")
        if not operator.alive():
            operator.start_healthy()
        operator.wait_healthy()

        expected = {f"d{i:02d}-0-{k}" for i in range(count) for k in range(2)}

        def converged() -> bool:
            pods = cluster.get("pods", namespace=namespace)["items"]
            names = [p["metadata"]["name"] for p in pods]
            return sorted(names) == sorted(expected) and running(pods)

        try:
            wait(cluster, converged, "exactly the expected pods", timeout=180)
        except TimeoutError:
            pytest.fail(dump(cluster, namespace) + "\n" + operator.log_tail())
        pods = cluster.get("pods", namespace=namespace)["items"]
        owners = {p["metadata"]["ownerReferences"][0]["name"] for p in pods}
        assert owners == {f"d{i:02d}" for i in range(count)}  # no orphans
        for pod in pods:
            assert pod["spec"]["containers"][0]["image"] == TEST_IMAGE
        services = cluster.get("services", namespace=namespace)["items"]
        assert sorted(s["metadata"]["name"] for s in services) == sorted(owners)

        def all_ready() -> bool:
            items = cluster.get("inferencedeployments", namespace=namespace)["items"]
            return len(items) == count and all(
                d.get("status", {}).get("phase") == "Ready" for d in items
            )

        wait(cluster, all_ready, "every deployment Ready", timeout=60)
        # An interrupted creation is filled in, never mistaken for a failed gang.
        items = cluster.get("inferencedeployments", namespace=namespace)["items"]
        assert [d["status"]["restarts"] for d in items] == [0] * count


def test_only_the_lease_holder_acts(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, tmp_path: Path
):
    standby = OperatorProcess(cluster, tmp_path, identity="standby")
    try:
        standby.start_healthy()
        assert "standby" in standby.get(standby.health_port, "/healthz")
        assert "paraserve_operator_leader 0.0" in standby.get(standby.metrics_port, "/metrics")

        operator.stop()  # a clean stop releases the Lease: the standby takes over at once
        wait(
            cluster,
            lambda: (
                "paraserve_operator_leader 1.0" in standby.get(standby.metrics_port, "/metrics")
            ),
            "the standby leads",
            timeout=30,
        )
        with cluster.gpu_pool("1 x 8 x A100-80GB") as pool:
            cluster.apply(deployment("led", pool.node_selector), namespace=namespace)
            wait(
                cluster,
                lambda: len(p := pods_of(cluster, namespace, "led")) == 8 and running(p),
                "the new leader creates the ranks",
            )
    finally:
        standby.stop()
        if not operator.alive():
            operator.start_healthy()


def test_invalid_change_keeps_serving_and_valid_change_rolls(cluster: LocalCluster, namespace: str):
    with cluster.gpu_pool("1 x 8 x A100-80GB") as pool:
        cluster.apply(deployment("change", pool.node_selector), namespace=namespace)
        wait(cluster, lambda: phase(cluster, namespace, "change") == "Ready", "Ready")
        before = {p["metadata"]["uid"] for p in pods_of(cluster, namespace, "change")}
        assert len(before) == 8

        def patch(parallelism: dict[str, int]) -> None:
            body = json.dumps({"spec": {"parallelism": parallelism}})
            cluster.kubectl("patch", "infd", "change", "-n", namespace, "--type=merge", "-p", body)

        # PP=8 × TP=2 can never fit: refused with the code, and the running ranks keep serving.
        patch({"pipeline": 8, "tensor": 2, "sequence": 2})

        def refused() -> bool:
            body = infd(cluster, namespace, "change")
            validated = condition(body, "Validated")
            return (
                body["status"].get("observedGeneration") == body["metadata"]["generation"]
                and validated["status"] == "False"
                and validated["reason"] == "InsufficientGPUs"
            )

        wait(cluster, refused, "the change refused")
        time.sleep(2)
        assert {p["metadata"]["uid"] for p in pods_of(cluster, namespace, "change")} == before
        assert phase(cluster, namespace, "change") == "Ready"

        # PP=2 × TP=4 fits: validated, then the replica is replaced by the new layout.
        patch({"pipeline": 2, "tensor": 4, "sequence": 1})

        def rolled() -> bool:
            pods = pods_of(cluster, namespace, "change")
            return (
                len(pods) == 8
                and running(pods)
                and not {p["metadata"]["uid"] for p in pods} & before
                and {env_of(p)["PARASERVE_TP_SIZE"] for p in pods} == {"4"}
            )

        wait(cluster, rolled, "the new layout running")
        body = infd(cluster, namespace, "change")
        assert condition(body, "Validated")["status"] == "True"
        assert body["status"]["restarts"] == 0
        stages = [s["layers"] for s in body["status"]["plan"]["stages"]]
        assert stages == [[0, 40], [40, 80]]


def test_rejected_for_an_empty_pool_starts_when_nodes_join(cluster: LocalCluster, namespace: str):
    # Validation happens at every reconcile: a pool that grows turns a rejection into ranks.
    selector = {"paraserve.dev/pool": f"later-{namespace}"}
    cluster.apply(deployment("early", selector), namespace=namespace)
    wait(cluster, lambda: phase(cluster, namespace, "early") == "Rejected", "Rejected")
    assert condition(infd(cluster, namespace, "early"), "Validated")["reason"] == "NoMatchingNodes"
    with cluster.gpu_pool("1 x 8 x A100-80GB", name=f"later-{namespace}"):
        wait(
            cluster,
            lambda: len(p := pods_of(cluster, namespace, "early")) == 8 and running(p),
            "ranks once the pool exists",
        )
        assert condition(infd(cluster, namespace, "early"), "Validated")["status"] == "True"


def test_an_evicted_rank_restarts_its_gang(cluster: LocalCluster, namespace: str):
    with cluster.gpu_pool("1 x 8 x A100-80GB") as pool:
        small = {"parallelism": {"pipeline": 2, "tensor": 1, "sequence": 1}, "model": SMALL_MODEL}
        cluster.apply(deployment("evict", pool.node_selector, **small), namespace=namespace)
        wait(cluster, lambda: phase(cluster, namespace, "evict") == "Ready", "Ready")
        before = {p["metadata"]["uid"] for p in pods_of(cluster, namespace, "evict")}
        # What the kubelet writes when it evicts a pod under node pressure.
        failed = {"status": {"phase": "Failed", "reason": "Evicted", "message": "node pressure"}}
        cluster.kubectl(
            "patch", "pod", "evict-0-1", "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps(failed),
        )  # fmt: skip

        def recreated() -> bool:
            pods = pods_of(cluster, namespace, "evict")
            uids = {p["metadata"]["uid"] for p in pods}
            return len(pods) == 2 and running(pods) and not uids & before

        wait(cluster, recreated, "the gang recreated")
        wait(cluster, lambda: phase(cluster, namespace, "evict") == "Ready", "Ready again")
        assert infd(cluster, namespace, "evict")["status"]["restarts"] == 1
        wait(
            cluster,
            lambda: any(
                e["reason"] == "ReplicaRestart" and "evicted" in e["message"]
                for e in events(cluster, namespace, "evict")
            ),
            "a ReplicaRestart event naming the eviction",
            timeout=20,
        )
