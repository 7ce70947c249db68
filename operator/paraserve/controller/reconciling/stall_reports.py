"""Which of the measurement loop's stall reports (`status.measured.stalledReplicas`) still apply.

The measurement loop observes a stall and writes it; the reconcile owns the gang and restarts
it. A report names the head pod's uid, so once the replica is recreated the old report no
longer matches any pod and is ignored: acting on it twice is impossible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from paraserve.api import StalledReplica
from paraserve.controller.rank_pods import RankPod


def stalled_replicas(measured: Mapping[str, Any] | None, pods: Iterable[RankPod]) -> dict[int, str]:
    """Replica → what was seen, for each report whose head pod is still the replica's head."""
    heads = {p.replica: p.uid for p in pods if p.rank == 0 and not p.terminating}
    reports = (measured or {}).get("stalledReplicas") if isinstance(measured, Mapping) else None
    out: dict[int, str] = {}
    for item in reports if isinstance(reports, list) else ():
        try:
            report = StalledReplica.model_validate(item)
        except ValidationError:
            continue  # hand-edited status: not a reason to restart anything
        if heads.get(report.replica) == report.head_uid:
            out[report.replica] = report.message or f"replica {report.replica} stalled"
    return out
