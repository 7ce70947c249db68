"""What the operator benchmarks on the local control plane share: an operator process with its own
audited user, many deployments at once, and reading their statuses and pods."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e2e.cluster.local import LocalCluster  # noqa: E402

CRD = ROOT / "crds" / "inferencedeployments.paraserve.dev.yaml"
IMAGE = "registry.invalid/paraserve/worker:bench"
SMALL_MODEL = {"name": "meta-llama/Llama-2-7b-hf", "dtype": "float16", "parameters": "7B"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_crd(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD.stem}")


class Operator:
    """`paraserve operator` as the user `paraserve-operator:<identity>`, whose every request
    the API server's audit log records; started, SIGKILLed and started again at will."""

    def __init__(
        self,
        cluster: LocalCluster,
        log_path: Path,
        *extra: str,
        identity: str = "bench",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.identity = identity
        self.user = f"paraserve-operator:{identity}"
        self.kubeconfig = cluster.user_kubeconfig(self.user)
        self.log_path = log_path
        self.extra = extra
        self.env = dict(env or {})
        self.health_port = _free_port()
        self.metrics_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            sys.executable, "-m", "paraserve.cli", "operator",
            "--kubeconfig", str(self.kubeconfig), "--identity", self.identity,
            "--leader-election-namespace", "default", "--worker-image", IMAGE,
            "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
            "--health-address", "127.0.0.1", "--health-port", str(self.health_port),
            "--log-format", "plain", *self.extra,
        ]  # fmt: skip
        env = {**os.environ, **self.cluster.env, "KUBECONFIG": str(self.kubeconfig)}
        env.update({"PYTHONUNBUFFERED": "1", **self.env})
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "operator exited"
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("operator /healthz")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str) -> float | None:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        ]
        return sum(values) if values else None


def deployment(
    name: str, selector: Mapping[str, str], pipeline: int, tensor: int, replicas: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "paraserve.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": dict(SMALL_MODEL),
            "parallelism": {"pipeline": pipeline, "tensor": tensor, "sequence": 1},
            "replicas": replicas,
            "gpu": {"memory": "80G"},
            "placement": {"nodeSelector": dict(selector)},
            "worker": {"image": IMAGE},
        },
    }


def apply_all(cluster: LocalCluster, bodies: Sequence[Mapping[str, Any]], namespace: str) -> None:
    for start in range(0, len(bodies), 50):
        cluster.apply(*bodies[start : start + 50], namespace=namespace)


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json", timeout=300).stdout)


def deployments(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    return list(get_json(cluster, "inferencedeployments", "-n", namespace)["items"])


def pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    return list(get_json(cluster, "pods", "-n", namespace)["items"])


def ready(body: Mapping[str, Any]) -> bool:
    status = body.get("status") or {}
    return status.get("phase") == "Ready" and status.get("observedGeneration") == body[
        "metadata"
    ].get("generation")


def wait_all_ready(
    cluster: LocalCluster, namespace: str, count: int, timeout: float, what: str = "Ready"
) -> float:
    """Seconds until `count` deployments are Ready for their generation."""
    started = time.monotonic()
    shown = -1
    while True:
        done = sum(ready(d) for d in deployments(cluster, namespace))
        if done != shown:
            print(f"  {done}/{count} {what} after {time.monotonic() - started:.0f} s", flush=True)
            shown = done
        if done >= count:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{done}/{count} deployments {what} after {timeout:.0f} s")
        time.sleep(3)


def table(rows: Iterable[tuple[str, object]]) -> str:
    rows = list(rows)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)
