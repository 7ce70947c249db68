"""Read the local API server's audit log: what one client asked, when, and how it was answered.

The local control plane (e2e/cluster) records the requests of users in its audited group, one
line each when answered (`LocalCluster.user_kubeconfig` makes such a user). Counting a
client's writes or LISTs is then a filter over these lines, with the API server's own clock.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def _epoch(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class AuditEvent:
    """One answered request."""

    user: str
    verb: str
    resource: str  # "pods", "inferencedeployments/status", "leases", …
    namespace: str
    name: str
    code: int
    received: float  # epoch seconds the request arrived
    completed: float  # epoch seconds it was answered
    uri: str

    @property
    def write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def kind(self) -> str:
        """What a write was about, in a person's words: status, owned, event, lease, …"""
        base, _, sub = self.resource.partition("/")
        if base == "inferencedeployments":
            return "status" if sub == "status" else "deployment"
        if base in ("pods", "services", "configmaps"):
            return "owned"
        if base == "events":
            return "event"
        if base == "leases":
            return "lease"
        return base

    @classmethod
    def from_json(cls, data: dict[str, object]) -> AuditEvent:
        ref = data.get("objectRef") or {}
        assert isinstance(ref, dict)
        resource = str(ref.get("resource", ""))
        if ref.get("subresource"):
            resource += f"/{ref['subresource']}"
        user = data.get("user") or {}
        status = data.get("responseStatus") or {}
        assert isinstance(user, dict) and isinstance(status, dict)
        return cls(
            user=str(user.get("username", "")),
            verb=str(data.get("verb", "")),
            resource=resource,
            namespace=str(ref.get("namespace", "")),
            name=str(ref.get("name", "")),
            code=int(status.get("code", 0) or 0),
            received=_epoch(str(data.get("requestReceivedTimestamp") or "")),
            completed=_epoch(str(data.get("stageTimestamp") or "")),
            uri=str(data.get("requestURI", "")),
        )


def read(path: Path, users: Iterable[str] | None = None, since: float = 0.0) -> list[AuditEvent]:
    """Every answered request in the log, of these users (all if None), received since `since`."""
    wanted = set(users) if users is not None else None
    return [
        event
        for event in _events(path)
        if (wanted is None or event.user in wanted) and event.received >= since
    ]


def _events(path: Path) -> Iterator[AuditEvent]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a line being written while we read
        if data.get("stage") in ("ResponseComplete", "Panic"):
            yield AuditEvent.from_json(data)


def tally(events: Iterable[AuditEvent]) -> Counter[tuple[str, str, int]]:
    """(verb, resource, code) → count."""
    return Counter((e.verb, e.resource, e.code) for e in events)


def describe(events: Iterable[AuditEvent]) -> str:
    """A compact table for a test's or a benchmark's output."""
    rows = sorted(tally(events).items(), key=lambda item: (-item[1], item[0]))
    return "\n".join(
        f"  {n:6d}  {verb:8s} {resource:32s} {code}" for (verb, resource, code), n in rows
    )
