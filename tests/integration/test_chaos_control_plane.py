"""Chaos: the API server SIGKILLed mid-creation and started again, then etcd SIGKILLed during a
scale-up and started again → everything converges, and the operator never restarts.

The components are the session's own (same ports, same data): the test leaves the cluster
healthy for the tests after it, and says which component, if any, it had to start again.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_tools import Census, ChaosOperator, PodLedger, census, figures, pod_deletion_events
from e2e.cluster.controlplane import COMPONENTS
from e2e.cluster.local import CommandError, LocalCluster
from operator_fixtures import deployment

pytestmark = [pytest.mark.timeout(600), pytest.mark.chaos]

SMALL_MODEL = {"name": "meta-llama/Llama-2-7b-hf", "dtype": "float16", "parameters": "7B"}
COUNT = 6
SHAPE = (4, 2)  # 8 ranks per replica
DOWN_FOR = 2.0
KWOK_LAPSE = 15.0  # s a bound pod waits for kwok: it starts one in well under a second


@pytest.fixture
def healthy_after(cluster: LocalCluster) -> Iterator[list[str]]:
    """Whatever this test breaks, the session's cluster is whole again after it."""
    restarted: list[str] = []
    yield restarted
    for name in COMPONENTS:
        if not cluster.component_healthy(name):
            time.sleep(5)  # a component may still be reconnecting
        if not cluster.component_healthy(name):
            with contextlib.suppress(Exception):
                cluster.kill_component(name)
            cluster.start_component(name)
            restarted.append(name)


def retrying(action: object, what: str, timeout: float = 120) -> None:
    """Run a kubectl action until the API server answers it (it may be away)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()  # type: ignore[operator]
            return
        except (CommandError, TimeoutError, subprocess.TimeoutExpired):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_api_server_and_etcd_restarts_converge_without_an_operator_restart(
    cluster: LocalCluster,
    inference_crd: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    healthy_after: list[str],
) -> None:
    pipeline, tensor = SHAPE
    names = [f"cp{i}" for i in range(COUNT)]
    with (
        cluster.namespace() as namespace,
        cluster.gpu_pool("14 x 8 x A100-80GB") as pool,
        figures(capsys, "chaos: kube-apiserver and etcd restarts") as report,
        PodLedger(cluster, namespace) as ledger,
    ):
        operator = ChaosOperator(
            cluster,
            tmp_path,
            "-n",
            namespace,
            "--leader-election-id",
            "paraserve-chaos-plane",
            identity="chaos-plane",
            env={"PARASERVE_MEASURE_INTERVAL": "0"},
        )
        operator.start_healthy()
        pid = operator.process.pid if operator.process else None
        try:
            # Deployments arrive one by one; the API server dies in the middle of them.
            def arrive() -> None:
                for name in names:
                    body = deployment(
                        name,
                        pool.node_selector,
                        model=SMALL_MODEL,
                        parallelism={"pipeline": pipeline, "tensor": tensor, "sequence": 1},
                    )
                    retrying(lambda body=body: cluster.apply(body, namespace=namespace), name)
                    time.sleep(1.0)

            arrivals = threading.Thread(target=arrive, daemon=True)
            arrivals.start()
            # Mid-creation: the first deployment's ranks exist, the others are on their way.
            cluster.wait_for(lambda: len(ledger.uids) >= 1, timeout=60, interval=0.05)
            pods_at_kill = len(ledger.uids)
            away = cluster.restart_component("kube-apiserver", down_for=DOWN_FOR)
            arrivals.join(timeout=180)
            expected = {name: (1, pipeline * tensor) for name in names}
            first = converge(cluster, namespace, expected)
            api_alive = operator.alive()
            report += [
                f"kube-apiserver: SIGKILLed with {pods_at_kill} of {COUNT * pipeline * tensor} "
                f"pods created, away {away:.1f} s (started again after {DOWN_FOR:.0f} s)",
                f"  converged {first[1]:.1f} s after it was back: {first[0].summary()}",
                f"  operator still the same process: {api_alive}",
            ]
            assert first[0].ok, f"{first[0].details()}\n{operator.log_tail()}"
            assert api_alive, f"the operator exited:\n{operator.log_tail()}"

            # etcd dies in the middle of a scale-up of three deployments.
            scaled = names[:3]

            def scale_up() -> None:
                for name in scaled:
                    patch = json.dumps({"spec": {"replicas": 2}})
                    retrying(
                        lambda name=name, patch=patch: cluster.kubectl(
                            "patch", "infd", name, "-n", namespace, "--type=merge", "-p", patch,
                            timeout=20,
                        ),
                        name,
                    )  # fmt: skip
                    time.sleep(1.0)

            scaling = threading.Thread(target=scale_up, daemon=True)
            scaling.start()
            seen = len(ledger.uids)
            cluster.wait_for(lambda: len(ledger.uids) > seen, timeout=60, interval=0.05)
            pods_at_kill = len(ledger.uids)
            away = cluster.restart_component("etcd", down_for=DOWN_FOR)
            scaling.join(timeout=180)
            expected |= {name: (2, pipeline * tensor) for name in scaled}
            kwok_lapse: list[str] = []
            second = converge(cluster, namespace, expected, kwok_lapse)
            if kwok_lapse:
                healthy_after.append("kwok (after etcd)")
            etcd_alive = operator.alive()
            same = operator.process is not None and operator.process.pid == pid
            report += [
                f"etcd: SIGKILLed during a scale-up of 3 deployments, {pods_at_kill} of "
                f"{sum(r * w for r, w in expected.values())} pods seen, away "
                f"{away:.1f} s",
                f"  converged {second[1]:.1f} s after it was back: {second[0].summary()}",
                f"  bound pods kwok never started (kwok started again): {kwok_lapse or 'none'}",
                f"  operator still the same process: {etcd_alive and same} "
                f"(started {operator.starts} time)",
                f"pods recreated that nobody touched: {len(ledger.recreated())}",
            ]
            assert second[0].ok, f"{second[0].details()}\n{operator.log_tail()}"
            assert etcd_alive and same and operator.starts == 1, operator.log_tail()
            assert not ledger.recreated(), (
                f"{ledger.recreated()}\nwhy, as the operator and the cluster said it:\n"
                f"{operator.log_lines('recreating', 'deleting', 'evict')}\n"
                f"{pod_deletion_events(cluster, namespace)}"
            )
        finally:
            operator.stop()
            report.append(f"components started again afterwards: {healthy_after or 'none'}")


def kwok_missed_bindings(result: Census) -> list[str]:
    """The pods bound to a node and not started, when nothing else is wrong: kwok's lapse."""
    bound = [p for p in result.not_running if "(Pending, node " in p and ", node None" not in p]
    clean = not (result.missing or result.extra or result.orphans or result.duplicates)
    return bound if clean and bound and len(bound) == len(result.not_running) else []


