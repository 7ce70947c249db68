"""The one parser of a rank pod and the one index of them (gang logic and measurement share it)."""

from typing import Any

import kopf

from paraserve.controller import rank_pods
from paraserve.controller.measurement import measure_loop
from paraserve.controller.rank_pods import RankPod
from paraserve.controller.running import watches


def test_rank_pod_from_a_pod_object():
    body = {
        "metadata": {
            "name": "d-0-1",
            "uid": "u",
            "labels": {
                "paraserve.dev/replica": "0",
                "paraserve.dev/rank": "1",
                "paraserve.dev/template-hash": "h",
            },
            "deletionTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    observed = RankPod.from_pod(body)
    assert observed is not None
    assert (observed.replica, observed.rank, observed.node) == (0, 1, "n1")
    assert observed.ready and observed.terminating and observed.broken
    assert RankPod.from_pod({"metadata": {"labels": {}}}) is None


def test_rank_pod_knows_its_controller():
    body = {
        "metadata": {
            "name": "d-0-0",
            "labels": {"paraserve.dev/replica": "0", "paraserve.dev/rank": "0"},
            "ownerReferences": [
                {"uid": "other", "controller": False},
                {"uid": "mine", "controller": True},
            ],
        },
    }
    observed = RankPod.from_pod(body)
    assert observed is not None and observed.owner_uid == "mine"


def test_rank_pod_reads_placement_and_unschedulable_time():
    body = {
        "metadata": {
            "name": "d-0-0",
            "labels": {"paraserve.dev/replica": "0", "paraserve.dev/rank": "0"},
            "annotations": {"paraserve.dev/node": "gpu-1"},
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "lastTransitionTime": "1970-01-01T00:01:40Z",
                }
            ],
        },
    }
    observed = RankPod.from_pod(body)
    assert observed is not None
    assert observed.planned_node == "gpu-1" and observed.unschedulable_since == 100.0


def test_the_index_entry_is_keyed_by_namespace_and_deployment():
    body: dict[str, Any] = {
        "metadata": {
            "name": "d-0-0",
            "namespace": "ns",
            "labels": {
                "paraserve.dev/deployment": "d",
                "paraserve.dev/replica": "0",
                "paraserve.dev/rank": "0",
            },
        },
    }
    [(key, pod)] = rank_pods.index_entry(body).items()  # type: ignore[union-attr]
    assert key == ("ns", "d") and pod == RankPod.from_pod(body)
    body["metadata"]["labels"].pop("paraserve.dev/rank")
    assert rank_pods.index_entry(body) is None


def test_the_operator_keeps_one_index_of_rank_pods():
    registry = kopf.OperatorRegistry()
    watches.register(registry, None)  # type: ignore[arg-type]
    measurer = measure_loop.Measurer(None, measure_loop.MeasureSettings())  # type: ignore[arg-type]
    measure_loop.register(registry, measurer)
    indexes = [h.id for h in registry._indexing.get_all_handlers()]
    # (and one each of the Services and ConfigMaps it owns, compared with what it would write)
    assert indexes == [
        "deployments",
        "nodes",
        "gpu_pods",
        rank_pods.INDEX,
        "services",
        "configmaps",
        "model_config_maps",  # model.architectureFrom (reconciling/architecture_source.py)
        "architecture_sources",
        "gpu_exporters",  # the measurement loop's; rank pods are indexed once
    ]
