"""Chaos: the operator SIGKILLed 100 times at random moments while 20 deployments are created,
scaled and deleted → exactly the right pods, no orphan, no duplicate, no pod recreated that
nobody touched, every status converged, and a quiet operator once converged.

Figures are printed (kills survived, pods expected vs found, time to converge), not asserted
as timings. PARASERVE_CHAOS_KILLS sets the number of kills (default 100).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest
from chaos_tools import (
    ChaosOperator,
    PodLedger,
    census,
    figures,
    pod_deletion_events,
    restart_events,
    writes_of,
)
from e2e import audit
from e2e.cluster.local import LocalCluster
from operator_fixtures import deployment

pytestmark = [pytest.mark.timeout(1200), pytest.mark.chaos]

KILLS = int(os.environ.get("PARASERVE_CHAOS_KILLS", "100"))
SMALL_MODEL = {"name": "meta-llama/Llama-2-7b-hf", "dtype": "float16", "parameters": "7B"}
# (pipeline, tensor): pinned tensor groups and plain ones, 2 to 4 GPUs per replica.
SHAPES = [(2, 1), (2, 2), (4, 1), (1, 2)]
QUIET_SECONDS = 20.0
# The share of kills aimed at start-up (before the operator serves); the others land at a
# random moment within 1.5 s of it serving, while it lists the world and acts on it.
DURING_START_UP = 0.25


def test_a_hundred_kills_while_deployments_come_and_go(
    cluster: LocalCluster, inference_crd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(12)
    names = [f"d{i:02d}" for i in range(20)]
    shape = {name: SHAPES[i % len(SHAPES)] for i, name in enumerate(names)}
    # d00–d09 scale up, d10–d13 scale down, d14–d19 are deleted.
    initial = {name: (3 if 10 <= i < 14 else 1) for i, name in enumerate(names)}
    final = {name: rng.choice((2, 3)) for name in names[:10]} | dict.fromkeys(names[10:14], 1)
    deleted = names[14:]

    with (
        cluster.namespace() as namespace,
        cluster.gpu_pool("26 x 8 x A100-80GB") as pool,
        figures(capsys, "chaos: operator SIGKILLs") as report,
        PodLedger(cluster, namespace) as ledger,
    ):
        operator = ChaosOperator(
            cluster,
            tmp_path,
            "-n",
            namespace,
            "--leader-election-id",
            "paraserve-chaos-kills",
            identity="chaos-kills",
            # This test is about the reconcile; the measurement loop has its own.
            env={"PARASERVE_MEASURE_INTERVAL": "0"},
        )

        def body(name: str) -> dict:  # type: ignore[type-arg]
            pipeline, tensor = shape[name]
            return deployment(
                name,
                pool.node_selector,
                model=SMALL_MODEL,
                parallelism={"pipeline": pipeline, "tensor": tensor, "sequence": 1},
                replicas=initial[name],
            )

        def scale(name: str, replicas: int) -> None:
            patch = json.dumps({"spec": {"replicas": replicas}})
            cluster.kubectl("patch", "infd", name, "-n", namespace, "--type=merge", "-p", patch)

        # What the test does to the deployments, by kill cycle: create in three waves, then
        # scale up and down, then delete, then only kills while it all converges.
        plan: dict[int, list[tuple[str, str]]] = {0: [], 4: [], 8: []}
        for i, name in enumerate(names):
            plan[(0, 4, 8)[i * 3 // len(names)]].append(("create", name))
        scalings = [n for n in names[:14] if final[n] != initial[n]]
        rng.shuffle(scalings)
        for step, name in enumerate(scalings):
            plan.setdefault(int(KILLS * 0.2) + step * 2, []).append(("scale", name))
        for step, name in enumerate(deleted):
            plan.setdefault(int(KILLS * 0.5) + step * 2, []).append(("delete", name))

        started = time.monotonic()
        kills = leading_at_kill = 0
        for cycle in range(KILLS):
            operator.start()
            for action, name in plan.get(cycle, []):
                if action == "create":
                    cluster.apply(body(name), namespace=namespace)
                elif action == "scale":
                    scale(name, final[name])
                else:
                    cluster.kubectl("delete", "infd", name, "-n", namespace, "--wait=false")
            if rng.random() < DURING_START_UP:
                time.sleep(rng.uniform(0.2, 2.0))
            else:  # while it works: from the moment it serves, its indexes still loading
                deadline = time.monotonic() + 30
                while not operator.answers_health() and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.5))
            leading_at_kill += operator.answers_health()
            operator.kill()
            kills += 1
        # Anything the plan put past the last kill is done now.
        for cycle in sorted(c for c in plan if c >= KILLS):
            for action, name in plan[cycle]:
                if action == "scale":
                    scale(name, final[name])
                elif action == "delete":
                    cluster.kubectl("delete", "infd", name, "-n", namespace, "--wait=false")
        storm = time.monotonic() - started

        operator.start_healthy()
        last_start = time.monotonic()
        expected = {name: (final[name], shape[name][0] * shape[name][1]) for name in final}
        result = census(cluster, namespace, expected)
        deadline = last_start + 240
        while not result.ok and time.monotonic() < deadline:
            time.sleep(1)
            result = census(cluster, namespace, expected)
        converge = time.monotonic() - last_start

        recreated = ledger.recreated()
        restarts = {
            d["metadata"]["name"]: (d.get("status") or {}).get("restarts", 0)
            for d in cluster.get("inferencedeployments", namespace=namespace)["items"]
        }
        restart_notes = [e["message"] for e in restart_events(cluster, namespace)]

        # Converged means quiet: no write at all by the operator for a while (leases aside).
        quiet_from = time.time()
        time.sleep(QUIET_SECONDS if result.ok else 0)
        quiet_writes = writes_of(cluster, operator.user, since=quiet_from)
        operator.stop()
        conflicts = [
            e
            for e in audit.read(cluster.audit_log, users=[operator.user])
            if e.code == 409 and e.kind != "lease"
        ]

        report += [
            f"kills: {kills} over {storm:.0f} s ({leading_at_kill} while serving, the rest "
            "during start-up); the operator started "
            f"{operator.starts} times",
            f"deployments: 20 created, {len(scalings)} scaled, {len(deleted)} deleted "
            f"during the kills; {len(expected)} remain",
            result.summary(),
            f"pods recreated that nobody touched: {len(recreated)}"
            + (f" {sorted(recreated)[:8]}" if recreated else ""),
            f"gang restarts: {sum(restarts.values())}; ReplicaRestart events: {len(restart_notes)}",
            f"time to converge after the last restart: {converge:.1f} s",
            f"writes in {QUIET_SECONDS:.0f} s once converged: {len(quiet_writes)}",
            f"conflicts (409) answered to the operator over the run: {len(conflicts)}",
        ]
        assert result.ok, f"{result.details()}\n{operator.log_tail()}"
        touched = sorted({name.rsplit("-", 2)[0] for name in recreated})
        assert not recreated, (
            f"pods deleted and recreated that nobody touched: {recreated}\n"
            f"why, as the operator and the cluster said it:\n"
            f"{operator.log_lines(*touched, limit=80)}\n{pod_deletion_events(cluster, namespace)}"
        )
        assert not any(restarts.values()), f"gang restarts: {restarts}\n{restart_notes}"
        assert not quiet_writes, "a converged operator kept writing:\n" + audit.describe(
            quiet_writes
        )
