"""Chaos: the headless Service and the topology ConfigMap deleted out of band → the operator
recreates both within a resync, and the running ranks are left alone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from chaos_tools import ChaosOperator, figures
from e2e.cluster.local import LocalCluster
from operator_fixtures import deployment, infd, pods_of, wait

pytestmark = [pytest.mark.timeout(300), pytest.mark.chaos]

RESYNC = 15.0
SMALL_MODEL = {"name": "meta-llama/Llama-2-7b-hf", "dtype": "float16", "parameters": "7B"}


def test_owned_objects_deleted_out_of_band_come_back_within_a_resync(
    cluster: LocalCluster, inference_crd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        cluster.namespace() as namespace,
        cluster.gpu_pool("1 x 8 x A100-80GB") as pool,
        figures(capsys, "chaos: owned objects deleted out of band") as report,
    ):
        operator = ChaosOperator(
            cluster,
            tmp_path,
            "-n",
            namespace,
            "--leader-election-id",
            "paraserve-chaos-repair",
            "--resync",
            str(RESYNC),
            identity="chaos-repair",
            env={"PARASERVE_MEASURE_INTERVAL": "0"},
        )
        operator.start_healthy()
        try:
            body = deployment(
                "svc",
                pool.node_selector,
                model=SMALL_MODEL,
                parallelism={"pipeline": 2, "tensor": 1, "sequence": 1},
            )
            cluster.apply(body, namespace=namespace)
            wait(
                cluster,
                lambda: (
                    (infd(cluster, namespace, "svc").get("status") or {}).get("phase") == "Ready"
                ),
                "svc Ready",
            )
            before = {p["metadata"]["uid"] for p in pods_of(cluster, namespace, "svc")}
            uid = infd(cluster, namespace, "svc")["metadata"]["uid"]

            def owned() -> dict[str, list[str]]:
                """The deployment's Services and ConfigMaps, by kind (names may carry a hash)."""
                found: dict[str, list[str]] = {}
                for kind in ("service", "configmap"):
                    for item in cluster.get(kind, namespace=namespace)["items"]:
                        owners = item["metadata"].get("ownerReferences") or []
                        if any(o.get("uid") == uid for o in owners):
                            found.setdefault(kind, []).append(item["metadata"]["name"])
                return found

            first = owned()
            assert sorted(first) == ["configmap", "service"], first
            for kind, names in first.items():
                for name in names:
                    cluster.kubectl("delete", kind, name, "-n", namespace, "--wait=true")
            deleted = time.monotonic()

            back: dict[str, float] = {}

            def recreated() -> bool:
                for kind in owned():
                    back.setdefault(kind, time.monotonic() - deleted)
                return len(back) == len(first)

            limit = 2 * RESYNC + 10
            in_time = True
            try:
                wait(cluster, recreated, "the Service and ConfigMap recreated", timeout=limit)
            except TimeoutError:
                in_time = False
            after = {p["metadata"]["uid"] for p in pods_of(cluster, namespace, "svc")}
            again = owned()
            # The topology document each recreated ConfigMap holds (a JSON string in its data).
            topologies = [
                json.loads(
                    json.loads(
                        cluster.kubectl(
                            "get", "configmap", name, "-n", namespace, "-o", "json"
                        ).stdout
                    )["data"]["topology.json"]
                )
                for name in again.get("configmap", [])
            ]
        finally:
            operator.stop()

        report += [
            f"resync {RESYNC:.0f} s; recreated after: "
            + (", ".join(f"{kind} {seconds:.1f} s" for kind, seconds in back.items()) or "never")
            + f" (waited {limit:.0f} s)",
            f"deleted {first}; there again {again}",
            f"rank pods replaced meanwhile: {len(before - after)} of {len(before)}",
        ]
        assert in_time, (
            f"not recreated within {limit:.0f} s: {sorted(set(back) ^ {'service', 'configmap'})}"
        )
        assert [t["worldSize"] for t in topologies] == [2]
        assert after == before, "the running ranks were replaced"
