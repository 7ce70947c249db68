"""The pool: selected, schedulable, tolerated nodes with GPUs; free = allocatable − requests."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.builders import node, pod, pool_of, spec

from paraserve.api import parse_bytes
from paraserve.planner import Pool, pod_gpu_request


def test_pool_counts_allocatable_and_free_gpus() -> None:
    target = spec()
    pool = pool_of(
        target,
        [node("a", 8), node("b", 4)],
        [pod("a", 2), pod("b", 1, name="p2"), pod("a", 1, phase="Succeeded", name="done")],
    )
    assert pool.name == "a100-80g"
    assert [n.name for n in pool.nodes] == ["a", "b"]
    assert pool.allocatable == 12
    assert pool.free == 9
    assert pool.largest_node == 8
    assert pool.describe() == "1 node × 8 + 1 node × 4"
    assert pool.describe(free=True) == "1 node × 6 + 1 node × 3"
    assert pool.groups_that_fit(4) == 3
    assert pool.groups_that_fit(4, free=True) == 1


def test_pool_excludes_unselected_cordoned_tainted_and_gpu_less_nodes() -> None:
    target = spec()
    nodes = [
        node("ok"),
        node("other-pool", pool="h100"),
        node("no-label", pool=None),
        node("cordoned", unschedulable=True),
        node("tainted", taints=[{"key": "maintenance", "effect": "NoSchedule"}]),
        node("evicting", taints=[{"key": "x", "value": "y", "effect": "NoExecute"}]),
        node("prefers-not", taints=[{"key": "soft", "effect": "PreferNoSchedule"}]),
        node("cpu-only", gpus=None),
        node("zero", gpus=0),
    ]
    pool = pool_of(target, nodes)
    assert [n.name for n in pool.nodes] == ["ok", "prefers-not"]
    excluded = pool.excluded
    assert (excluded.not_selected, excluded.cordoned, excluded.tainted, excluded.without_gpus) == (
        2,
        1,
        2,
        2,
    )


def test_tolerated_taints_keep_a_node() -> None:
    target = spec(placement={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]})
    tainted = node(
        "gpu", taints=[{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    )
    assert [n.name for n in pool_of(target, [tainted]).nodes] == ["gpu"]


def test_empty_selector_takes_every_node() -> None:
    target = spec(placement={"nodeSelector": {}})
    pool = pool_of(target, [node("a", pool="x"), node("b", pool=None)])
    assert pool.name == "all nodes" and len(pool.nodes) == 2


def test_custom_gpu_resource_name() -> None:
    target = spec(gpu={"resourceName": "amd.com/gpu"})
    pool = pool_of(target, [node("amd", 8, resource="amd.com/gpu"), node("nvidia", 8)])
    assert [n.name for n in pool.nodes] == ["amd"]


def test_gpu_memory_is_the_smallest_label_in_mib() -> None:
    target = spec()
    pool = pool_of(
        target,
        [node("a", memory_mib=81920), node("b", memory_mib=40960), node("c", memory_mib=None)],
    )
    assert pool.gpu_memory_bytes == 40960 * 2**20
    assert pool_of(target, [node("c", memory_mib=None)]).gpu_memory_bytes is None


def test_pod_requests_follow_the_scheduler() -> None:
    assert pod_gpu_request(pod("a", 2)["spec"], "nvidia.com/gpu") == 2
    assert pod_gpu_request(pod("a", 3, limits_only=True)["spec"], "nvidia.com/gpu") == 3
    assert pod_gpu_request(pod("a", 1, init_gpus=4)["spec"], "nvidia.com/gpu") == 4
    assert pod_gpu_request({"containers": [{"name": "x"}]}, "nvidia.com/gpu") == 0


def test_unbound_and_terminated_pods_use_no_gpus() -> None:
    target = spec()
    pods = [pod(None, 8), pod("gpu-node-0", 8, phase="Failed"), pod("elsewhere", 8)]
    assert pool_of(target, pods=pods).free == 8


def test_free_never_goes_negative() -> None:
    assert pool_of(spec(), pods=[pod("gpu-node-0", 12)]).free == 0


def test_malformed_objects_are_tolerated() -> None:
    pool = Pool.from_objects(
        [{}, {"metadata": None, "status": {"allocatable": {"nvidia.com/gpu": "x"}}}],
        [{}],
        spec(placement={"nodeSelector": {}}),
    )
    assert pool.nodes == ()


# Objects as a cluster (or a hand-written file) may hold them: well-formed or not.
quantities = st.one_of(
    st.none(), st.integers(-2, 9), st.sampled_from(["0", "1", "8", "2k", "x", "-1", "1.5", ""])
)
resources = st.dictionaries(st.sampled_from(["nvidia.com/gpu", "cpu"]), quantities, max_size=2)
held = st.fixed_dictionaries({}, optional={"requests": resources, "limits": resources})
containers = st.one_of(
    st.fixed_dictionaries({}, optional={"resources": held | st.none()}),
    st.none(),
    st.just("text"),
)
pod_specs = st.fixed_dictionaries(
    {},
    optional={
        "containers": st.lists(containers, max_size=3) | st.none() | st.just({}),
        "initContainers": st.lists(containers, max_size=3) | st.none(),
    },
)


def scheduler_request(pod_spec: dict[str, Any], resource: str) -> int:
    """The effective request, written as the scheduler's rule reads."""

    def mapping(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    def gpus(container: Any) -> int:
        held = mapping(mapping(container).get("resources"))
        for part in ("requests", "limits"):  # a limit alone implies the request
            value = mapping(held.get(part)).get(resource)
            try:
                count = parse_bytes(value) if value is not None else 0
            except ValueError:
                count = 0
            if count:
                return count
        return 0

    def listed(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    total = sum(gpus(c) for c in listed(pod_spec.get("containers")))
    init = max((gpus(c) for c in listed(pod_spec.get("initContainers"))), default=0)
    return max(total, init)


@settings(max_examples=500, deadline=None)
@given(pod_specs)
def test_pod_request_is_the_schedulers_rule(pod_spec: dict[str, Any]) -> None:
    assert pod_gpu_request(pod_spec, "nvidia.com/gpu") == scheduler_request(
        pod_spec, "nvidia.com/gpu"
    )
