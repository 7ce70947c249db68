"""Run the rank pods of a deployment on a kwok cluster for real, as local `paraserve worker`s.

kwok pods run no containers. This harness watches a deployment's rank pods and, for each pod
bound to a node, starts `paraserve worker` as a local process with THAT pod's own environment
(read from its spec) and the topology from its ConfigMap (written to a file), with these
overrides so the ranks can meet on one machine:

* ``MASTER_ADDR=127.0.0.1`` and one free ``MASTER_PORT`` per replica (the pod's DNS name
  resolves nowhere outside a cluster), and ``GLOO_SOCKET_IFNAME=lo`` so gloo's connections
  between ranks stay on loopback too;
* one free ``PARASERVE_METRICS_PORT`` per rank (all ranks share one network namespace);
* ``PARASERVE_TOPOLOGY`` = the local copy of the ConfigMap's ``topology.json``;
* ``OMP_NUM_THREADS=1`` (the ranks share this machine's cores).

The command is ``python -m paraserve.cli worker`` followed by the container's ``args`` (a
leading ``paraserve`` / ``worker`` is dropped). Once started, the pod is annotated
``paraserve.dev/metrics-address: 127.0.0.1:<port>``, which the operator scrapes instead of the
pod IP. When the pod is deleted (or goes away), its process is stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from e2e.cluster.controlplane import free_ports
from paraserve.api import rank_env
from paraserve.api.labels import (
    LABEL_DEPLOYMENT,
    LABEL_RANK,
    LABEL_REPLICA,
    METRICS_ADDRESS_ANNOTATION,
)
from paraserve.api.topology_document import TOPOLOGY_KEY

log = logging.getLogger("paraserve.rankrunner")


def free_port() -> int:
    """A port below the ephemeral range, which client connections' source ports churn through."""
    return free_ports(1)[0]


def worker_args(container: Mapping[str, Any]) -> list[str]:
    """The container's args as arguments of `paraserve worker`."""
    args = [str(a) for a in container.get("args") or []]
    for word in ("paraserve", "worker"):
        if args[:1] == [word]:
            args = args[1:]
    return args


