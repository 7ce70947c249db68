"""Idle cost: what the operator asks of the API server while nothing happens.

Run: .venv/bin/python bench/idle_cost.py [--deployments 100] [--idle 300] [--settle 30]

On its own local control plane (started here, under the cluster lock if you share the
machine), with a kwok pool, it starts `paraserve operator` with its defaults (resync 60 s,
measurement every 15 s) as a user of its own, creates the deployments (PP=2 × TP=1 each),
waits until all are Ready, lets start-up settle, and then counts for `--idle` seconds every
request that user made, from the API server's audit log (one line per answered request,
on the API server's clock): writes by what they touch (status, the deployment, owned
objects, Events, the Lease), LISTs, watches, GETs. The target (issue 12): 0 writes but the
Lease renewals, 0 LISTs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import audit
from e2e.cluster.local import running_cluster

from clusterbench import Operator, apply_all, deployment, install_crd, table, wait_all_ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--idle", type=float, default=300.0, help="seconds counted")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds after all Ready")
    parser.add_argument("operator_args", nargs="*", help="extra `paraserve operator` flags")
    args = parser.parse_args(argv)

    nodes = (args.deployments * 2 + 7) // 8 + 1
    with running_cluster() as cluster:
        install_crd(cluster)
        with (
            cluster.gpu_pool(f"{nodes} x 8 x A100-80GB", ready_timeout=300) as pool,
            cluster.namespace("idle") as namespace,
        ):
            operator = Operator(cluster, cluster.workdir / "idle-operator.log", *args.operator_args)
            operator.start()
            operator.wait_healthy()
            started = time.time()
            bodies = [
                deployment(f"idle-{i:03d}", pool.node_selector, 2, 1)
                for i in range(args.deployments)
            ]
            apply_all(cluster, bodies, namespace)
            to_ready = wait_all_ready(cluster, namespace, args.deployments, timeout=900)
            print(f"all {args.deployments} Ready in {to_ready:.0f} s; settling {args.settle:.0f} s")
            time.sleep(args.settle)
            window = time.time()
            print(f"counting for {args.idle:.0f} s …", flush=True)
            time.sleep(args.idle)
            until = time.time()
            alive = operator.process is not None and operator.process.poll() is None
            operator.stop()
            events = audit.read(cluster.audit_log, users=[operator.user])

    startup = [e for e in events if started <= e.received < window]
    idle = [e for e in events if window <= e.received < until]
    writes = Counter(e.kind for e in idle if e.write)
    lists = Counter(e.resource for e in idle if e.verb == "list")
    others = Counter(e.verb for e in idle if not e.write and e.verb != "list")
    operator_writes = sum(n for kind, n in writes.items() if kind != "lease")
    print()
    print(
        f"idle cost: {args.deployments} deployments Ready, {args.idle:.0f} s counted "
        f"(from {window - started:.0f} s after the operator started), operator alive: {alive}"
    )
    print(
        table(
            [
                ("writes, the Lease aside", operator_writes),
                *((f"  {kind}", n) for kind, n in sorted(writes.items()) if kind != "lease"),
                ("Lease writes (renewals)", writes.get("lease", 0)),
                ("LISTs", sum(lists.values())),
                *((f"  {resource}", n) for resource, n in sorted(lists.items())),
                *((f"{verb}s", n) for verb, n in sorted(others.items())),
                ("requests during start-up and creation", len(startup)),
            ]
        )
    )
    print("\nby verb, resource and HTTP code, while idle:")
    print(audit.describe(idle))
    print(
        "\ncounted from the API server's audit log: every request of the operator's own user "
        "(a client certificate), answered, received inside the window"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
