"""Chaos: the leader's API traffic frozen by a TCP proxy between it and the API server → it stops
acting before its lease expires, the standby takes over, and the old leader writes nothing
after expiry, not even when the partition heals.

Two operators with one Lease: A reaches the API server only through a StallProxy, B directly;
each has its own user, so the API server's audit log says who wrote what, and when (on the
API server's clock). The deployment's ranks report a memory figure that changes at every
scrape, so whoever leads writes its status every second: A has work to do throughout.
Figures (seconds from the freeze): A's last renewal, its lease expiry, B's takeover, A's last
write; A's writes after expiry are counted and must be none.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from chaos_tools import ChaosOperator, RankEndpoint, figures
from e2e import audit
from e2e.cluster.local import LocalCluster
from e2e.stallproxy import StallProxy
from operator_fixtures import deployment, pods_of, running, wait

pytestmark = [pytest.mark.timeout(400), pytest.mark.chaos]

LEASE = "paraserve-chaos-leader"
LEASE_DURATION = 15.0  # the operator's default --lease-duration
MEASURE_ENV = {
    "PARASERVE_MEASURE_INTERVAL": "1",
    "PARASERVE_MEASURE_WINDOW": "6",
    "PARASERVE_MEASURE_TIMEOUT": "1",
    "PARASERVE_MEASURE_REFRESH": "30",
    "PARASERVE_MEASURE_ADDRESS_ANNOTATION": "true",
}
# The partition lasts at least this long, and past the takeover.
PARTITION = 20.0
AFTER_TAKEOVER = 3.0
WATCH_AFTER_THAW = 8.0


def holder(cluster: LocalCluster) -> str | None:
    lease = cluster.kubectl("get", "lease", LEASE, "-n", "default", "-o", "json", check=False)
    if lease.returncode != 0:
        return None
    return str(json.loads(lease.stdout).get("spec", {}).get("holderIdentity") or "") or None


def test_a_frozen_leader_stops_before_its_lease_expires_and_never_writes_after(
    cluster: LocalCluster, inference_crd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def exposition() -> list[tuple[bytes, float]]:
        # Every rank says 1 GB in even seconds and 2 GB in odd ones: each scrape is news.
        memory = 1_000_000_000 * (1 + int(time.time()) % 2)
        return [(f"paraserve_rank_memory_used_bytes {memory}\n".encode(), 0.0)]

    rank = RankEndpoint(exposition)
    host, port = cluster.server.removeprefix("https://").rsplit(":", 1)
    with (
        cluster.namespace() as namespace,
        cluster.gpu_pool("1 x 2 x H100-80GB") as pool,
        figures(capsys, "chaos: the leader's API traffic frozen") as report,
        StallProxy(host, int(port)) as proxy,
    ):
        common = ("-n", namespace, "--leader-election-id", LEASE)
        a = ChaosOperator(
            cluster, tmp_path, *common, identity="chaos-a", server=proxy.url, env=MEASURE_ENV
        )
        b = ChaosOperator(cluster, tmp_path, *common, identity="chaos-b", env=MEASURE_ENV)
        try:
            a.start_healthy()
            wait(cluster, a.leading, "A leads", timeout=60)
            b.start_healthy()
            assert not b.leading()

            cluster.apply(
                deployment(
                    "watched",
                    pool.node_selector,
                    model={"name": "m", "dtype": "float16", "parameters": "1B"},
                    parallelism={"pipeline": 1, "tensor": 2, "sequence": 1},
                ),
                namespace=namespace,
            )
            wait(cluster, lambda: len(p := pods_of(cluster, namespace, "watched")) == 2
                 and running(p), "2 ranks running")  # fmt: skip
            for pod in ("watched-0-0", "watched-0-1"):
                cluster.kubectl(
                    "annotate", "pod", pod, "-n", namespace, "--overwrite",
                    f"paraserve.dev/metrics-address={rank.address}",
                )  # fmt: skip

            def a_writes_status() -> bool:
                recent = audit.read(cluster.audit_log, users=[a.user], since=time.time() - 4)
                return sum(e.kind == "status" and e.code == 200 for e in recent) >= 2

            wait(cluster, a_writes_status, "A writing the measured status", timeout=60)

            frozen = proxy.freeze()
            a_exited: float | None = None
            takeover: float | None = None
            while time.time() < max(frozen + PARTITION, (takeover or 1e18) + AFTER_TAKEOVER):
                if takeover is None and holder(cluster) == b.identity:
                    takeover = time.time()
                if a_exited is None and not a.alive():
                    a_exited = time.time()
                assert time.time() < frozen + 90, "the standby never took over"
                time.sleep(0.2)
            proxy.thaw()
            thawed = time.time()
            while time.time() < thawed + WATCH_AFTER_THAW:
                if a_exited is None and not a.alive():
                    a_exited = time.time()
                time.sleep(0.2)
            # As its supervisor would, start an exited A again: it must come back a standby.
            a_back_standby = None
            if not a.alive():
                a.start_healthy()
                time.sleep(5)
                a_back_standby = not a.leading()
            holder_after = holder(cluster)
        finally:
            a.stop()
            b.stop()
            rank.close()

        events = audit.read(cluster.audit_log, users=[a.user, b.user])
        of_a = [e for e in events if e.user == a.user]
        renewals = [e for e in of_a if e.kind == "lease" and e.write and 200 <= e.code < 300]
        last_renewal = max(e.received for e in renewals)
        expiry = last_renewal + LEASE_DURATION
        a_writes = [e for e in of_a if e.write]
        last_write = max(a_writes, key=lambda e: e.received)
        # A write that took effect; one the server refused (a renewal answered 409 because B's
        # lease has another resourceVersion, a request the stalled proxy delivered late) did not.
        late = [e for e in a_writes if e.received > expiry and 200 <= e.code < 300]
        refused_late = [e for e in a_writes if e.received > expiry and not 200 <= e.code < 300]
        b_status = [
            e for e in events if e.user == b.user and e.kind == "status" and e.received > frozen
        ]

        def at(t: float | None) -> str:
            return "never" if t is None else f"{t - frozen:+.1f} s"

        report += [
            "seconds from the freeze of A's traffic (API server clock for the writes):",
            f"  A's last lease renewal {at(last_renewal)}; its lease expires {at(expiry)}",
            f"  B holds the lease {at(takeover)}; the partition healed {at(thawed)}",
            f"  A's last write {at(last_write.received)} ({last_write.verb} "
            f"{last_write.resource}, HTTP {last_write.code}); A exited {at(a_exited)}",
            f"  A's writes after its lease expired: {len(late)}"
            + (f"\n{audit.describe(late)}" if late else "")
            + f"; attempts refused by the server after it: {len(refused_late)}"
            + (f"\n{audit.describe(refused_late)}" if refused_late else ""),
            f"  B's status writes since the freeze: {len(b_status)}; lease holder at the end: "
            f"{holder_after}; A started again is a standby: {a_back_standby}",
            f"  proxy: {proxy.connections} connections, {proxy.resets} reset by the partition",
        ]
        assert takeover is not None
        assert not late, "the old leader wrote after its lease expired:\n" + audit.describe(late)
        assert holder_after == b.identity
        assert b_status, "the new leader never wrote the status"
        assert a_back_standby in (None, True)
