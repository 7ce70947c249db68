"""The pool kept from watch events equals the pool built from scratch, after any events."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paraserve.api import InferenceDeploymentSpec
from paraserve.api.labels import GROUP_SIZE_ANNOTATION, LABEL_DEPLOYMENT, PLANNED_NODE_ANNOTATION
from paraserve.controller.reconciling import placement
from paraserve.planner import Pool
from paraserve.planner.live_pool import LivePool

NODES = ["n0", "n1", "n2", "n3", "n4"]
PODS = [f"p{i}" for i in range(8)]
NAMESPACES = ["a", "b"]
DEPLOYMENTS = ["d0", "d1"]
RESOURCES = ["nvidia.com/gpu", "amd.com/gpu"]


def spec(selector: dict[str, str], resource: str, tolerate: bool) -> InferenceDeploymentSpec:
    return InferenceDeploymentSpec.model_validate(
        {
            "model": {"name": "m", "parameters": "7B"},
            "parallelism": {"pipeline": 1, "tensor": 2},
            "gpu": {"resourceName": resource},
            "placement": {
                "nodeSelector": selector,
                "tolerations": [{"key": "gpu", "operator": "Exists"}] if tolerate else [],
            },
        }
    )


SPECS = [
    spec({}, "nvidia.com/gpu", False),
    spec({"pool": "x"}, "nvidia.com/gpu", False),
    spec({"pool": "x"}, "nvidia.com/gpu", True),
    spec({}, "amd.com/gpu", True),
]

nodes = st.builds(
    lambda name, pool, cordoned, tainted, gpus, amd, memory: {
        "metadata": {
            "name": name,
            "labels": {"pool": pool} | ({"nvidia.com/gpu.memory": memory} if memory else {}),
        },
        "spec": {
            "unschedulable": cordoned,
            "taints": [{"key": "gpu", "effect": "NoSchedule"}] if tainted else [],
        },
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "amd.com/gpu": amd}},
    },
    st.sampled_from(NODES),
    st.sampled_from(["x", "y"]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 8),
    st.sampled_from(["0", "4", "bad"]),
    st.sampled_from([None, "81920", "nope"]),
)


def container(gpus: int, resource: str, limits_only: bool) -> dict[str, Any]:
    section = {resource: str(gpus)}
    resources = {"limits": section} if limits_only else {"requests": section, "limits": section}
    return {"resources": resources}


pods = st.builds(
    lambda name, namespace, node, planned, owner, gpus, resource, limits_only, init, phase: {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_DEPLOYMENT: owner} if owner else {},
            "annotations": {PLANNED_NODE_ANNOTATION: planned} if planned else {},
        },
        "spec": {
            "nodeName": node,
            "containers": [container(g, resource, limits_only) for g in gpus],
            "initContainers": [container(init, resource, False)] if init else [],
        },
        "status": {"phase": phase},
    },
    st.sampled_from(PODS),
    st.sampled_from(NAMESPACES),
    st.sampled_from([None, *NODES, "elsewhere"]),
    st.sampled_from([None, *NODES]),
    st.sampled_from([None, *DEPLOYMENTS]),
    st.lists(st.integers(0, 3), max_size=2),
    st.sampled_from(RESOURCES),
    st.booleans(),
    st.integers(0, 4),
    st.sampled_from(["Pending", "Running", "Succeeded", "Failed", None]),
)

events = st.one_of(
    st.tuples(st.just("put_node"), nodes),
    st.tuples(st.just("remove_node"), st.sampled_from(NODES)),
    st.tuples(st.just("put_pod"), pods),
    st.tuples(st.just("remove_pod"), st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(PODS))),
    st.tuples(st.just("look"), st.integers(0, len(SPECS) - 1)),
)


def owned_by(pod: dict[str, Any], owner: tuple[str, str]) -> bool:
    metadata = pod["metadata"]
    return (metadata["namespace"], metadata["labels"].get(LABEL_DEPLOYMENT)) == owner


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=40))
def test_the_live_pool_equals_the_pool_from_scratch(script: list[tuple[str, Any]]):
    live = LivePool()
    node_objects: dict[str, dict[str, Any]] = {}
    pod_objects: dict[tuple[str, str], dict[str, Any]] = {}
    for action, value in script:
        if action == "put_node":
            live.put_node(value)
            node_objects[value["metadata"]["name"]] = value
        elif action == "remove_node":
            live.remove_node(value)
            node_objects.pop(value, None)
        elif action == "put_pod":
            live.put_pod(value)
            pod_objects[(value["metadata"]["namespace"], value["metadata"]["name"])] = value
        elif action == "remove_pod":
            live.remove_pod(*value)
            pod_objects.pop(value, None)
        else:  # a reconcile looks in between: views are built, then kept by later events
            live.pool(SPECS[value])
        everyone = list(pod_objects.values())
        for target in SPECS:
            fresh = Pool.from_objects(node_objects.values(), everyone, target)
            assert live.pool(target) == fresh
            # What placement sees: every pod, and also the ranks placed but not bound.
            unfinished = [
                p for p in everyone if p["status"]["phase"] not in ("Succeeded", "Failed")
            ]
            resource = target.gpu.resource_name
            assert live.free_by_node(target) == placement.free_by_node(fresh, unfinished, resource)
            for owner in [(n, d) for n in NAMESPACES for d in DEPLOYMENTS]:
                others = [p for p in everyone if not owned_by(p, owner)]
                assert live.pool(target, without=owner) == Pool.from_objects(
                    node_objects.values(), others, target
                )


def test_heartbeats_keep_the_pools_built():
    live = LivePool()
    node = {
        "metadata": {"name": "n0", "labels": {}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }
    live.put_node(node)
    first = live.pool(SPECS[0])
    live.put_node({**node})  # the same node again: nothing the pool reads changed
    assert live.pool(SPECS[0]) is first
    live.put_pod(
        {
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"nodeName": "n0", "containers": [container(3, "nvidia.com/gpu", True)]},
            "status": {"phase": "Running"},
        }
    )
    assert live.pool(SPECS[0]).free == 5 and len(live) == 1


def test_a_snapshot_replaces_what_was_there():
    live = LivePool()
    nodes = [
        {"metadata": {"name": n}, "spec": {}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}}
        for n in ("n0", "n1")
    ]
    pods = [
        {
            "metadata": {"name": p, "namespace": "a"},
            "spec": {"nodeName": "n0", "containers": [container(2, "nvidia.com/gpu", True)]},
            "status": {"phase": "Running"},
        }
        for p in ("p0", "p1")
    ]
    live.set_nodes(nodes)
    live.set_pods(pods)
    assert live.pool(SPECS[0]).free == 12
    live.set_pods(pods[:1])  # p1 is gone
    live.set_nodes(nodes[1:])  # and so is n0, with p0 on it
    assert live.pool(SPECS[0]) == Pool.from_objects(nodes[1:], pods[:1], SPECS[0])
    assert len(live) == 1 and ("a", "p1") not in live


def test_a_node_tainted_and_untainted_is_taken_out_and_put_back_without_a_rebuild(monkeypatch):
    """The node controller taints nodes whose heartbeats lapse and untaints them: at 1,313 nodes
    each rebuild was a pass over every node, on the event loop, in every reconcile."""
    from paraserve.planner import live_pool

    builds: list[int] = []
    pool_nodes = live_pool.pool_nodes
    monkeypatch.setattr(
        live_pool, "pool_nodes", lambda *a, **k: builds.append(1) or pool_nodes(*a, **k)
    )
    live = LivePool()
    nodes = [
        {"metadata": {"name": n}, "spec": {}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}}
        for n in ("n0", "n1", "n2")
    ]
    for node in nodes:
        live.put_node(node)
    assert live.pool(SPECS[0]).free == 24
    lapsed = {**nodes[1], "spec": {"taints": [{"key": "node.kubernetes.io/unreachable",
                                                "effect": "NoSchedule"}]}}  # fmt: skip
    live.put_node(lapsed)
    assert [n.name for n in live.pool(SPECS[0]).nodes] == ["n0", "n2"]
    live.put_node(nodes[1])
    assert live.pool(SPECS[0]) == Pool.from_objects(nodes, [], SPECS[0])
    assert [n.name for n in live.pool(SPECS[0]).nodes] == ["n0", "n1", "n2"]
    assert builds == [1]


def pinned_rank(name: str, rank: int, *, node: str | None, planned: str) -> dict[str, Any]:
    """A rank of deployment d0, replica 0, pinned with its tensor-parallel group of 2."""
    return {
        "metadata": {
            "name": name,
            "namespace": "a",
            "labels": {
                LABEL_DEPLOYMENT: "d0",
                "paraserve.dev/replica": "0",
                "paraserve.dev/rank": str(rank),
            },
            "annotations": {PLANNED_NODE_ANNOTATION: planned, GROUP_SIZE_ANNOTATION: "2"},
        },
        "spec": {
            "nodeName": node,
            "containers": [container(1, "nvidia.com/gpu", False)],
        },
        "status": {"phase": "Running" if node else "Pending"},
    }


def test_a_pinned_group_holds_its_node_for_the_members_not_created_yet():
    # An operator killed while creating a group (or a create lost) leaves one member: the
    # other member's GPU stays spoken for, or another deployment would be placed into it and
    # the member created later could never be scheduled.
    live = LivePool()
    target = SPECS[0]
    for name in ("n0", "n1"):
        live.put_node(
            {
                "metadata": {"name": name, "labels": {}},
                "spec": {},
                "status": {"allocatable": {"nvidia.com/gpu": "8"}},
            }
        )
    assert live.free_by_node(target) == {"n0": 8, "n1": 8}
    live.put_pod(pinned_rank("d0-0-2", 2, node=None, planned="n1"))
    assert live.free_by_node(target) == {"n0": 8, "n1": 6}
    live.put_pod(pinned_rank("d0-0-2", 2, node="n1", planned="n1"))  # bound: still 2 held
    assert live.free_by_node(target) == {"n0": 8, "n1": 6}
    live.put_pod(pinned_rank("d0-0-3", 3, node=None, planned="n1"))  # the other one comes
    assert live.free_by_node(target) == {"n0": 8, "n1": 6}
    live.remove_pod("a", "d0-0-2")  # one goes: the group still holds both GPUs
    assert live.free_by_node(target) == {"n0": 8, "n1": 6}
    live.remove_pod("a", "d0-0-3")  # the whole group is gone
    assert live.free_by_node(target) == {"n0": 8, "n1": 8}
    # A pool asked for before any pod (the resource tracked from then on) sees the same.
    fresh = LivePool()
    for node in live.nodes():
        fresh.put_node(node)
    fresh.put_pod(pinned_rank("d0-0-2", 2, node="n1", planned="n1"))
    assert fresh.free_by_node(target) == {"n0": 8, "n1": 6}
