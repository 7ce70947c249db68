"""The pool kept from the watch: node and GPU-pod events adjust each node's free GPUs.

`Pool.from_objects` reads every node and every pod: ~0.1 s at 5,000 nodes and 10,000 pods, too
long to spend on an operator's event loop in every reconcile. `LivePool` is told of each node
and pod as the watch sees it and keeps, per GPU resource, what each node's pods use; asking
for the pool of a spec then costs a copy of a tuple, and a change of a node itself (labels,
taints, cordon, allocatable) is taken in at that node's place, without a look at every other.
Its pools equal `Pool.from_objects` over the same nodes and pods (a property test holds them
equal after any sequence of events).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from paraserve.api import InferenceDeploymentSpec, Toleration
from paraserve.api.labels import (
    GROUP_SIZE_ANNOTATION,
    LABEL_DEPLOYMENT,
    LABEL_RANK,
    LABEL_REPLICA,
    PLANNED_NODE_ANNOTATION,
)
from paraserve.planner.pool import (
    Exclusions,
    Pool,
    PoolNode,
    pod_gpu_request,
    pool_member,
    pool_name,
    pool_node,
    pool_nodes,
)

PodKey = tuple[str, str]  # (namespace, name)
Owner = tuple[str, str]  # (namespace, deployment): the rank pods of one deployment
GroupKey = tuple[str, str, int, int]  # (namespace, deployment, replica, group): pinned ranks

_TERMINATED: Final = ("Succeeded", "Failed")
# Distinct (resource, selector, tolerations) kept at once; more are simply built again.
_VIEWS_KEPT: Final = 64


@dataclass
class _PodRecord:
    """A pod that holds GPUs: bound to a node, or placed on one by the operator (annotation)."""

    node: str | None
    planned: str | None
    owner: Owner | None
    spec: Mapping[str, Any]
    # A pinned rank: its tensor-parallel group and how many ranks the group has.
    group: GroupKey | None = None
    group_size: int = 0
    requests: dict[str, int] = field(default_factory=dict)  # by resource, as asked for

    def same_place(self, other: _PodRecord) -> bool:
        return (self.node, self.planned, self.owner, self.spec, self.group, self.group_size) == (
            other.node,
            other.planned,
            other.owner,
            other.spec,
            other.group,
            other.group_size,
        )

    def request(self, resource: str) -> int:
        count = self.requests.get(resource)
        if count is None:
            count = self.requests[resource] = pod_gpu_request(self.spec, resource)
        return count


@dataclass
class _Group:
    """The members seen of one pinned group: the ones not seen hold GPUs on its node."""

    node: str
    size: int
    members: dict[PodKey, _PodRecord] = field(default_factory=dict)

    def missing(self, resource: str) -> int:
        """GPUs of `resource` held for the members not seen (as many as one member asks)."""
        absent = self.size - len(self.members)
        if absent <= 0 or not self.members:
            return 0
        return absent * next(iter(self.members.values())).request(resource)


@dataclass
class _View:
    """The pool of one (resource, selector, tolerations): its nodes in node order."""

    resource: str
    selector: Mapping[str, str]
    tolerations: list[Toleration]
    name: str
    members: list[PoolNode]
    index: dict[str, int]
    excluded: Exclusions
    cached: Pool | None = None

    def update(
        self,
        name: str,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
        used: Mapping[str, int],
        order: Iterable[str],
    ) -> None:
        """Take a node's change in. A node joining the pool in the middle of the node order
        (`order`: every node's name, in order) is put in its place, one leaving is taken out:
        nodes tainted and untainted by the node controller cost no pass over every node."""
        before = self._member(old) if old is not None else None
        after = self._member(new) if new is not None else None
        position = self.index.get(name)
        if isinstance(after, tuple):
            if position is not None:  # stays in: its GPUs or memory changed
                self.members[position] = pool_node(after, used)
            elif old is None:  # a new node: the last in node order
                self.index[name] = len(self.members)
                self.members.append(pool_node(after, used))
            else:  # joins: after the members that come before it
                at = 0
                for other in order:
                    if other == name:
                        break
                    if other in self.index:
                        at += 1
                self.members.insert(at, pool_node(after, used))
                self._reindex(at)
        elif position is not None:  # leaves
            del self.members[position]
            del self.index[name]
            self._reindex(position)
        counts = {f.name: getattr(self.excluded, f.name) for f in fields(Exclusions)}
        if isinstance(before, str):
            counts[before] -= 1
        if isinstance(after, str):
            counts[after] += 1
        self.excluded = Exclusions(**counts)
        self.cached = None

    def _reindex(self, start: int) -> None:
        for position in range(start, len(self.members)):
            self.index[self.members[position].name] = position

    def _member(self, node: Mapping[str, Any]) -> tuple[str, int, int | None] | str:
        return pool_member(node, self.resource, self.selector, self.tolerations)


class LivePool:
    """Nodes and GPU pods as the watch reports them, and the pool of any spec among them."""

    def __init__(self) -> None:
        self._nodes: dict[str, Mapping[str, Any]] = {}
        self._pods: dict[PodKey, _PodRecord] = {}
        self._owned: dict[Owner, set[PodKey]] = {}
        # resource → node → GPUs requested by bound, non-terminated pods.
        self._used: dict[str, dict[str, int]] = {}
        # resource → node → GPUs of pods the operator placed there that are not bound yet.
        self._planned: dict[str, dict[str, int]] = {}
        self._groups: dict[GroupKey, _Group] = {}
        self._views: dict[tuple[Any, ...], _View] = {}

    # -- what the watch says ------------------------------------------------------------------

    def put_node(self, node: Mapping[str, Any]) -> bool:
        """A node was added or changed; whether anything the pool reads changed (a heartbeat
        changes nothing and costs nothing)."""
        name = str((node.get("metadata") or {}).get("name", ""))
        old = self._nodes.get(name)
        if old == node:
            return False
        self._nodes[name] = node
        for view in self._views.values():
            view.update(name, old, node, self._used[view.resource], self._nodes)
        return True

    def remove_node(self, name: str) -> bool:
        old = self._nodes.pop(name, None)
        if old is None:
            return False
        for view in self._views.values():
            view.update(name, old, None, self._used[view.resource], self._nodes)
        return True

    def put_pod(self, pod: Mapping[str, Any]) -> bool:
        """A pod was added or changed (one finished, or holding no GPU anywhere, is dropped);
        whether the GPUs it holds changed."""
        metadata = pod.get("metadata") or {}
        key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        record = _record(pod)
        old = self._pods.get(key)
        if old is not None and record is not None and old.same_place(record):
            return False  # its status moved on (running, ready): its GPUs did not
        self.remove_pod(*key)
        if record is None:
            return old is not None
        self._pods[key] = record
        self._count(record, +1)
        if record.owner is not None:
            self._owned.setdefault(record.owner, set()).add(key)
        self._join(key, record)
        return True

    def remove_pod(self, namespace: str, name: str) -> bool:
        key = (namespace, name)
        old = self._pods.pop(key, None)
        if old is None:
            return False
        self._count(old, -1)
        self._disown(key, old)
        self._leave(key, old)
        return True

    def set_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        """The nodes are exactly these now (a snapshot, as a list or an index gives it)."""
        given = {str((n.get("metadata") or {}).get("name", "")): n for n in nodes}
        for name in [name for name in self._nodes if name not in given]:
            self.remove_node(name)
        for node in given.values():
            self.put_node(node)

    def set_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """The GPU pods are exactly these now."""
        given = {}
        for pod in pods:
            metadata = pod.get("metadata") or {}
            given[(str(metadata.get("namespace", "")), str(metadata.get("name", "")))] = pod
        for key in [key for key in self._pods if key not in given]:
            self.remove_pod(*key)
        for pod in given.values():
            self.put_pod(pod)

    # -- what a reconcile asks ----------------------------------------------------------------

    def pool(self, spec: InferenceDeploymentSpec, *, without: Owner | None = None) -> Pool:
        """`Pool.from_objects(nodes, pods, spec)`, leaving out the pods of deployment `without`
        (a deployment sees its own ranks' GPUs as free)."""
        view = self._view(spec)
        if view.cached is None:
            view.cached = Pool(name=view.name, nodes=tuple(view.members), excluded=view.excluded)
        own = self._own_use(view, without) if without is not None else {}
        if not own:
            return view.cached
        members = list(view.members)
        used = self._used[view.resource]
        for node, count in own.items():
            position = view.index[node]
            member = members[position]
            members[position] = PoolNode(
                name=member.name,
                allocatable=member.allocatable,
                free=max(0, member.allocatable - (used.get(node, 0) - count)),
                gpu_memory_bytes=member.gpu_memory_bytes,
            )
        return Pool(name=view.name, nodes=tuple(members), excluded=view.excluded)

    def free_by_node(self, spec: InferenceDeploymentSpec) -> dict[str, int]:
        """Free GPUs of each pool node counting every pod, also those placed but not bound."""
        view = self._view(spec)
        planned = self._planned[view.resource]
        if not planned:
            return {member.name: member.free for member in view.members}
        return {
            member.name: max(0, member.free - planned.get(member.name, 0))
            for member in view.members
        }

    def nodes(self) -> list[Mapping[str, Any]]:
        return list(self._nodes.values())

    def __contains__(self, key: object) -> bool:
        """A pod (namespace, name) the watch has shown holding GPUs (bound or placed)."""
        return key in self._pods

    def __len__(self) -> int:
        """Pods that hold GPUs (bound or placed)."""
        return len(self._pods)

    # -- inside -------------------------------------------------------------------------------

    def _view(self, spec: InferenceDeploymentSpec) -> _View:
        resource = spec.gpu.resource_name
        selector = spec.placement.node_selector
        tolerations = spec.placement.tolerations
        key = (resource, tuple(sorted(selector.items())), _tolerations_key(tolerations))
        view = self._views.get(key)
        if view is None:
            if len(self._views) >= _VIEWS_KEPT:
                self._views.clear()
            view = self._views[key] = self._build(resource, selector, tolerations)
        return view

    def _build(
        self, resource: str, selector: Mapping[str, str], tolerations: list[Toleration]
    ) -> _View:
        used = self._track(resource)
        members, excluded = pool_nodes(self._nodes.values(), resource, selector, tolerations, used)
        return _View(
            resource=resource,
            selector=dict(selector),
            tolerations=list(tolerations),
            name=pool_name(selector),
            members=members,
            index={member.name: position for position, member in enumerate(members)},
            excluded=excluded,
        )

    def _track(self, resource: str) -> dict[str, int]:
        """The use of `resource` by node, counted once from every pod the first time it is
        asked for, then kept by every pod event."""
        used = self._used.get(resource)
        if used is None:
            used = self._used[resource] = {}
            planned = self._planned[resource] = {}
            for record in self._pods.values():
                _add(used, planned, record, resource, +1)
            for group in self._groups.values():
                _hold(planned, group, resource, +1)
        return used

    def _join(self, key: PodKey, record: _PodRecord) -> None:
        """A pinned rank seen: its group holds one GPU share less for members not seen."""
        if record.group is None:
            return
        group = self._groups.get(record.group)
        if group is None:
            node = str(record.node or record.planned)
            group = self._groups[record.group] = _Group(node=node, size=record.group_size)
        self._held(group, -1)
        group.members[key] = record
        self._held(group, +1)

    def _leave(self, key: PodKey, record: _PodRecord) -> None:
        if record.group is None:
            return
        group = self._groups.get(record.group)
        if group is None:
            return
        self._held(group, -1)
        group.members.pop(key, None)
        if group.members:
            self._held(group, +1)
        else:
            del self._groups[record.group]

    def _held(self, group: _Group, sign: int) -> None:
        for resource, planned in self._planned.items():
            _hold(planned, group, resource, sign)

    def _count(self, record: _PodRecord, sign: int) -> None:
        for resource, used in self._used.items():
            node = _add(used, self._planned[resource], record, resource, sign)
            if node is None or record.node is None:
                continue  # nothing used, or only placed: free_by_node reads it, pools do not
            for view in self._views.values():
                position = view.index.get(node)
                if view.resource != resource or position is None:
                    continue
                member = view.members[position]
                view.members[position] = PoolNode(
                    name=member.name,
                    allocatable=member.allocatable,
                    free=max(0, member.allocatable - used.get(node, 0)),
                    gpu_memory_bytes=member.gpu_memory_bytes,
                )
                view.cached = None

    def _disown(self, key: PodKey, record: _PodRecord) -> None:
        if record.owner is None:
            return
        owned = self._owned.get(record.owner)
        if owned is not None:
            owned.discard(key)
            if not owned:
                del self._owned[record.owner]

    def _own_use(self, view: _View, owner: Owner) -> dict[str, int]:
        own: dict[str, int] = {}
        for key in self._owned.get(owner, ()):
            record = self._pods[key]
            if record.node is not None and record.node in view.index:
                count = record.request(view.resource)
                if count:
                    own[record.node] = own.get(record.node, 0) + count
        return own


def _add(
    used: dict[str, int], planned: dict[str, int], record: _PodRecord, resource: str, sign: int
) -> str | None:
    """Add (or take away) the pod's GPUs of `resource` where it is; the node, if any."""
    count = record.request(resource)
    node = record.node or record.planned
    if not count or node is None:
        return None
    counts = used if record.node is not None else planned
    total = counts.get(node, 0) + sign * count
    if total:
        counts[node] = total
    else:
        counts.pop(node, None)
    return node


def _hold(planned: dict[str, int], group: _Group, resource: str, sign: int) -> None:
    count = group.missing(resource)
    if not count:
        return
    total = planned.get(group.node, 0) + sign * count
    if total:
        planned[group.node] = total
    else:
        planned.pop(group.node, None)


def _record(pod: Mapping[str, Any]) -> _PodRecord | None:
    spec = pod.get("spec") or {}
    if (pod.get("status") or {}).get("phase") in _TERMINATED:
        return None
    metadata = pod.get("metadata") or {}
    node = spec.get("nodeName") or None
    planned = (
        ((metadata.get("annotations") or {}).get(PLANNED_NODE_ANNOTATION) or None)
        if (node is None)
        else None
    )
    if node is None and planned is None:
        return None
    labels = metadata.get("labels") or {}
    deployment = labels.get(LABEL_DEPLOYMENT)
    namespace = str(metadata.get("namespace", ""))
    owner = (namespace, str(deployment)) if deployment else None
    group, size = _pinned_group(namespace, labels, metadata.get("annotations") or {})
    return _PodRecord(
        node=node, planned=planned, owner=owner, spec=spec, group=group, group_size=size
    )


def _pinned_group(
    namespace: str, labels: Mapping[str, Any], annotations: Mapping[str, Any]
) -> tuple[GroupKey | None, int]:
    """The pinned group a rank belongs to and its size, from the rank's labels and the group
    annotation; (None, 0) for any other pod."""
    try:
        size = int(annotations.get(GROUP_SIZE_ANNOTATION) or 0)
        replica, rank = int(labels[LABEL_REPLICA]), int(labels[LABEL_RANK])
    except (KeyError, TypeError, ValueError):
        return None, 0
    deployment = labels.get(LABEL_DEPLOYMENT)
    if size < 2 or not deployment:
        return None, 0
    return (namespace, str(deployment), replica, rank // size), size


def _tolerations_key(tolerations: Iterable[Toleration]) -> tuple[str, ...]:
    return tuple(json.dumps(t.to_wire(), sort_keys=True) for t in tolerations)
