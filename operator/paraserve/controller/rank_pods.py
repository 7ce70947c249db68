"""Rank pods as the operator sees them: one parser and one kopf index, for the gang and measurement.

A leaf: it imports only ``paraserve.api``, so reconciling/, running/ and measurement/ can all
read the same value of the same pod.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from paraserve.api.labels import (
    LABEL_DEPLOYMENT,
    LABEL_RANK,
    LABEL_REPLICA,
    LABEL_TEMPLATE_HASH,
    METRICS_ADDRESS_ANNOTATION,
    PLANNED_NODE_ANNOTATION,
)

#: The kopf index of rank pods, by (namespace, deployment); the handler kwarg of that name.
INDEX: Final = "rank_pods"
#: The index covers only pods that carry this label.
SELECTOR: Final = LABEL_DEPLOYMENT

# Phases in which a rank will never run again (restartPolicy Never).
_ENDED: Final = ("Failed", "Succeeded")


@dataclass(frozen=True)
class RankPod:
    """What the operator needs to know of one rank pod (kept in an in-memory index)."""

    name: str
    uid: str
    replica: int
    rank: int
    template_hash: str
    phase: str = "Pending"
    # The pod's Ready condition is True.
    ready: bool = False
    node: str | None = None
    terminating: bool = False
    reason: str = ""
    # uid of the deployment that owns the pod; a deleted namesake's pods are not ours.
    owner_uid: str = ""
    # The node its group was placed on by the operator (before the scheduler binds it).
    planned_node: str | None = None
    # Since when (epoch seconds) the scheduler has found no node for it, if it has not.
    unschedulable_since: float | None = None
    # Since when (epoch seconds) it is bound to a node, if it is.
    scheduled_since: float | None = None
    pod_ip: str | None = None
    # The metrics-address annotation, when set.
    metrics_address: str | None = None

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.terminating

    @property
    def serving(self) -> bool:
        """Running, not being deleted, and Ready: its metrics are worth reading."""
        return self.running and self.ready

    @property
    def broken(self) -> bool:
        """The rank is gone for good: its gang cannot heal."""
        return self.phase in _ENDED or self.terminating

    def stuck(self, now: float, after: float, start_after: float | None = None) -> bool:
        """Unschedulable for longer than `after`, or bound but not started (ContainerCreating:
        a volume that never mounts, an image that never comes) for longer than `start_after`:
        its gang holds GPUs it cannot use."""
        since = self.unschedulable_since
        if not self.node:
            return since is not None and now - since > after
        bound = self.scheduled_since
        return (
            start_after is not None
            and self.phase == "Pending"
            and not self.terminating
            and bound is not None
            and now - bound > start_after
        )

    @property
    def why(self) -> str:
        if self.unschedulable_since is not None and not self.node and not self.broken:
            return f"pod {self.name} could not be scheduled"
        if self.node and self.phase == "Pending" and not self.broken:
            return f"pod {self.name} did not start on node {self.node}"
        if self.terminating:
            return f"pod {self.name} was deleted"
        if self.reason == "Evicted":
            return f"pod {self.name} was evicted"
        return f"pod {self.name} {self.phase.lower()}" + (
            f" ({self.reason})" if self.reason else ""
        )

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> RankPod | None:
        """From a Pod object; None when it does not carry our rank labels."""
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        annotations = metadata.get("annotations") or {}
        status = pod.get("status") or {}
        coordinates = replica_and_rank(labels)
        if coordinates is None:
            return None
        replica, rank = coordinates
        conditions = status.get("conditions") or []
        owners = [o for o in metadata.get("ownerReferences") or [] if o.get("controller")]
        unschedulable = next(
            (
                c.get("lastTransitionTime")
                for c in conditions
                if c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ),
            None,
        )
        scheduled = next(
            (
                c.get("lastTransitionTime")
                for c in conditions
                if c.get("type") == "PodScheduled" and c.get("status") == "True"
            ),
            None,
        )
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return cls(
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            replica=replica,
            rank=rank,
            template_hash=str(labels.get(LABEL_TEMPLATE_HASH, "")),
            phase=str(status.get("phase") or "Pending"),
            ready=ready,
            node=(pod.get("spec") or {}).get("nodeName"),
            terminating=metadata.get("deletionTimestamp") is not None,
            reason=str(status.get("reason") or ""),
            owner_uid=str(owners[0].get("uid", "")) if owners else "",
            planned_node=annotations.get(PLANNED_NODE_ANNOTATION),
            unschedulable_since=_epoch(unschedulable),
            scheduled_since=_epoch(scheduled),
            pod_ip=status.get("podIP") or None,
            metrics_address=annotations.get(METRICS_ADDRESS_ANNOTATION) or None,
        )


def replica_and_rank(labels: Mapping[str, str]) -> tuple[int, int] | None:
    """(replica, rank) read back from a rank pod's labels; None when it carries none."""
    try:
        return int(labels[LABEL_REPLICA]), int(labels[LABEL_RANK])
    except (KeyError, TypeError, ValueError):
        return None


def index_entry(pod: Mapping[str, Any]) -> dict[tuple[str, str], RankPod] | None:
    """The index's entry for one pod: {(namespace, deployment): RankPod}, or None."""
    metadata = pod.get("metadata") or {}
    deployment = (metadata.get("labels") or {}).get(LABEL_DEPLOYMENT)
    rank_pod = RankPod.from_pod(pod)
    if not deployment or rank_pod is None:
        return None
    return {(str(metadata.get("namespace") or ""), str(deployment)): rank_pod}


def _epoch(timestamp: Any) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
