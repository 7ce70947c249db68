"""The cluster the end-to-end suite runs against, with paraserve installed and a GPU pool.

PARASERVE_E2E_CLUSTER picks it:

* `local` (default): this session starts the local control plane (e2e/cluster), `helm install`s
  the chart (replicas 0: nothing runs containers here), makes a pool of 2 kwok nodes × 4 GPUs,
  and runs `paraserve operator` as a local process authenticated as the chart's ServiceAccount.
  Ranks that must really run (the measured test) run as local processes (e2e/rankrunner.py).
* `kind` (or `existing`): the cluster of $KUBECONFIG, where paraserve is installed already
  (e2e/kind/up.sh does it) and nodes labelled `paraserve.dev/pool=e2e` have 4 GPUs each; rank
  pods run for real, in containers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from e2e import gpunodes, install
from e2e.tests.kube import Kube

POOL = "e2e"
POOL_SPEC = "2 x 4 x A100-80GB"
# Fast measurement for a test: scrape every 2 s over a 10 s window.
MEASURE_ENV = {
    "PARASERVE_MEASURE_INTERVAL": "2",
    "PARASERVE_MEASURE_WINDOW": "10",
    "PARASERVE_MEASURE_TIMEOUT": "2",
    "PARASERVE_MEASURE_REFRESH": "30",
    # On the local control plane the harness's ranks serve where the pod annotation says.
    "PARASERVE_MEASURE_ADDRESS_ANNOTATION": "true",
}


@dataclass(frozen=True)
class Target:
    kube: Kube
    #: Where the operator is installed (its Lease lives there).
    operator_namespace: str
    #: True where rank pods run real containers (kind); False on kwok, where a test that needs
    #: real ranks runs them itself as local processes.
    runs_containers: bool
    #: The local operator's log (local mode), for failure messages.
    operator_log: Path | None = None

    def operator_log_tail(self, lines: int = 40) -> str:
        if self.operator_log is None:
            return self.kube.kubectl(
                "logs",
                "-n",
                self.operator_namespace,
                "deployment/paraserve",
                f"--tail={lines}",
                check=False,
            ).stdout
        text = self.operator_log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass(frozen=True)
class Pool:
    name: str
    nodes: list[str]
    gpus_per_node: int

    @property
    def node_selector(self) -> dict[str, str]:
        return {"paraserve.dev/pool": self.name}


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _local_target(workdir: Path) -> Iterator[Target]:
    from e2e.cluster import build
    from e2e.cluster.local import running_cluster

    if missing := build.missing():
        pytest.fail(
            f"cluster binaries missing ({', '.join(missing)}): run `make cluster-binaries`",
            pytrace=False,
        )
    with running_cluster() as cluster:
        kube = Kube(cluster.kubeconfig, env=cluster.env)
        namespace = install.NAMESPACE
        kube.kubectl("create", "namespace", namespace)
        kube.kubectl(
            "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
        )
        cluster.helm(
            "install", "paraserve", str(install.CHART), "--namespace", namespace,
            "--set", "replicaCount=0", "--set", "webhook.enabled=true",
        )  # fmt: skip
        kubeconfig = install.service_account_kubeconfig(
            cluster.kubeconfig, namespace, "paraserve", workdir / "operator.kubeconfig",
            env=cluster.env,
        )  # fmt: skip
        log = workdir / "operator.log"
        port = _free_port()
        with install.local_operator(
            kubeconfig,
            log,
            lease_namespace=namespace,
            extra=[
                "--webhook=self-managed",
                "--webhook-host=127.0.0.1",
                "--webhook-address=127.0.0.1",
                f"--webhook-port={port}",
            ],
            env={**cluster.env, **MEASURE_ENV},
        ):
            yield Target(kube, namespace, runs_containers=False, operator_log=log)


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    mode = os.environ.get("PARASERVE_E2E_CLUSTER", "local")
    if mode == "local":
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # SIGTERM unwinds like Ctrl-C: the operator and the control plane stop in order.
            signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        with _local_target(tmp_path_factory.mktemp("e2e-local")) as local:
            yield local
        return
    if mode not in ("kind", "existing"):
        pytest.fail(f"PARASERVE_E2E_CLUSTER={mode!r}: want local, kind or existing")
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.fail(f"PARASERVE_E2E_CLUSTER={mode} needs KUBECONFIG", pytrace=False)
    kube = Kube(Path(kubeconfig.split(os.pathsep)[0]))
    namespace = os.environ.get("PARASERVE_E2E_OPERATOR_NAMESPACE", install.NAMESPACE)
    yield Target(kube, namespace, runs_containers=True)


@pytest.fixture(scope="session")
def pool(target: Target) -> Iterator[Pool]:
    """2 nodes × 4 GPUs labelled paraserve.dev/pool=e2e (made here on `local`)."""
    kube = target.kube
    made = False
    if not target.runs_containers:
        kube.apply(*gpunodes.pool_nodes(POOL, POOL_SPEC))
        made = True
    selector = f"paraserve.dev/pool={POOL}"
    kube.kubectl("wait", "node", "-l", selector, "--for=condition=Ready", "--timeout=120s")
    nodes = kube.items("nodes", selector=selector)
    gpus = {int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in nodes}
    assert len(nodes) == 2 and gpus == {4}, f"pool {POOL}: want 2 nodes × 4 GPUs, got {gpus}"
    try:
        yield Pool(POOL, sorted(n["metadata"]["name"] for n in nodes), 4)
    finally:
        if made:
            kube.kubectl("delete", "node", "-l", selector, "--ignore-not-found", check=False)


@pytest.fixture
def namespace(target: Target, pool: Pool) -> Iterator[str]:
    """A fresh namespace; gone (with its pods, so their GPUs are free) after the test."""
    kube = target.kube
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    kube.wait_for(
        lambda: (
            kube.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
            == 0
        ),
        timeout=60,
        what=f"service account default in {name}",
    )
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
        kube.wait_for(
            lambda: kube.kubectl("get", "namespace", name, check=False).returncode != 0,
            timeout=120,
            what=f"namespace {name} deleted",
        )
