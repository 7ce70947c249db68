"""What the chaos tests share: operators with their own audited user, a ledger of every pod
seen, and the user's checks of a converged namespace (exact pods, no orphan, statuses)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e import audit
from e2e.cluster.local import CommandError, LocalCluster
from operator_fixtures import REPO, OperatorProcess

LABEL_DEPLOYMENT = "paraserve.dev/deployment"
LABEL_REPLICA = "paraserve.dev/replica"
LABEL_RANK = "paraserve.dev/rank"


def audited_user(identity: str) -> str:
    return f"paraserve-operator:{identity}"


class ChaosOperator(OperatorProcess):
    """`paraserve operator` as its own user (so the audit log tells its requests apart),
    optionally through another address (a proxy), with extra environment."""

    def __init__(
        self,
        cluster: LocalCluster,
        log_dir: Path,
        *extra: str,
        identity: str,
        server: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        # Logs outlive pytest's temporary directories when PARASERVE_CHAOS_LOGS names a place.
        if keep := os.environ.get("PARASERVE_CHAOS_LOGS"):
            log_dir = Path(keep) / log_dir.name
            log_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(cluster, log_dir, *extra, identity=identity)
        self.user = audited_user(identity)
        self.kubeconfig = cluster.user_kubeconfig(self.user, server=server)
        self.env = dict(env or {})

    @property
    def args(self) -> list[str]:
        return [*super().args, "--kubeconfig", str(self.kubeconfig), "--log-format", "plain"]

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        env = {
            **os.environ,
            **self.cluster.env,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts + 1}\n".encode())
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        self.starts += 1

    def answers_health(self, timeout: float = 0.3) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=timeout
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def leading(self) -> bool:
        try:
            return "paraserve_operator_leader 1.0" in self.get(self.metrics_port, "/metrics")
        except OSError:
            return False


@dataclass
class PodLedger:
    """Every pod of a namespace as a watch shows it: each name's uids, in the order seen."""

    cluster: LocalCluster
    namespace: str
    uids: dict[str, list[str]] = field(default_factory=dict)
    events: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> PodLedger:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        from kubernetes import client, watch

        api_client = self.cluster.api_client()
        core = client.CoreV1Api(api_client)
        resource_version = None
        try:
            while not self._stop.is_set():
                stream = watch.Watch()
                try:
                    if resource_version is None:
                        listing = core.list_namespaced_pod(self.namespace)
                        for pod in listing.items:
                            self._see(pod.metadata.name, pod.metadata.uid)
                        resource_version = listing.metadata.resource_version
                    for event in stream.stream(
                        core.list_namespaced_pod,
                        self.namespace,
                        resource_version=resource_version,
                        timeout_seconds=5,
                    ):
                        pod = event["object"]
                        resource_version = pod.metadata.resource_version
                        self._see(pod.metadata.name, pod.metadata.uid)
                        if self._stop.is_set():
                            stream.stop()
                except Exception:  # an API server restart, a 410: list again
                    resource_version = None
                    time.sleep(0.3)
        finally:
            api_client.close()

    def _see(self, name: str, uid: str) -> None:
        with self._lock:
            self.events += 1
            seen = self.uids.setdefault(name, [])
            if uid not in seen:
                seen.append(uid)

    def recreated(self) -> dict[str, list[str]]:
        """Names that had more than one pod: each a pod deleted and created again."""
        with self._lock:
            return {name: list(uids) for name, uids in self.uids.items() if len(uids) > 1}


@dataclass(frozen=True)
class Census:
    """The namespace as a user checks it after the storm."""

    expected: set[str]
    found: list[str]
    orphans: list[str]
    duplicates: list[str]
    not_running: list[str]
    unconverged: dict[str, str]

    @property
    def missing(self) -> set[str]:
        return self.expected - set(self.found)

    @property
    def extra(self) -> set[str]:
        return set(self.found) - self.expected

    @property
    def ok(self) -> bool:
        return (
            not self.missing
            and not self.extra
            and not self.orphans
            and not self.duplicates
            and not self.not_running
            and not self.unconverged
        )

    def details(self) -> str:
        """What is wrong, for a failing test's message."""
        return (
            f"missing {sorted(self.missing)[:10]}, extra {sorted(self.extra)[:10]}, "
            f"orphans {self.orphans[:10]}, duplicates {self.duplicates[:10]}, "
            f"not running {self.not_running[:10]}, statuses {self.unconverged}"
        )

    def summary(self) -> str:
        return (
            f"pods expected {len(self.expected)}, found {len(self.found)} "
            f"(missing {len(self.missing)}, extra {len(self.extra)}), "
            f"orphans {len(self.orphans)}, duplicates {len(self.duplicates)}, "
            f"not running {len(self.not_running)}, statuses not converged {len(self.unconverged)}"
        )


