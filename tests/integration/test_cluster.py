"""The local control plane itself: GPU nodes, scheduling, controllers, CRDs, tools, cleanup."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e import gpunodes
from e2e.cluster import processes
from e2e.cluster.components import HELM_VERSION, KUBERNETES_VERSION
from e2e.cluster.local import LocalCluster

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "inferencedeployments.paraserve.dev.yaml"


def gpu_pod(name: str, gpus: int, node_selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": node_selector,
            "containers": [
                {
                    "name": "rank",
                    "image": "registry.invalid/paraserve/worker:test",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    with cluster.namespace() as name:
        yield name


def test_gpu_nodes_are_listed_with_their_capacity(cluster: LocalCluster) -> None:
    with cluster.gpu_pool("2 x 4 x H100-80GB", taints=["dedicated=llm:NoSchedule"]) as pool:
        nodes = cluster.get("nodes")["items"]
        ours = {n["metadata"]["name"]: n for n in nodes if n["metadata"]["name"] in pool.nodes}
        assert sorted(ours) == sorted(pool.nodes) and len(ours) == 2
        for node in ours.values():
            labels = node["metadata"]["labels"]
            assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"
            assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
            assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB"
            assert labels["nvidia.com/gpu.memory"] == "81559"
            assert labels["nvidia.com/gpu.count"] == "4"
            assert labels["paraserve.dev/pool"] == pool.name
            assert labels["kubernetes.io/hostname"] == node["metadata"]["name"]
            assert {"key": "dedicated", "value": "llm", "effect": "NoSchedule"} in node["spec"][
                "taints"
            ]
            ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
            assert ready and ready[0]["status"] == "True"
        table = cluster.kubectl(
            "get",
            "nodes",
            "-l",
            pool.label_selector,
            "-o",
            "custom-columns=NAME:.metadata.name,GPU:.status.capacity.nvidia\\.com/gpu",
        ).stdout
        assert all(f"{name}   4" in table for name in pool.nodes), table

        # The Python client sees the same nodes.
        from kubernetes import client

        with cluster.api_client() as api:
            listed = client.CoreV1Api(api).list_node(label_selector=pool.label_selector)
            gpus = {
                (n.status.allocatable or {})["nvidia.com/gpu"] for n in listed.items if n.status
            }
            assert gpus == {"4"}
    left = {n["metadata"]["name"] for n in cluster.get("nodes")["items"]}
    assert not left & set(pool.nodes)


def test_gpu_pod_is_scheduled_onto_a_gpu_node_and_runs(
    cluster: LocalCluster, namespace: str
) -> None:
    with cluster.gpu_pool("1 x 8 x A100-80GB") as pool:
        cluster.apply(gpu_pod("rank-0", 1, pool.node_selector), namespace=namespace)
        cluster.kubectl(
            "-n",
            namespace,
            "wait",
            "pod/rank-0",
            "--for=jsonpath={.status.phase}=Running",
            "--timeout=60s",
        )
        pod = cluster.get("pod", "rank-0", namespace)
        assert pod["spec"]["nodeName"] in pool.nodes
        cluster.kubectl("-n", namespace, "delete", "pod", "rank-0", "--timeout=60s")


def test_pod_needing_more_gpus_than_any_node_stays_pending(
    cluster: LocalCluster, namespace: str
) -> None:
    with cluster.gpu_pool("2 x 4 x H100-80GB") as pool:
        cluster.apply(gpu_pod("too-big", 16, pool.node_selector), namespace=namespace)

        def failed_scheduling() -> list[dict[str, Any]]:
            events = cluster.get("events", namespace=namespace)["items"]
            return [
                e
                for e in events
                if e["reason"] == "FailedScheduling" and e["involvedObject"]["name"] == "too-big"
            ]

        events = cluster.wait_for(failed_scheduling, timeout=60, what="FailedScheduling event")
        assert "nvidia.com/gpu" in events[0]["message"], events[0]["message"]
        pod = cluster.get("pod", "too-big", namespace)
        assert pod["status"]["phase"] == "Pending"
        assert not pod["spec"].get("nodeName")


def test_garbage_collector_deletes_dependents(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    owner = cluster.get("configmap", "owner", namespace)
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    cluster.apply(dependent)
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner")
    cluster.wait_for(
        lambda: (
            cluster.kubectl(
                "-n", namespace, "get", "configmap", "dependent", check=False
            ).returncode
            != 0
        ),
        timeout=60,
        what="garbage collection of the dependent",
    )


def test_deployment_pods_run_on_gpu_nodes_and_go_with_it(
    cluster: LocalCluster, namespace: str
) -> None:
    with cluster.gpu_pool("2 x 4 x H100-80GB") as pool:
        template = gpu_pod("ignored", 1, pool.node_selector)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "ranks", "namespace": namespace},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "ranks"}},
                "template": {"metadata": {"labels": {"app": "ranks"}}, "spec": template["spec"]},
            },
        }
        cluster.apply(deployment)
        cluster.kubectl("-n", namespace, "rollout", "status", "deployment/ranks", "--timeout=90s")
        pods = cluster.get("pods", namespace=namespace)["items"]
        assert len(pods) == 3
        assert all(p["spec"]["nodeName"] in pool.nodes for p in pods)
        # kwok's --cidr: the operator scrapes pod IPs, which must never leave this machine.
        ips = [p["status"].get("podIP") for p in pods]
        assert all(ip and ipaddress.ip_address(ip).is_loopback for ip in ips), ips
        cluster.kubectl("-n", namespace, "delete", "deployment", "ranks")
        cluster.wait_for(
            lambda: not cluster.get("pods", namespace=namespace)["items"],
            timeout=90,
            what="pods of the deleted deployment to go",
        )


def test_pods_on_gpunodes_get_their_nodes_loopback_cidr(
    cluster: LocalCluster, namespace: str
) -> None:
    name = f"loop-{uuid.uuid4().hex[:6]}"
    nodes = gpunodes.pool_nodes(name, "1 x 2 x A100-80GB")
    selector = {"paraserve.dev/pool": name}
    cluster.apply(*nodes)
    try:
        cluster.kubectl("wait", "node", "-l", f"paraserve.dev/pool={name}",
                        "--for=condition=Ready", "--timeout=60s")  # fmt: skip
        cluster.apply(gpu_pod("rank", 1, selector), namespace=namespace)
        pod = cluster.wait_for(
            lambda: cluster.get("pod", "rank", namespace).get("status", {}).get("podIP"),
            timeout=60,
            what="the pod's IP",
        )
        network = ipaddress.ip_network(nodes[0]["spec"]["podCIDR"])
        assert network.subnet_of(ipaddress.ip_network("127.0.0.0/8"))
        assert ipaddress.ip_address(pod) in network, (pod, network)
    finally:
        cluster.kubectl("delete", "node", "-l", f"paraserve.dev/pool={name}", "--ignore-not-found")


def test_project_crd_installs_and_explains(cluster: LocalCluster) -> None:
    assert CRD.is_file(), f"{CRD.relative_to(REPO)} is missing: run `make crd`"
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl(
        "wait",
        "crd/inferencedeployments.paraserve.dev",
        "--for=condition=Established",
        "--timeout=60s",
    )

    def explained() -> str:
        result = cluster.kubectl("explain", "inferencedeployments.spec", check=False)
        return result.stdout if result.returncode == 0 else ""

    # The OpenAPI document is republished a moment after the CRD is established.
    text = cluster.wait_for(explained, timeout=60, what="kubectl explain")
    assert "KIND:" in text and "InferenceDeployment" in text
    for field in ("model", "parallelism"):
        assert field in text, text


def test_kubectl_and_helm_report_the_pinned_versions(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    cluster.kubectl("api-resources")  # fills kubectl's discovery cache
    port = cluster.server.rsplit(":", 1)[1]
    assert not (Path.home() / ".kube" / "cache" / "discovery" / f"127.0.0.1_{port}").exists()
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == KUBERNETES_VERSION

    helm_version = cluster.helm("version", "--template", "{{ .Version }}").stdout.strip()
    assert helm_version == HELM_VERSION

    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    major_minor = ".".join(KUBERNETES_VERSION.split(".")[:2])
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: '>={major_minor}.0-0'\n"
    )
    (chart / "templates" / "cm.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata: {name: probe}
            data: {kubeVersion: "{{ .Capabilities.KubeVersion.Version }}"}
            """
        )
    )
    # Offline rendering uses the version compiled into helm; it must not be an old default.
    rendered = yaml.safe_load(cluster.helm("template", "probe", str(chart)).stdout)
    assert rendered["data"]["kubeVersion"].startswith(major_minor)
    # Installing asks the server, whose version must satisfy the chart's kubeVersion.
    cluster.helm("install", "probe", str(chart), "-n", namespace, "--wait", "--timeout=60s")
    installed = cluster.get("configmap", "probe", namespace)
    assert installed["data"]["kubeVersion"] == KUBERNETES_VERSION
    cluster.helm("uninstall", "probe", "-n", namespace)