def converge(
    cluster: LocalCluster,
    namespace: str,
    expected: dict[str, tuple[int, int]],
    kwok_lapse: list[str] | None = None,
) -> tuple[Census, float]:
    """Census until it is all as expected, or 180 s. With `kwok_lapse`, pods bound and left
    Pending for KWOK_LAPSE s while nothing else is wrong are kwok's lapse: kwok stands in for
    the kubelets, and after etcd is back its watch can miss a binding made just before. A
    kubelet lists again; kwok does when started again, which is done at once (were it left,
    its nodes' leases could lapse too and the node controller evict pods 5 minutes later, a
    recreation nobody asked for). The pods are put in `kwok_lapse`, said in the figures."""
    started = time.monotonic()
    deadline = started + 180
    lapse_since: float | None = None
    kwok_restarts = 0
    while True:
        try:
            result = census(cluster, namespace, expected)
        except CommandError:
            time.sleep(1)
            continue
        if result.ok or time.monotonic() > deadline:
            return result, time.monotonic() - started
        missed = kwok_missed_bindings(result)
        if kwok_lapse is None or not missed:
            lapse_since = None
        elif lapse_since is None:
            lapse_since = time.monotonic()
        elif time.monotonic() - lapse_since > KWOK_LAPSE:
            if kwok_restarts < 2:  # twice at most: a third would hide a real fault
                kwok_lapse.extend(p for p in missed if p not in kwok_lapse)
                cluster.restart_component("kwok")
                kwok_restarts += 1
            lapse_since = None
        time.sleep(1)
