"""What the rank runner and the engine runner share: one local process per bound rank pod.

kwok pods run no containers. A runner plays the kubelet for one deployment's rank pods on this
machine: every poll it lists them, starts a process for each pod bound to a node once rank 0
of its replica is there (the replica's ranks meet at one port, chosen for rank 0's replica),
notes the processes that exit while their pod lives, and stops those whose pod has gone. What
a process runs, and how it is stopped, is each runner's own (e2e/rankrunner.py,
e2e/enginerunner.py).
"""

from __future__ import annotations

import abc
import logging
import subprocess
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from e2e.cluster.controlplane import free_ports
from paraserve.api.labels import (
    LABEL_DEPLOYMENT,
    LABEL_RANK,
    LABEL_REPLICA,
    METRICS_ADDRESS_ANNOTATION,
)

log = logging.getLogger("paraserve.podrunner")


@dataclass(kw_only=True)
class PodProcess(abc.ABC):
    """The local process of one rank pod."""

    pod: str
    uid: str
    replica: int
    rank: int
    process: subprocess.Popen[bytes]
    log_path: Path
    environ: dict[str, str] = field(default_factory=dict)  # what the runner set, not inherited

    @abc.abstractmethod
    def stop(self) -> None:
        """End the process (and whatever it started)."""


@dataclass(frozen=True)
class BoundPod:
    """A rank pod bound to a node, as a plain dict, and where its process is to run."""

    body: dict[str, Any]
    directory: Path  # the process's working directory: its log and files
    master_port: int  # its replica's rendezvous port

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    @property
    def replica(self) -> int:
        return int(self._labels.get(LABEL_REPLICA, 0))

    @property
    def rank(self) -> int:
        return int(self._labels.get(LABEL_RANK, 0))

    @property
    def container(self) -> dict[str, Any]:
        container: dict[str, Any] = self.body["spec"]["containers"][0]
        return container

    @property
    def _labels(self) -> Mapping[str, str]:
        return self.body["metadata"].get("labels") or {}


P = TypeVar("P", bound=PodProcess)


class PodRunner(abc.ABC, Generic[P]):
    """Keeps one local process per bound rank pod of `deployment` (a context manager)."""

    #: Its thread's name, and its logger's (``paraserve.<name>``).
    name: ClassVar[str]
    #: What its warnings call it.
    title: ClassVar[str]

    def __init__(
        self,
        kubeconfig: str | Path,
        namespace: str,
        deployment: str,
        workdir: str | Path,
        *,
        poll_seconds: float,
    ) -> None:
        self.kubeconfig = str(kubeconfig)
        self.namespace = namespace
        self.deployment = deployment
        self.workdir = Path(workdir)
        self.poll_seconds = poll_seconds
        self.processes: dict[str, P] = {}  # by pod uid
        self.exited: list[P] = []  # ended while their pod lived
        self.errors: list[str] = []
        self.log = logging.getLogger(f"paraserve.{self.name}")
        self._master_ports: dict[str, int] = {}  # by uid of the replica's rank-0 pod
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._lock = threading.Lock()

    # -- what each runner does its own way ------------------------------------------------

    @abc.abstractmethod
    def _start(self, pod: BoundPod) -> P:
        """Start the pod's process (its directory exists)."""

    def _opened(self) -> None:
        """After the client is made, before the first poll."""

    def _closing(self) -> None:
        """After every process is stopped, before the client is closed."""

    def _startable(self, pod: Any) -> bool:
        """Whether a bound pod gets a process."""
        return True

    def _exited(self, pod: Any, code: int) -> None:
        """A pod's process ended with `code` while the pod lives."""

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        from kubernetes import client, config

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._api_client = config.new_client_from_config(config_file=self.kubeconfig)
        self._core = client.CoreV1Api(self._api_client)
        self._opened()
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
            for process in self.processes.values():
                process.stop()
            self.processes.clear()
        self._closing()
        self._api_client.close()

    # -- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as error:  # the API server may be busy; try again next poll
                self.errors.append(repr(error))
                self.log.warning("%s: %s", self.title, error)
            self._stop.wait(self.poll_seconds)

    def sync(self) -> None:
        """One pass: start processes for new bound pods, note those that exited while their
        pod lives, stop those whose pod is gone."""
        pods = self._core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_DEPLOYMENT}={self.deployment}"
        ).items
        alive = {p.metadata.uid: p for p in pods if p.metadata.deletion_timestamp is None}
        with self._lock:
            for uid in [u for u in self.processes if u not in alive]:
                self.processes.pop(uid).stop()
            for uid, process in self.processes.items():
                code = process.process.poll()
                if code is not None and process not in self.exited:
                    self.exited.append(process)
                    self._exited(alive[uid], code)
            for pod in alive.values():
                if pod.metadata.uid in self.processes or not pod.spec.node_name:
                    continue
                if not self._startable(pod):
                    continue
                key = replica_key(pod, alive.values())
                if key is None:
                    continue  # rank 0 of its replica is not there yet: its port is unknown
                started = self._start(self._bound(pod, key))
                self.processes[started.uid] = started
            # A recreated replica has a new rank 0, hence a new port: old ranks never meet it.
            for key in [k for k in self._master_ports if k not in alive]:
                del self._master_ports[key]

    def _bound(self, pod: Any, replica_key: str) -> BoundPod:
        body = self._api_client.sanitize_for_serialization(pod)
        directory = self.workdir / body["metadata"]["name"] / body["metadata"]["uid"][:8]
        directory.mkdir(parents=True, exist_ok=True)
        master_port = self._master_ports.setdefault(replica_key, free_ports(1)[0])
        return BoundPod(body, directory, master_port)


def replica_key(pod: Any, pods: Iterable[Any]) -> str | None:
    """The uid of rank 0 of the pod's replica; None while there is none."""
    replica = pod.metadata.labels.get(LABEL_REPLICA)
    for other in pods:
        labels = other.metadata.labels or {}
        if labels.get(LABEL_REPLICA) == replica and labels.get(LABEL_RANK) == "0":
            return str(other.metadata.uid)
    return None


def spawn(
    argv: list[str],
    environ: Mapping[str, str],
    log_path: Path,
    *,
    cwd: Path,
    own_group: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` with exactly `environ`, its output appended to `log_path`."""
    with log_path.open("ab") as output:
        return subprocess.Popen(
            argv,
            env=dict(environ),
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=own_group,  # its own process group, to be stopped as a whole
        )


def pod_environ(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's literal env (valueFrom entries are not resolvable here and are skipped)."""
    return {
        str(e["name"]): str(e["value"])
        for e in container.get("env") or []
        if "name" in e and e.get("value") is not None
    }


def annotate(core: Any, namespace: str, pod: str, address: str | None) -> None:
    """Point the operator's scraper at `address` (None removes the override)."""
    patch = {"metadata": {"annotations": {METRICS_ADDRESS_ANNOTATION: address}}}
    try:
        core.patch_namespaced_pod(pod, namespace, patch)
    except Exception as error:  # the pod may be gone already; the next pass tells
        log.warning("could not annotate %s: %s", pod, error)
