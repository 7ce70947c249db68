"""Gang placement of tensor-parallel groups onto the nodes' free GPUs."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from paraserve.api import InferenceDeploymentSpec
from paraserve.controller.reconciling import owned_objects, placement
from paraserve.planner import Pool

SPEC = InferenceDeploymentSpec.model_validate(
    {"model": {"name": "m", "parameters": "7B"}, "parallelism": {"pipeline": 4, "tensor": 2}}
)


def node(name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": gpus}},
    }


def pod(node_name: str | None, planned: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {"paraserve.dev/node": planned} if planned else {}},
        "spec": {
            "nodeName": node_name,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": 1}}}],
        },
        "status": {"phase": "Running" if node_name else "Pending"},
    }


def test_scattered_free_gpus_place_whole_groups_or_nothing():
    # The deadlock the scheduler alone can hit: 4 + 4 free, but in 3 + 1 + 3 + 1 shapes.
    free = {"a": 3, "b": 1, "c": 3, "d": 1}
    assert placement.place_groups(range(4), 2, free) is None
    assert free == {"a": 3, "b": 1, "c": 3, "d": 1}  # nothing taken
    assert placement.place_groups(range(2), 2, free) == {0: "a", 1: "c"}
    assert free == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_best_fit_keeps_big_holes_for_big_groups():
    free = {"big": 8, "small": 2}
    assert placement.place_groups([0], 2, free) == {0: "small"}
    assert free == {"big": 8, "small": 0}


def test_free_counts_bound_pods_and_placed_but_unbound_ones():
    pods = [pod("a"), pod("a"), pod(None, planned="b"), pod(None)]
    pool = Pool.from_objects([node("a", 4), node("b", 4)], pods, SPEC)
    assert placement.free_by_node(pool, pods, "nvidia.com/gpu") == {"a": 2, "b": 3}


def test_pinned_pods_carry_node_affinity_and_the_annotation():
    owner = owned_objects.Owner("d", "ns", "uid")
    pods = owned_objects.replica_pods(
        owner, SPEC, 0, hash_="h", default_image="i", group_nodes={0: "a", 1: "b"}
    )
    pinned = {
        p["metadata"]["name"]: p["metadata"]["annotations"].get("paraserve.dev/node") for p in pods
    }
    assert pinned == {
        "d-0-0": "a",
        "d-0-1": "a",
        "d-0-2": "b",
        "d-0-3": "b",
        "d-0-4": None,
        "d-0-5": None,
        "d-0-6": None,
        "d-0-7": None,
    }
    term = pods[0]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["nodeSelectorTerms"][0]["matchFields"] == [
        {"key": "metadata.name", "operator": "In", "values": ["a"]}
    ]
    # A pinned group needs no pod affinity (all its members go to one node); a group the
    # operator could not place keeps it, so the scheduler still keeps it within a node.
    assert "podAffinity" not in pods[0]["spec"]["affinity"]
    assert set(pods[4]["spec"]["affinity"]) == {"podAffinity"}


def best_fit_by_scanning(groups: list[int], tensor: int, free: dict[str, int]) -> Any:
    """Best fit as first written: every node looked at for every group."""
    trial = dict(free)
    chosen: dict[int, str] = {}
    for group in groups:
        candidates = [(count, name) for name, count in trial.items() if count >= tensor]
        if not candidates:
            return None, free
        _, node = min(candidates)
        trial[node] -= tensor
        chosen[group] = node
    return chosen, trial


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 9), max_size=8),
    st.integers(1, 4),
    st.lists(st.integers(1, 6), min_size=1, max_size=5),
)
def test_bucketed_best_fit_places_as_scanning_every_node(
    free: dict[str, int], tensor: int, asks: list[int]
):
    """Several placements in a row on the same free GPUs, as one reconcile makes them."""
    counts = dict(free)
    gpus = placement.FreeGpus(counts)
    reference = dict(free)
    for groups in asks:
        expected, reference = best_fit_by_scanning(list(range(groups)), tensor, reference)
        assert placement.place_groups(range(groups), tensor, gpus) == expected
        assert counts == reference
