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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster.controlplane import free_ports
from e2e.podrunner import BoundPod, PodProcess, PodRunner, annotate, pod_environ, spawn
from paraserve.api import rank_env
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


@dataclass(kw_only=True)
class RankProcess(PodProcess):
    metrics_port: int

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


class RankRunner(PodRunner[RankProcess]):
    """Keeps one local worker process per bound rank pod of `deployment` (a context manager)."""

    name = "rankrunner"
    title = "rank runner"

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
        super().__init__(kubeconfig, namespace, deployment, workdir, poll_seconds=poll_seconds)
        self.python = python
        self.base_environ = dict(os.environ if environ is None else environ)

    @property
    def ranks(self) -> dict[str, RankProcess]:
        """The running processes by pod uid."""
        return self.processes

    def addresses(self) -> dict[str, str]:
        """Pod name → the metrics address of its running process."""
        with self._lock:
            return {r.pod: r.address for r in self.ranks.values()}

    def _topology_file(self, pod: dict[str, Any], pod_dir: Path) -> Path:
        """The topology the pod mounts (one ConfigMap per template version)."""
        volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap"))
        configmap = self._core.read_namespaced_config_map(
            volume["configMap"]["name"], self.namespace
        )
        path = pod_dir / TOPOLOGY_KEY
        path.write_text(json.dumps(json.loads(configmap.data[TOPOLOGY_KEY]), indent=1))
        return path

    def _start(self, pod: BoundPod) -> RankProcess:
        metrics_port = free_port()
        environ = pod_environ(pod.container)
        environ.update(
            {
                rank_env.MASTER_ADDR: "127.0.0.1",
                rank_env.MASTER_PORT: str(pod.master_port),
                # gloo's pairs on loopback too, not on the address the hostname resolves to.
                "GLOO_SOCKET_IFNAME": "lo",
                rank_env.METRICS_PORT: str(metrics_port),
                rank_env.TOPOLOGY: str(self._topology_file(pod.body, pod.directory)),
                "OMP_NUM_THREADS": "1",
            }
        )
        # Last, so it wins over the pod's args: the harness's ranks listen on loopback only.
        command = [
            *(self.python, "-m", "paraserve.cli", "worker"),
            *(*worker_args(pod.container), "--metrics-addr", "127.0.0.1"),
        ]
        log_path = pod.directory / "worker.log"
        process = spawn(command, {**self.base_environ, **environ}, log_path, cwd=pod.directory)
        rank = RankProcess(
            pod=pod.name,
            uid=pod.uid,
            replica=pod.replica,
            rank=pod.rank,
            metrics_port=metrics_port,
            process=process,
            log_path=log_path,
            environ=environ,
        )
        log.info("started %s (pid %d) metrics %s", pod.name, process.pid, rank.address)
        annotate(self._core, self.namespace, pod.name, rank.address)
        return rank


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
