"""Restart at scale: 300 deployments × 10 ranks Ready, `kill -9` of the operator, a rank of a few
deployments really deleted during the outage, the operator started again.

Run: .venv/bin/python bench/restart_at_scale.py [--deployments 300] [--ranks 10] [--lost 10]

On its own local control plane with a kwok pool (3,000 pods: run it alone on the machine,
under the cluster lock if you share it). The operator runs with its defaults as a user of
its own, so the API server's audit log tells its requests apart. Reported:

* pods deleted that were not really lost: every pod of a deployment nobody touched, by UID,
  before the kill and after convergence (must be 0);
* deployments that really lost a rank and were restarted as a gang (must be all of them);
* every status current: Ready for its generation, all ranks ready, restarts 0 or 1;
* the resync time (start to all of that), the operator's CPU seconds meanwhile, and its
  requests after the restart from the audit log, 409 conflicts by verb and resource.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import audit
from e2e.cluster.local import LocalCluster, running_cluster

from clusterbench import (
    Operator,
    apply_all,
    deployment,
    deployments,
    install_crd,
    pods,
    ready,
    table,
    wait_all_ready,
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uids(items: list[dict[str, Any]]) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in items}


def running(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")


def converged(
    cluster: LocalCluster, namespace: str, count: int, ranks: int, hit: set[str]
) -> tuple[bool, dict[str, Any]]:
    items = deployments(cluster, namespace)
    current = [
        d
        for d in items
        if ready(d)
        and ((d.get("status") or {}).get("ranks") or {}).get("ready") == ranks
        and (d.get("status") or {}).get("restarts", 0) == (1 if d["metadata"]["name"] in hit else 0)
    ]
    phases = Counter((d.get("status") or {}).get("phase") for d in items)
    return len(current) == count, {"current": len(current), "phases": dict(phases)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=300)
    parser.add_argument("--ranks", type=int, default=10, help="PP of each (TP=1)")
    parser.add_argument("--lost", type=int, default=10, help="deployments losing a rank")
    parser.add_argument("--outage", type=float, default=15.0, help="seconds the operator is down")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to converge")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("operator_args", nargs="*", help="extra `paraserve operator` flags")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    total = args.deployments * args.ranks
    nodes = (total * 11 // 10 + 7) // 8

    with running_cluster(timeout=300) as cluster:
        install_crd(cluster)
        with (
            cluster.gpu_pool(f"{nodes} x 8 x H100-80GB", ready_timeout=600) as pool,
            cluster.namespace("scale") as namespace,
        ):
            operator = Operator(
                cluster, cluster.workdir / "scale-operator.log", *args.operator_args
            )
            operator.start()
            operator.wait_healthy()
            names = [f"s{i:03d}" for i in range(args.deployments)]
            print(f"creating {args.deployments} deployments × {args.ranks} ranks on {nodes} nodes")
            apply_all(
                cluster,
                [deployment(n, pool.node_selector, args.ranks, 1) for n in names],
                namespace,
            )
            to_ready = wait_all_ready(cluster, namespace, args.deployments, timeout=1800)
            time.sleep(10)
            before = uids(pods(cluster, namespace))
            print(f"all Ready in {to_ready:.0f} s; {len(before)} pods; kill -9 of the operator")

            operator.kill()
            hit = set(rng.sample(names, args.lost))
            lost_pods = {name: f"{name}-0-{rng.randrange(args.ranks)}" for name in sorted(hit)}
            for pod in lost_pods.values():
                cluster.kubectl("delete", "pod", pod, "-n", namespace, "--wait=false")
            time.sleep(args.outage)
            gone = set(lost_pods.values()) - set(uids(pods(cluster, namespace)))

            restarted_at = time.time()
            operator.start()
            assert operator.process is not None
            pid = operator.process.pid
            started = time.monotonic()
            progress: dict[str, Any] = {}
            done = False
            while time.monotonic() - started < args.timeout:
                done, progress = converged(cluster, namespace, args.deployments, args.ranks, hit)
                if done:
                    break
                print(f"  {time.monotonic() - started:5.0f} s: {progress}", flush=True)
                time.sleep(5)
            resync = time.monotonic() - started
            cpu = cpu_seconds(pid) if operator.process.poll() is None else float("nan")
            after_pods = pods(cluster, namespace)
            after = uids(after_pods)
            operator.stop()
            events = audit.read(cluster.audit_log, users=[operator.user], since=restarted_at)
            restart_events = [
                e
                for e in cluster.get("events", namespace=namespace)["items"]
                if e.get("reason") == "ReplicaRestart"
            ]

    untouched = {n: u for n, u in before.items() if n.rsplit("-", 2)[0] not in hit}
    wrongly = sorted(n for n, u in untouched.items() if after.get(n) != u)
    restarted = sorted(
        name
        for name in hit
        if all(
            after.get(f"{name}-0-{k}") not in (None, before.get(f"{name}-0-{k}"))
            for k in range(args.ranks)
        )
    )
    not_running = [p["metadata"]["name"] for p in after_pods if not running(p)]
    conflicts = Counter((e.verb, e.resource) for e in events if e.code == 409)
    writes = Counter(e.kind for e in events if e.write)
    creates = sum(e.verb == "create" and e.resource == "pods" for e in events)
    deletes = sum(e.verb == "delete" and e.resource == "pods" for e in events)
    wrong_events = [e for e in restart_events if e["involvedObject"].get("name") not in hit]

    print()
    print(
        f"restart at scale: {args.deployments} deployments × {args.ranks} ranks "
        f"({len(before)} pods), operator down {args.outage:.0f} s, "
        f"{len(gone)} of {args.lost} deleted ranks gone before the restart"
    )
    print(
        table(
            [
                ("pods deleted that were not really lost (by UID)", len(wrongly)),
                (
                    "deployments that lost a rank, restarted as a gang",
                    f"{len(restarted)}/{len(hit)}",
                ),
                ("statuses current at the end", f"{progress.get('current')}/{args.deployments}"),
                ("converged", done),
                ("resync time (restart to all current)", f"{resync:.1f} s"),
                ("operator CPU meanwhile", f"{cpu:.1f} s"),
                ("pods not running at the end", len(not_running)),
                ("pod creates / deletes after the restart", f"{creates} / {deletes}"),
                ("writes after the restart, by kind", dict(sorted(writes.items()))),
                ("409 conflicts after the restart", sum(conflicts.values())),
                *((f"  {verb} {resource}", n) for (verb, resource), n in conflicts.most_common()),
                ("ReplicaRestart events for untouched deployments", len(wrong_events)),
                ("requests after the restart (audit log)", len(events)),
            ]
        )
    )
    if wrongly:
        print("pods replaced that nobody touched:", " ".join(wrongly[:20]))
    return 0 if done and not wrongly and len(restarted) == len(hit) else 1


if __name__ == "__main__":
    sys.exit(main())
