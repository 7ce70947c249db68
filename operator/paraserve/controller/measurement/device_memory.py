"""Per-rank GPU memory from NVIDIA's dcgm-exporter: DCGM_FI_DEV_FB_USED (MiB) by namespace/pod.

vLLM and SGLang export no device-memory figure of a rank; dcgm-exporter does, per GPU, with the
``namespace``, ``pod`` and ``container`` of the pod holding it (from the kubelet's pod-resources
API; ``pod_namespace``/``pod_name`` with its old label names). The exporters are found by a
label selector (the GPU Operator's ``app=nvidia-dcgm-exporter`` by default) and every one is
read; a rank's figure is the largest of its pod's GPUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from paraserve.api.labels import METRICS_ADDRESS_ANNOTATION
from paraserve.controller.measurement.exposition import Exposition

#: The kopf index of exporter pods (one key: every exporter the watch sees).
INDEX: Final = "gpu_exporters"
ALL: Final = "all"
DEFAULT_SELECTOR: Final = "app=nvidia-dcgm-exporter"
DEFAULT_PORT: Final = 9400
FB_USED: Final = "DCGM_FI_DEV_FB_USED"
MIB: Final = 2**20

_NAMESPACE_LABELS: Final = ("namespace", "pod_namespace")
_POD_LABELS: Final = ("pod", "pod_name")


def parse_selector(text: str) -> dict[str, str | None]:
    """``key=value,key2`` (equality and existence) → {key: value or None for "present"}.

    ValueError with the offending term for anything else (set-based terms, empty keys).
    """
    selector: dict[str, str | None] = {}
    for term in (t.strip() for t in text.split(",")):
        if not term:
            raise ValueError(f"label selector {text!r} has an empty term")
        key, eq, value = term.partition("=")
        key, value = key.strip().removesuffix("="), value.strip().removeprefix("=")
        if not key or any(c in key for c in "!()<> ") or (eq and not value):
            raise ValueError(f"label selector term {term!r}: use key=value or key")
        selector[key] = value if eq else None
    return selector


@dataclass(frozen=True)
class ExporterPod:
    """One dcgm-exporter pod: where to read it."""

    name: str
    namespace: str
    uid: str
    pod_ip: str | None = None
    ready: bool = False
    metrics_address: str | None = None

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> ExporterPod:
        metadata = pod.get("metadata") or {}
        status = pod.get("status") or {}
        conditions = status.get("conditions") or []
        return cls(
            name=str(metadata.get("name", "")),
            namespace=str(metadata.get("namespace", "")),
            uid=str(metadata.get("uid", "")),
            pod_ip=status.get("podIP") or None,
            ready=status.get("phase") == "Running"
            and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
            metrics_address=(metadata.get("annotations") or {}).get(METRICS_ADDRESS_ANNOTATION)
            or None,
        )


def used_bytes_by_pod(exposition: Exposition) -> dict[tuple[str, str], float]:
    """(namespace, pod) → bytes of framebuffer used, the largest of the pod's GPUs."""
    out: dict[tuple[str, str], float] = {}
    for labels, value in exposition.samples.get(FB_USED, ()):
        namespace = next((labels[k] for k in _NAMESPACE_LABELS if labels.get(k)), None)
        pod = next((labels[k] for k in _POD_LABELS if labels.get(k)), None)
        if namespace is None or pod is None or value != value:  # NaN
            continue
        key = (namespace, pod)
        out[key] = max(out.get(key, 0.0), value * MIB)
    return out


def merge(readings: Iterable[Mapping[tuple[str, str], float]]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for reading in readings:
        for key, value in reading.items():
            out[key] = max(out.get(key, 0.0), value)
    return out


@dataclass(frozen=True)
class RankMemory:
    """The memory figures of a deployment's ranks, and why some (or all) are missing."""

    used_bytes: tuple[float, ...]
    not_measured: str | None = None


def rank_memory(
    namespace: str,
    pods: Sequence[str],
    by_pod: Mapping[tuple[str, str], float],
    *,
    exporters: int,
    exporters_read: int,
    selector: str,
) -> RankMemory:
    """Join the exporters' figures with the deployment's rank pods on namespace and pod."""
    if exporters == 0:
        return RankMemory(
            (), f"no dcgm-exporter pod matches {selector} (ready, in a served namespace)"
        )
    if exporters_read == 0:
        return RankMemory((), f"none of the {exporters} dcgm-exporter pods could be read")
    found = [by_pod[(namespace, pod)] for pod in pods if (namespace, pod) in by_pod]
    missing = [pod for pod in pods if (namespace, pod) not in by_pod]
    if not missing:
        return RankMemory(tuple(found))
    shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
    return RankMemory(
        tuple(found),
        f"dcgm-exporter reports no {FB_USED} for {len(missing)} of {len(pods)} ranks ({shown})",
    )
