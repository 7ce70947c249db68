"""Run the REAL engine behind each kwok rank pod, from the pod's own command and env.

kwok pods run no containers. For each rank pod bound to a node this harness starts the process
its container describes — the operator-rendered ``vllm serve …`` (or SGLang) command and args,
the pod's literal env — with the engine from its cached venv (e2e/engines/install.py), plus
these overrides, appended after the pod's own arguments (argparse takes the last) so the ranks
can meet on one machine:

* ``--master-addr 127.0.0.1 --master-port <one free port per replica>`` (the head's DNS name
  resolves nowhere outside a cluster; replicas would share 29500) and, for the head,
  ``--host 127.0.0.1 --port <a free port>``;
* ``VLLM_HOST_IP=127.0.0.1``, ``GLOO_SOCKET_IFNAME=lo`` (gloo on loopback),
  ``VLLM_CPU_OMP_THREADS_BIND=<one core>``, ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB), and
  ``OMP_NUM_THREADS=1`` (the ranks share this machine's cores).

The head is annotated ``paraserve.dev/metrics-address: 127.0.0.1:<its API port>``, which the
operator scrapes when told to. A process that exits while its pod lives makes the pod
``Failed``, as the kubelet does for ``restartPolicy: Never``: the operator then restarts the
replica as a gang. A pod that goes away has its process group stopped.

It also runs the DCGM-format STAND-IN (e2e/engines/dcgm_standin.py) behind a kwok pod labelled
like the GPU Operator's exporter (``app=nvidia-dcgm-exporter``): it reports each rank process's
resident memory as that pod's framebuffer use, so the operator's dcgm-exporter path runs end to
end. The figures are a process's memory, not a GPU's.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from e2e.cluster.controlplane import free_ports
from e2e.engines.dcgm_standin import GpuSample, StandIn, rss_mib
from e2e.engines.install import EngineEnv
from e2e.podrunner import BoundPod, PodProcess, PodRunner, annotate, pod_environ, spawn
from paraserve.api.labels import METRICS_ADDRESS_ANNOTATION

log = logging.getLogger("paraserve.enginerunner")

#: One real engine (a head and its peers) at a time on this machine.
ENGINE_LOCK = Path("/tmp/paraserve-vllm.lock")
STANDIN_POD = "dcgm-exporter-stand-in"
STANDIN_LABELS = {"app": "nvidia-dcgm-exporter", "paraserve.dev/stand-in": "dcgm"}


@dataclass(kw_only=True)
class EngineProcess(PodProcess):
    argv: list[str]
    api_port: int | None

    @property
    def address(self) -> str | None:
        return f"127.0.0.1:{self.api_port}" if self.api_port else None

    def healthy(self) -> bool:
        if self.address is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.address}/health", timeout=2) as answer:
                return int(answer.status) == 200
        except OSError:
            return False

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the process group this harness started, then SIGKILL after `grace`."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the engine's workers, too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def engine_argv(container: Mapping[str, Any], env: EngineEnv) -> list[str]:
    """The container's command and args, with the engine's program from its cached venv."""
    argv = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    if argv[:1] == ["vllm"]:
        return [str(env.bin / "vllm"), *argv[1:]]
    if argv[:1] and argv[0].startswith("python"):
        return [str(env.python), *argv[1:]]
    raise ValueError(f"not an engine command: {argv[:3]}")


class EngineRunner(PodRunner[EngineProcess]):
    """Keeps one real engine process per bound rank pod of `deployment` (a context manager)."""

    name = "enginerunner"
    title = "engine runner"

    def __init__(
        self,
        kubeconfig: str | Path,
        namespace: str,
        deployment: str,
        workdir: str | Path,
        engine: EngineEnv,
        *,
        poll_seconds: float = 0.5,
        gpu_exporter: bool = True,
    ) -> None:
        super().__init__(kubeconfig, namespace, deployment, workdir, poll_seconds=poll_seconds)
        self.engine = engine
        self.gpu_exporter = gpu_exporter
        self._cores = os.cpu_count() or 1
        self._started = 0
        self._engine_lock: IO[str] | None = None
        self._standin: StandIn | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def _opened(self) -> None:
        self._engine_lock = ENGINE_LOCK.open("w")
        fcntl.flock(self._engine_lock, fcntl.LOCK_EX)  # waits for another run's engines
        if self.gpu_exporter:
            self._standin = StandIn(free_ports(1)[0], self.gpu_samples).__enter__()
            self._create_standin_pod()

    def _closing(self) -> None:
        if self._standin is not None:
            self._standin.__exit__(None, None, None)
        if self._engine_lock is not None:
            fcntl.flock(self._engine_lock, fcntl.LOCK_UN)
            self._engine_lock.close()

    # -- what the tests read ------------------------------------------------------------

    def heads(self) -> dict[str, EngineProcess]:
        with self._lock:
            return {p.pod: p for p in self.processes.values() if p.rank == 0}

    def by_pod(self) -> dict[str, EngineProcess]:
        with self._lock:
            return {p.pod: p for p in self.processes.values()}

    def gpu_samples(self) -> list[GpuSample]:
        """The stand-in's page: each running rank process's resident memory, as its pod's GPU."""
        with self._lock:
            running = [p for p in self.processes.values() if p.process.poll() is None]
        return [
            GpuSample(self.namespace, p.pod, "rank", gpu, rss_mib(p.process.pid))
            for gpu, p in enumerate(sorted(running, key=lambda p: (p.replica, p.rank)))
        ]

    # -- the loop -------------------------------------------------------------------------

    def _startable(self, pod: Any) -> bool:
        return (pod.status.phase or "") not in ("Failed", "Succeeded")

    def _start(self, pod: BoundPod) -> EngineProcess:
        api_port = free_ports(1)[0] if pod.rank == 0 else None
        overrides = ["--master-addr", "127.0.0.1", "--master-port", str(pod.master_port)]
        if api_port is not None:
            overrides += ["--host", "127.0.0.1", "--port", str(api_port)]
        argv = [*engine_argv(pod.container, self.engine), *overrides]
        environ = pod_environ(pod.container)
        environ.update(
            {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(pod.master_port),
                "VLLM_HOST_IP": "127.0.0.1",
                "GLOO_SOCKET_IFNAME": "lo",
                "VLLM_CPU_OMP_THREADS_BIND": str(self._started % self._cores),
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "OMP_NUM_THREADS": "1",
            }
        )
        self._started += 1
        log_path = pod.directory / "engine.log"
        with log_path.open("ab") as output:
            output.write(f"$ {' '.join(argv)}\n".encode())
        # Its own process group: stop() ends the engine's workers with it.
        process = spawn(
            argv, {**os.environ, **environ}, log_path, cwd=pod.directory, own_group=True
        )
        started = EngineProcess(
            pod=pod.name,
            uid=pod.uid,
            replica=pod.replica,
            rank=pod.rank,
            argv=argv,
            process=process,
            log_path=log_path,
            api_port=api_port,
            environ=environ,
        )
        log.info("started %s (pid %d): %s", pod.name, process.pid, " ".join(argv))
        if started.address is not None:
            annotate(self._core, self.namespace, pod.name, started.address)
        return started

    def _exited(self, pod: Any, code: int) -> None:
        """What the kubelet writes when the rank's container exits (restartPolicy Never)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "status": {
                "phase": "Failed",
                "reason": "Error",
                "message": f"the engine exited with code {code}",
                "conditions": [
                    {"type": "Ready", "status": "False", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
                ],
            }
        }
        try:
            self._core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, status)
        except Exception as error:  # the pod may be gone already
            log.warning("could not fail %s: %s", pod.metadata.name, error)

    def _create_standin_pod(self) -> None:
        """A kwok pod that stands for the exporter: it carries the GPU Operator's label."""
        assert self._standin is not None
        nodes = self._core.list_node().items
        if not nodes:
            raise RuntimeError("no node to bind the dcgm-exporter stand-in to")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": STANDIN_POD,
                "labels": STANDIN_LABELS,
                "annotations": {METRICS_ADDRESS_ANNOTATION: f"127.0.0.1:{self._standin.port}"},
            },
            "spec": {
                "nodeName": nodes[0].metadata.name,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "stand-in", "image": "registry.invalid/dcgm-stand-in"}],
            },
        }
        self._core.create_namespaced_pod(self.namespace, pod)
