"""Fixtures that run `paraserve operator` as a real subprocess against the local cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.cluster.local import LocalCluster
from tests.builders import review_document

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "inferencedeployments.paraserve.dev.yaml"
TEST_IMAGE = "registry.invalid/paraserve/worker:test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """One `paraserve operator` process; killed and restarted by tests that need it."""

    def __init__(
        self, cluster: LocalCluster, log_dir: Path, *extra: str, identity: str = "integration-tests"
    ) -> None:
        self.cluster = cluster
        self.identity = identity
        self.log_path = log_dir / f"operator-{identity}.log"
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def args(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "paraserve.cli",
            "operator",
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            # A fixed identity takes its own Lease back at once after a SIGKILL.
            "--identity",
            self.identity,
            "--leader-election-namespace",
            "default",
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            "--health-address",
            "127.0.0.1",
            "--health-port",
            str(self.health_port),
            "--worker-image",
            TEST_IMAGE,
            "--restart-backoff",
            "1",
            "--resync",
            "15",
            *self.extra,
        ]

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        env = {**os.environ, **self.cluster.env, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts + 1}\n".encode())
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crashed or evicted operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode())

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            assert self.alive(), f"operator exited:\n{self.log_tail()}"
            try:
                self.get(self.health_port, "/healthz")
                return True
            except OSError:
                return False

        self.cluster.wait_for(healthy, timeout=timeout, what="operator /healthz")

    def start_healthy(self, attempts: int = 3) -> None:
        """Start and wait for /healthz; other processes may grab a free port first: retry."""
        for attempt in range(attempts):
            self.start()
            try:
                self.wait_healthy()
                return
            except AssertionError:
                if "Address already in use" not in self.log_tail(5) or attempt == attempts - 1:
                    raise
                self.metrics_port, self.health_port = _free_port(), _free_port()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_lines(self, *words: str, limit: int = 40) -> str:
        """The log lines that name any of `words` (the last `limit`), for a failure's message."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        found = [line for line in lines if any(w in line for w in words)]
        return "\n".join(found[-limit:]) or f"(no log line names {', '.join(words)})"


@pytest.fixture(scope="session")
def inference_crd(cluster: LocalCluster) -> Path:
    """The InferenceDeployment CRD from the repository, established."""
    result = cluster.kubectl("apply", "--server-side", "-f", str(CRD), check=False)
    if result.returncode != 0:
        pytest.fail(f"the API server refused {CRD.name}: {result.stderr.strip()}", pytrace=False)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD.stem}")
    return CRD


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, inference_crd: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`paraserve operator`, cluster-wide, for one test module (so it never serves, beside
    their own operator, the namespaces of other modules' tests)."""
    process = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    process.start_healthy()
    try:
        yield process
    finally:
        process.stop()


def deployment(name: str, pool_selector: dict[str, str], **spec: Any) -> dict[str, Any]:
    """An InferenceDeployment on a pool; `spec` keys replace the defaults (review scenario)."""
    body = review_document(
        **{
            "replicas": 1,
            "gpu": {"memory": "80G", "maxMemoryUtilization": 0.85},
            "placement": {"nodeSelector": dict(pool_selector)},
        }
        | spec
    )
    return {
        "apiVersion": "paraserve.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": body,
    }


def pods_of(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    listing = cluster.get("pods", namespace=namespace)
    return [
        p
        for p in listing["items"]
        if p["metadata"].get("labels", {}).get("paraserve.dev/deployment") == name
    ]


def infd(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get("inferencedeployments", name, namespace=namespace)


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def running(pods: list[dict[str, Any]]) -> bool:
    return bool(pods) and all(
        p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        for p in pods
    )


def dump(cluster: LocalCluster, namespace: str) -> str:
    """What a failing test prints: the deployments' status and the pods."""
    deployments = cluster.get("inferencedeployments", namespace=namespace)["items"]
    status = {d["metadata"]["name"]: d.get("status", {}) for d in deployments}
    pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    return json.dumps(status, indent=1)[:4000] + "\n" + pods


def wait(cluster: LocalCluster, condition: Any, what: str, timeout: float = 90) -> Any:
    return cluster.wait_for(condition, timeout=timeout, interval=0.5, what=what)
