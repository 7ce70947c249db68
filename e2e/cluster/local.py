"""The object tests use to talk to the local cluster: kubectl, helm, API clients and GPU pools."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from e2e.cluster.controlplane import AUDITED_GROUP, ControlPlane
from e2e.cluster.gpupool import POOL_LABEL, PoolSpec, Taint, node_names, parse_pool, render_nodes

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

T = TypeVar("T")


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call whose message includes what the tool printed on stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {(self.stderr or '').strip()}"


@dataclass(frozen=True)
class GpuPool:
    """A pool of fake GPU nodes that exists for the duration of a `with` block."""

    name: str
    spec: PoolSpec
    nodes: list[str]

    @property
    def node_selector(self) -> dict[str, str]:
        return {POOL_LABEL: self.name}

    @property
    def label_selector(self) -> str:
        return f"{POOL_LABEL}={self.name}"


class LocalCluster:
    """A running local cluster: what a test needs to reach it, and helpers to shape it."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        self.kubeconfig: Path = plane.kubeconfig
        self.server: str = plane.server
        self.bin_dir: Path = plane.bin_dir
        self.version: str = plane.version
        self.workdir: Path = plane.workdir
        self.logs_dir: Path = plane.logs_dir

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes: KUBECONFIG, PATH with kubectl/helm, Helm homes."""
        return self._plane.env()

    # -- command-line tools ------------------------------------------------------------

    def run(
        self,
        binary: str,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the cluster's binaries against it; raises CommandError when check fails."""
        result = subprocess.run(
            [str(self.bin_dir / binary), *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise CommandError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, check=check, input=input, timeout=timeout)

    def helm(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, check=check, input=input, timeout=timeout)

    def apply(
        self, *objects: Mapping[str, Any] | str, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply` objects given as dicts or YAML text (server-side apply)."""
        docs = [o if isinstance(o, str) else yaml.safe_dump(dict(o)) for o in objects]
        scope = ["-n", namespace] if namespace else []
        return self.kubectl(
            "apply",
            *scope,
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
            input="\n---\n".join(docs),
        )

    def get(self, kind: str, name: str = "", namespace: str | None = None) -> dict[str, Any]:
        """An object (or a List) as a dict, via `kubectl get -o json`."""
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        result: dict[str, Any] = json.loads(self.kubectl(*args).stdout)
        return result

    # -- Python client -----------------------------------------------------------------

    def api_client(self) -> ApiClient:
        """A new `kubernetes.client.ApiClient` for this cluster; close it when done."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    # -- shaping the cluster -------------------------------------------------------------

    @contextlib.contextmanager
    def namespace(self, name: str | None = None) -> Iterator[str]:
        """A fresh namespace, ready for pods (its default service account exists)."""
        name = name or f"test-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        try:
            self.wait_for(
                lambda: (
                    self.kubectl(
                        "get", "serviceaccount", "default", "-n", name, check=False
                    ).returncode
                    == 0
                ),
                timeout=60,
                what=f"default service account in {name}",
            )
            yield name
        finally:
            self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")

    @contextlib.contextmanager
    def gpu_pool(
        self,
        spec: str | Mapping[str, Any] | PoolSpec,
        taints: Sequence[str | Taint] = (),
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        ready_timeout: float = 60,
    ) -> Iterator[GpuPool]:
        """Fake GPU nodes (e.g. `"2 x 4 x H100-80GB"`), Ready on entry, deleted on exit."""
        pool_spec = parse_pool(spec, taints=taints, labels=labels)
        pool_name = name or f"gpu-{uuid.uuid4().hex[:6]}"
        pool = GpuPool(pool_name, pool_spec, node_names(pool_name, pool_spec))
        try:
            self.apply(*render_nodes(pool_name, pool_spec))
            self.kubectl(
                "wait",
                "node",
                "-l",
                pool.label_selector,
                "--for=condition=Ready",
                f"--timeout={int(ready_timeout)}s",
                timeout=ready_timeout + 30,
            )
            yield pool
        finally:
            # Deleting a thousand nodes takes kubectl longer than its default two minutes.
            deadline = 120 + len(pool.nodes) * 0.2
            self.kubectl(
                "delete", "node", "-l", pool.label_selector, "--ignore-not-found", timeout=deadline
            )

    def wait_for(
        self,
        condition: Callable[[], T],
        timeout: float = 60,
        interval: float = 0.5,
        what: str = "condition",
    ) -> T:
        """Poll until `condition()` is truthy and return it; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each control-plane process, by name."""
        return self._plane.rss_bytes()

    def pids(self) -> dict[str, int]:
        return self._plane.pids()

    # -- faults and audit ------------------------------------------------------------------

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: requests of users in AUDITED_GROUP (see user_kubeconfig)."""
        return self._plane.audit_log

    def user_kubeconfig(
        self,
        user: str,
        groups: tuple[str, ...] = ("system:masters", AUDITED_GROUP),
        server: str | None = None,
    ) -> Path:
        """A kubeconfig for `user` (an administrator audited by default), optionally through
        another address such as a proxy in front of the API server."""
        return self._plane.user_kubeconfig(user, groups, server)

    def kill_component(self, name: str) -> None:
        """SIGKILL etcd, kube-apiserver, kube-controller-manager, kube-scheduler or kwok."""
        self._plane.kill(name)

    def start_component(self, name: str, timeout: float = 120) -> float:
        """Start a killed component again (same ports and data); seconds until healthy."""
        return self._plane.start_again(name, timeout)

    def restart_component(self, name: str, down_for: float = 0.0, timeout: float = 120) -> float:
        """Kill a component and start it again after `down_for` s; seconds it was away."""
        return self._plane.restart(name, down_for, timeout)

    def component_healthy(self, name: str) -> bool:
        return self._plane.healthy(name)


@contextlib.contextmanager
def running_cluster(timeout: float = 180, node_lease_seconds: int = 40) -> Iterator[LocalCluster]:
    """Start a cluster, yield it, and stop it (also on errors and at interpreter exit)."""
    plane = ControlPlane(node_lease_seconds=node_lease_seconds)
    try:
        plane.start(timeout=timeout)
        yield LocalCluster(plane)
    finally:
        plane.stop()