def pod_environ(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's literal env (valueFrom entries are not resolvable here and are skipped)."""
    return {
        str(e["name"]): str(e["value"])
        for e in container.get("env") or []
        if "name" in e and e.get("value") is not None
    }


@dataclass
class RankProcess:
    pod: str
    uid: str
    replica: int
    rank: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    environ: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class RankRunner:
    """Keeps one local worker process per bound rank pod of `deployment` (a context manager)."""

    def __init__(
        self,
        kubeconfig: str | Path,
        namespace: str,
        deployment: str,
        workdir: str | Path,
        *,
        poll_seconds: float = 0.5,
        python: str = sys.executable,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = str(kubeconfig)
        self.namespace = namespace
        self.deployment = deployment
        self.workdir = Path(workdir)
        self.poll_seconds = poll_seconds
        self.python = python
        self.base_environ = dict(os.environ if environ is None else environ)
        self.ranks: dict[str, RankProcess] = {}  # by pod uid
        self.exited: list[RankProcess] = []  # processes that ended while their pod lived
        self._master_ports: dict[str, int] = {}  # by uid of the replica's rank-0 pod
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rankrunner", daemon=True)
        self._lock = threading.Lock()
        self.errors: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> RankRunner:
        from kubernetes import client, config

        self._api_client = config.new_client_from_config(config_file=self.kubeconfig)
        self._core = client.CoreV1Api(self._api_client)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            for rank in self.ranks.values():
                rank.stop()
            self.ranks.clear()
        self._api_client.close()

    def addresses(self) -> dict[str, str]:
        """Pod name → the metrics address of its running process."""
        with self._lock:
            return {r.pod: r.address for r in self.ranks.values()}

    # -- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as error:  # the API server may be busy; try again next poll
                self.errors.append(repr(error))
                log.warning("rank runner: %s", error)
            self._stop.wait(self.poll_seconds)

    def sync(self) -> None:
        """One pass: start processes for new bound pods, stop those whose pod is gone."""
        pods = self._core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_DEPLOYMENT}={self.deployment}"
        ).items
        alive = {p.metadata.uid: p for p in pods if p.metadata.deletion_timestamp is None}
        with self._lock:
            for uid in [u for u in self.ranks if u not in alive]:
                rank = self.ranks.pop(uid)
                rank.stop()
            for rank in self.ranks.values():
                if rank.process.poll() is not None and rank not in self.exited:
                    self.exited.append(rank)
            for pod in alive.values():
                if pod.metadata.uid in self.ranks or not pod.spec.node_name:
                    continue
                key = self._replica_key(pod, alive.values())
                if key is None:
                    continue  # rank 0 of its replica is not there yet: its port is unknown
                self._start(pod, key)
            # A recreated replica has a new rank 0, hence a new port: old ranks never meet it.
            for key in [k for k in self._master_ports if k not in alive]:
                del self._master_ports[key]

    def _replica_key(self, pod: Any, pods: Any) -> str | None:
        replica = pod.metadata.labels.get(LABEL_REPLICA)
        for other in pods:
            labels = other.metadata.labels or {}
            if labels.get(LABEL_REPLICA) == replica and labels.get(LABEL_RANK) == "0":
                return str(other.metadata.uid)
        return None

    def _topology_file(self, pod: dict[str, Any], pod_dir: Path) -> Path:
        """The topology the pod mounts (one ConfigMap per template version)."""
        volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap"))
        configmap = self._core.read_namespaced_config_map(
            volume["configMap"]["name"], self.namespace
        )
        path = pod_dir / TOPOLOGY_KEY
        path.write_text(json.dumps(json.loads(configmap.data[TOPOLOGY_KEY]), indent=1))
        return path

    def _start(self, pod: Any, replica_key: str) -> None:
        body = self._api_client.sanitize_for_serialization(pod)
        container = body["spec"]["containers"][0]
        name = body["metadata"]["name"]
        pod_dir = self.workdir / name / body["metadata"]["uid"][:8]
        pod_dir.mkdir(parents=True, exist_ok=True)
        metrics_port = free_port()
        master_port = self._master_ports.setdefault(replica_key, free_port())
        environ = pod_environ(container)
        environ.update(
            {
                rank_env.MASTER_ADDR: "127.0.0.1",
                rank_env.MASTER_PORT: str(master_port),
                # gloo's pairs on loopback too, not on the address the hostname resolves to.
                "GLOO_SOCKET_IFNAME": "lo",
                rank_env.METRICS_PORT: str(metrics_port),
                rank_env.TOPOLOGY: str(self._topology_file(body, pod_dir)),
                "OMP_NUM_THREADS": "1",
            }
        )
        # Last, so it wins over the pod's args: the harness's ranks listen on loopback only.
        command = [
            *(self.python, "-m", "paraserve.cli", "worker"),
            *(*worker_args(container), "--metrics-addr", "127.0.0.1"),
        ]
        log_path = pod_dir / "worker.log"
        with log_path.open("ab") as output:
            process = subprocess.Popen(
                command,
                env={**self.base_environ, **environ},
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=pod_dir,
            )
        labels = body["metadata"].get("labels") or {}
        rank = RankProcess(
            pod=name,
            uid=body["metadata"]["uid"],
            replica=int(labels.get(LABEL_REPLICA, 0)),
            rank=int(labels.get(LABEL_RANK, 0)),
            metrics_port=metrics_port,
            process=process,
            log_path=log_path,
            environ=environ,
        )
        self.ranks[rank.uid] = rank
        log.info("started %s (pid %d) metrics %s", name, process.pid, rank.address)
        annotate(self._core, self.namespace, name, rank.address)


def annotate(core: Any, namespace: str, pod: str, address: str | None) -> None:
    """Point the operator's scraper at `address` (None removes the override)."""
    patch = {"metadata": {"annotations": {METRICS_ADDRESS_ANNOTATION: address}}}
    try:
        core.patch_namespaced_pod(pod, namespace, patch)
    except Exception as error:  # the pod may be gone already; the next pass tells
        log.warning("could not annotate %s: %s", pod, error)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m e2e.rankrunner KUBECONFIG NAMESPACE DEPLOYMENT [WORKDIR]`, until Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (3, 4):
        print(main.__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = Path(args[3]) if len(args) == 4 else Path.cwd() / "rankrunner"
    from kubernetes.config.config_exception import ConfigException

    try:
        with contextlib.suppress(KeyboardInterrupt), RankRunner(args[0], args[1], args[2], workdir):
            threading.Event().wait()
    except ConfigException as error:
        print(f"python -m e2e.rankrunner: {args[0]}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