def test_footprint_is_modest(cluster: LocalCluster) -> None:
    rss = cluster.rss_bytes()
    assert set(rss) >= {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    total_mib = sum(rss.values()) / 2**20
    print(f"cluster RSS {total_mib:.0f} MiB: {rss}")
    assert total_mib < 4096


# -- no leftovers when the process that owns a cluster dies ------------------------------


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _start_holding_session(tmp_path: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """A pytest run, in a child process, that holds a cluster until killed."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text("from e2e.cluster.fixtures import cluster  # noqa\n")
    (tmp_path / "test_hold.py").write_text(
        textwrap.dedent(
            """\
            import json, os, time
            from pathlib import Path

            def test_hold(cluster):
                info = {"pids": cluster.pids(), "workdir": str(cluster.workdir)}
                Path(os.environ["HOLD_FILE"]).write_text(json.dumps(info))
                time.sleep(600)
            """
        )
    )
    hold = tmp_path / "hold.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOLD_FILE": str(hold)}
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not hold.is_file():
        if session.poll() is not None or time.monotonic() > deadline:
            session.kill()
            pytest.fail("the child session did not start its cluster")
        time.sleep(0.5)
    time.sleep(0.2)
    info: dict[str, Any] = json.loads(hold.read_text())
    assert set(info["pids"]) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }
    return session, info


def _wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if processes.start_time(p) is not None]
        time.sleep(0.2)
    return alive


def test_sigint_of_the_test_run_stops_everything(tmp_path: Path) -> None:
    session, info = _start_holding_session(tmp_path)
    session.send_signal(signal.SIGINT)
    session.wait(timeout=60)
    assert _wait_gone(list(info["pids"].values())) == []
    assert _processes_mentioning(info["workdir"]) == []
    assert not Path(info["workdir"]).exists()


def test_sigkill_of_the_test_run_leaves_nothing_after_next_start(tmp_path: Path) -> None:
    session, info = _start_holding_session(tmp_path)
    session.send_signal(signal.SIGKILL)
    session.wait(timeout=10)
    # The kernel kills the components with their parent (PR_SET_PDEATHSIG) ...
    assert _wait_gone(list(info["pids"].values())) == []
    assert _processes_mentioning(info["workdir"]) == []
    # ... and the next start removes what the dead run left on disk.
    processes.reap_stale()
    assert not Path(info["workdir"]).exists()