def census(
    cluster: LocalCluster, namespace: str, expected_replicas: Mapping[str, tuple[int, int]]
) -> Census:
    """Compare the namespace with `expected_replicas`: name → (replicas, world size)."""
    pods = cluster.get("pods", namespace=namespace)["items"]
    deployments = {
        d["metadata"]["name"]: d
        for d in cluster.get("inferencedeployments", namespace=namespace)["items"]
    }
    expected = {
        f"{name}-{replica}-{rank}"
        for name, (replicas, world) in expected_replicas.items()
        for replica in range(replicas)
        for rank in range(world)
    }
    live_uids = {d["metadata"]["uid"] for d in deployments.values()}
    orphans, not_running = [], []
    coordinates: dict[tuple[str, str, str], list[str]] = {}
    for pod in pods:
        metadata = pod["metadata"]
        owners = [o for o in metadata.get("ownerReferences") or [] if o.get("controller")]
        if not owners or owners[0].get("uid") not in live_uids:
            orphans.append(metadata["name"])
        labels = metadata.get("labels") or {}
        key = (
            labels.get(LABEL_DEPLOYMENT, "?"),
            labels.get(LABEL_REPLICA, "?"),
            labels.get(LABEL_RANK, "?"),
        )
        coordinates.setdefault(key, []).append(metadata["name"])
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod["status"].get("conditions") or []
        )
        if (
            pod["status"].get("phase") != "Running"
            or metadata.get("deletionTimestamp")
            or not ready
        ):
            not_running.append(
                f"{metadata['name']} ({pod['status'].get('phase')}, "
                f"node {pod['spec'].get('nodeName')}, ready {ready}"
                + (", deleting" if metadata.get("deletionTimestamp") else "")
                + ")"
            )
    duplicates = [name for names in coordinates.values() if len(names) > 1 for name in names]
    unconverged: dict[str, str] = {}
    for name in sorted(set(deployments) | set(expected_replicas)):
        body = deployments.get(name)
        if name not in expected_replicas:
            unconverged[name] = "still exists"
            continue
        if body is None:
            unconverged[name] = "missing"
            continue
        replicas, world = expected_replicas[name]
        status = body.get("status") or {}
        ranks = status.get("ranks") or {}
        problems = [
            what
            for what, ok in (
                (f"phase {status.get('phase')}", status.get("phase") == "Ready"),
                (
                    f"observedGeneration {status.get('observedGeneration')} of "
                    f"{body['metadata'].get('generation')}",
                    status.get("observedGeneration") == body["metadata"].get("generation"),
                ),
                (f"replicas {status.get('replicas')}", status.get("replicas") == replicas),
                (
                    f"ranks {ranks.get('summary')}",
                    ranks.get("ready") == ranks.get("total") == replicas * world,
                ),
            )
            if not ok
        ]
        if problems:
            unconverged[name] = ", ".join(problems)
    return Census(
        expected=expected,
        found=sorted(p["metadata"]["name"] for p in pods),
        orphans=sorted(orphans),
        duplicates=sorted(duplicates),
        not_running=sorted(not_running),
        unconverged=unconverged,
    )


def restart_events(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    items = cluster.get("events", namespace=namespace)["items"]
    return [e for e in items if e.get("reason") == "ReplicaRestart"]


def pod_deletion_events(cluster: LocalCluster, namespace: str) -> str:
    """The cluster's own word on pods it deleted (the node controller's evictions)."""
    try:
        listing = cluster.kubectl(
            "get", "events", "-n", namespace, "-o",
            "custom-columns=REASON:.reason,OBJECT:.involvedObject.name,FROM:.source.component,"
            "MESSAGE:.message",
            timeout=20,
        )  # fmt: skip
    except CommandError as error:
        return f"(events not read: {error})"
    wanted = ("Evict", "Taint", "Delet", "Killing", "NodeNotReady")
    lines = listing.stdout.splitlines()
    return "\n".join(line for line in lines if any(w in line for w in wanted)) or "(none)"


def writes_of(
    cluster: LocalCluster, user: str, since: float, until: float | None = None
) -> list[audit.AuditEvent]:
    """The user's writes (status, owned objects, Events, the deployment), not its Lease."""
    return [
        e
        for e in audit.read(cluster.audit_log, users=[user], since=since)
        if e.write and e.kind != "lease" and (until is None or e.received <= until)
    ]


@contextlib.contextmanager
def figures(capsys: pytest.CaptureFixture[str], title: str) -> Iterator[list[str]]:
    """Lines a test reports: printed past pytest's capture, whether it passes or fails (and
    appended to the file $PARASERVE_CHAOS_FIGURES names, if it does)."""
    lines: list[str] = []
    try:
        yield lines
    finally:
        text = f"\n--- {title} ---\n" + "\n".join(lines) + "\n"
        with capsys.disabled():
            sys.stdout.write(text)
            sys.stdout.flush()
        if path := os.environ.get("PARASERVE_CHAOS_FIGURES"):
            with open(path, "a") as out:
                out.write(text)


class RankEndpoint:
    """A rank's /metrics on loopback: what it serves and how (chunks, pauses) is the test's.

    `chunks()` returns the body as (bytes, pause before sending) pieces; each is sent as one
    HTTP/1.1 chunk (the first with the response headers), so a client sees exactly these
    boundaries, however they cut the lines.
    """

    def __init__(self, chunks: Any) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.chunks = chunks
        self.scrapes = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                endpoint.scrapes += 1
                # The first piece leaves with the headers, in one segment.
                out = (
                    b"HTTP/1.1 200 OK\r\n"
                    b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                try:
                    for piece, pause in endpoint.chunks():
                        time.sleep(pause)
                        self.wfile.write(out + b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                        out = b""
                    self.wfile.write(out + b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the scraper gave up: that is its right

            def log_message(self, *_: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a scraper that hangs up mid-answer is not the endpoint's fault

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
