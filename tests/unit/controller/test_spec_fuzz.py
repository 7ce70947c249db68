"""Chaos: 10,000 specs generated from the CRD's own OpenAPI schema, through the webhook's review
and the reconcile (its validation, plan, gang decision and status) → no exception, and every
refusal is one line that names the field it is about.

The generator makes what the API server would admit: values of the CRD's structural schema
(types, bounds, enums, patterns, nullable, int-or-string, no unknown fields), with the schema's
defaults applied as the API server applies them. The CEL rules are not enforced (most specs
are nudged toward them, some are not), so the operator also meets specs only those rules would
refuse. A refusal names its field, or the value the user wrote there. PARASERVE_FUZZ_EXAMPLES
sets the count.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import random
import re
import string
import sys
import time
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from paraserve.controller.admission.review import review
from paraserve.controller.reconciling.reconcile import (
    ALL,
    INVALID_NAME,
    INVALID_SPEC,
    ControllerSettings,
    Reconciler,
    Views,
)
from paraserve.controller.running.cluster_io import Cluster
from paraserve.controller.running.operator_metrics import OperatorMetrics
from paraserve.planner import codes

pytestmark = pytest.mark.chaos

CRD = Path(__file__).resolve().parents[3] / "crds" / "inferencedeployments.paraserve.dev.yaml"
EXAMPLES = int(os.environ.get("PARASERVE_FUZZ_EXAMPLES", "10000"))
POOL = {"paraserve.dev/pool": "fuzz"}
NAMESPACE = "fuzz"
# A status the API server can store (its limit is 3 MiB per object, spec included).
STATUS_LIMIT = 1024 * 1024

# What each refusal must name, by code: the field, or the figure a person wrote there.
NAMES: Mapping[str, Sequence[str]] = {
    INVALID_NAME: ("name",),
    codes.INVALID_PARALLELISM: ("parallelism", "pipeline", "tensor", "sequence", "PP", "TP", "SP"),
    codes.NO_MATCHING_NODES: ("nodeSelector", "tolerations", "placement", "resourceName"),
    codes.TENSOR_PARALLEL_EXCEEDS_NODE: ("tensor", "TP"),
    codes.INSUFFICIENT_GPUS: ("PP", "TP", "replicas", "pipeline", "tensor"),
    codes.MEMORY_LIMIT_EXCEEDED: ("memory", "maxMemoryUtilization", "overheadPerGpu"),
}


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


class SpecGenerator:
    """Random values of a structural schema (what the API server admits, its CEL rules aside),
    leaning on the edges: bounds, zero, huge figures, empty and odd strings, quantities."""

    SUFFIXES = ("", "", "Ki", "Mi", "Gi", "Ti", "K", "M", "G", "T", "B", "e9", "E", "P", "m", "xB")
    TEXT = ("", "x", " ", "7B", "80Gi", "-1", "1e400", "nan", "∞", "ä" * 3, "a" * 300, "0x10")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, node: Mapping[str, Any]) -> Any:
        rng = self.rng
        if node.get("nullable") and rng.random() < 0.1:
            return None
        if node.get("x-kubernetes-int-or-string"):
            return self.quantity()
        if "enum" in node:
            return rng.choice(list(node["enum"]))
        kind = node.get("type")
        if kind == "string":
            return self.string(node)
        if kind == "integer":
            low, high = node.get("minimum", -(2**63)), node.get("maximum", 2**63 - 1)
            edges = [low, high, low + 1, min(high, max(low, 0)), min(high, max(low, 1))]
            small = rng.randint(max(low, 0), max(max(low, 0), min(high, 16)))
            return rng.choice([*edges, small, small, small, rng.randint(low, high)])
        if kind == "number":
            low, high = node.get("minimum", -1e12), node.get("maximum", 1e12)
            if node.get("exclusiveMinimum"):
                low = math.nextafter(low, math.inf)
            if node.get("exclusiveMaximum"):
                high = math.nextafter(high, -math.inf)
            return rng.choice([low, high, rng.uniform(low, high), rng.uniform(low, high)])
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "array":
            items = node.get("items") or {}
            return [self.value(items) for _ in range(rng.choice((0, 0, 1, 2, 5)))]
        if "properties" in node:
            # The API server prunes unknown fields: a stored spec carries none.
            required = set(node.get("required") or ())
            return {
                key: self.value(child)
                for key, child in node["properties"].items()
                if key in required or rng.random() < 0.5
            }
        if isinstance(node.get("additionalProperties"), Mapping):
            child = node["additionalProperties"]
            return {self.text(1): self.value(child) for _ in range(rng.choice((0, 1, 1, 3)))}
        if kind == "object":  # x-kubernetes-preserve-unknown-fields: an object, any content
            return {self.text(1): self.anything(1) for _ in range(rng.choice((0, 1, 2)))}
        return self.anything(2)

    def quantity(self) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            return rng.choice([0, 1, -1, 7_000_000_000, 2**63 - 1, rng.randint(1, 10**12)])
        if roll < 0.85:
            number = rng.choice([rng.randint(0, 2000), round(rng.uniform(0, 500), 2), 0, 1])
            return f"{number}{rng.choice(self.SUFFIXES)}"
        return rng.choice(self.TEXT)

    def string(self, node: Mapping[str, Any]) -> str:
        low = node.get("minLength", 0)
        text = self.text(low)
        return "/" + text if node.get("pattern") == "^/" else text

    def text(self, least: int = 0) -> str:
        rng = self.rng
        if rng.random() < 0.3:
            text = rng.choice(self.TEXT)
        else:
            alphabet = string.ascii_letters + string.digits + "-._/:= ü"
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        return text if len(text) >= least else text + "m" * (least - len(text))

    def anything(self, depth: int) -> Any:
        rng = self.rng
        if depth == 0 or rng.random() < 0.5:
            return rng.choice([None, True, 0, -5, 1.5, self.text()])
        if rng.random() < 0.5:
            return [self.anything(depth - 1) for _ in range(rng.randint(0, 2))]
        return {self.text(1): self.anything(depth - 1) for _ in range(rng.randint(0, 2))}

    def spec(self, schema: Mapping[str, Any]) -> Any:
        """A spec; most are nudged toward the CEL rules, so the planner sees them too."""
        rng = self.rng
        spec = self.value(schema)
        if rng.random() < 0.7:
            model = spec.setdefault("model", {"name": "m"})
            if not model.get("parameters") and rng.random() < 0.8:
                model["parameters"] = rng.choice(["7B", "70B", "1B", 7e9, "405B", "0.5B"])
            parallelism = spec.get("parallelism")
            if isinstance(parallelism, dict) and "sequence" in parallelism:
                parallelism["sequence"] = rng.choice([1, parallelism.get("tensor", 1)])
        return spec


def defaulted(node: Mapping[str, Any], value: Any) -> Any:
    """The value with the schema's defaults filled in, as the API server stores it."""
    if isinstance(value, dict) and "properties" in node:
        result = dict(value)
        for key, child in node["properties"].items():
            if key not in result and "default" in child:
                result[key] = copy.deepcopy(child["default"])
            if key in result:
                result[key] = defaulted(child, result[key])
        return result
    if isinstance(value, dict) and isinstance(node.get("additionalProperties"), Mapping):
        return {k: defaulted(node["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and "items" in node:
        return [defaulted(node["items"], v) for v in value]
    return value


def node(name: str, gpus: int = 8) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {**POOL, "nvidia.com/gpu.memory": "81920"}},
        "spec": {"unschedulable": False, "taints": []},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


class RecordingCluster(Cluster):
    """The reconcile's writes, kept instead of sent: this test is about the operator alone."""

    def __init__(self) -> None:
        super().__init__(None)
        self.status: list[dict[str, Any]] = []
        self.created = 0

    async def create(self, obj: Mapping[str, Any]) -> bool:
        self.created += 1
        return True

    async def apply(self, obj: Mapping[str, Any]) -> None:
        return None

    async def delete_pods(self, namespace: str, pods: Sequence[tuple[str, str]]) -> None:
        return None

    async def delete_object(self, kind: str, namespace: str, name: str, uid: str) -> None:
        return None

    async def namespace_terminating(self, namespace: str) -> bool:
        return False

    async def patch_deployment(
        self, namespace: str, name: str, patch: dict[str, Any], **_: Any
    ) -> dict[str, Any] | None:
        if "status" in patch:
            self.status.append(patch["status"])
        return {"metadata": {"resourceVersion": "2"}}

    async def post_event(self, involved: Mapping[str, Any], **_: Any) -> None:
        return None


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.crashes: list[str] = []
        self.bad_refusals: list[str] = []
        self.codes: Counter[str] = Counter()
        self.largest_status = 0
        self.slowest = (0.0, "")


TALLY = Tally()
METRICS = OperatorMetrics()
SCHEMA = spec_schema()
NAME = re.compile(r"^spec\.[a-zA-Z]+")


def mentioned(spec: Any, code: str) -> list[str]:
    """What a refusal with this code may name: the fields, or the values the user wrote there
    (a pool is named by its selector's values, a GPU by its resource name)."""
    words = list(NAMES.get(code, ()))
    if code == codes.NO_MATCHING_NODES and isinstance(spec, dict):
        gpu, placement = spec.get("gpu") or {}, spec.get("placement") or {}
        words += [str(gpu.get("resourceName") or "nvidia.com/gpu")]
        words += [str(v) for v in (placement.get("nodeSelector") or {}).values()]
        words += [str(t.get("key")) for t in placement.get("tolerations") or [] if t.get("key")]
    return words


def refusal_problem(code: str, message: str, spec: Any) -> str | None:
    """Why a refusal's message is not one line naming its field; None when it is."""
    if "\n" in message or not message.strip():
        return "not one line"
    if code == INVALID_SPEC:
        return None if NAME.match(message) else "names no spec field"
    words = mentioned(spec, code)
    if words and not any(word in message for word in words):
        return f"names none of {', '.join(words)}"
    return None


def check(runner: asyncio.Runner, raw: Any, *, name: str, on_pool: bool, pool_known: bool) -> None:
    spec = defaulted(SCHEMA, raw)
    if on_pool and isinstance(spec, dict):
        spec["placement"] = {**(spec.get("placement") or {}), "nodeSelector": dict(POOL)}
    key = (NAMESPACE, name)
    views = Views()
    views.nodes = {ALL: [node("fuzz-0"), node("fuzz-1")]}
    views.gpu_pods = {ALL: []}
    cluster = RecordingCluster()
    reconciler = Reconciler(cluster, views, ControllerSettings(), METRICS)
    views.deployments = {
        key: [
            {
                "metadata": {"name": name, "namespace": NAMESPACE, "uid": "u", "generation": 1},
                "spec": spec,
                "status": {},
            }
        ]
    }
    started = time.monotonic()
    TALLY.cases += 1
    answer = None
    try:
        answer = review(reconciler, key, spec, pool_known)
        runner.run(reconciler.reconcile(key))
    except Exception as error:
        where = traceback.extract_tb(error.__traceback__)[-1]
        TALLY.crashes.append(
            f"{type(error).__name__}: {error} at {Path(where.filename).name}:{where.lineno} "
            f"← {json.dumps(spec)[:300]}"
        )
        return
    finally:
        elapsed = time.monotonic() - started
        if elapsed > TALLY.slowest[0]:
            TALLY.slowest = (elapsed, json.dumps(spec)[:200])
    if answer.refusal is not None:
        code, message = answer.refusal.code, answer.refusal.message
        TALLY.codes[code] += 1
        if problem := refusal_problem(code, message, spec):
            TALLY.bad_refusals.append(f"{code} ({problem}): {message[:200]!r}")
    else:
        TALLY.codes["admitted"] += 1
    for status in cluster.status:
        size = len(json.dumps(status))
        TALLY.largest_status = max(TALLY.largest_status, size)
        validated = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Validated"), None
        )
        refused = validated is not None and validated.get("status") == "False"
        if refused and (
            problem := refusal_problem(validated["reason"], validated["message"], spec)
        ):
            TALLY.bad_refusals.append(f"status {validated['reason']} ({problem})")


NAMES_TO_TRY = ("fuzz", "a" * 50, "x", "llama-70b", "d" * 63)


def test_ten_thousand_specs_from_the_crd_schema(capsys: pytest.CaptureFixture[str]) -> None:
    generator = SpecGenerator(seed=20260)
    started = time.monotonic()
    with asyncio.Runner() as runner:
        for _ in range(EXAMPLES):
            rng = generator.rng
            check(
                runner,
                generator.spec(SCHEMA),
                name=rng.choice(NAMES_TO_TRY),
                on_pool=rng.random() < 0.7,
                pool_known=rng.random() < 0.8,
            )
    elapsed = time.monotonic() - started
    sites = Counter(crash.split(" ← ")[0].rsplit(" at ", 1)[-1] for crash in TALLY.crashes)
    lines = [
        f"cases run: {TALLY.cases} in {elapsed:.0f} s (slowest {TALLY.slowest[0]:.2f} s)",
        f"crashes: {len(TALLY.crashes)}, at "
        + (", ".join(f"{site} ×{n}" for site, n in sites.most_common()) or "no site"),
        *(f"  e.g. {crash[:400]}" for crash in TALLY.crashes[:2]),
        f"refusals that are not one line naming the field: {len(TALLY.bad_refusals)}",
        *(f"  {bad}" for bad in TALLY.bad_refusals[:5]),
        "verdicts: " + ", ".join(f"{code} {n}" for code, n in TALLY.codes.most_common()),
        f"largest status written: {TALLY.largest_status:,} bytes",
    ]
    with capsys.disabled():
        sys.stdout.write("\n--- chaos: specs from the CRD schema ---\n" + "\n".join(lines) + "\n")
    assert TALLY.cases >= EXAMPLES
    assert not TALLY.crashes, TALLY.crashes[:5]
    assert not TALLY.bad_refusals, TALLY.bad_refusals[:5]
    assert TALLY.largest_status < STATUS_LIMIT, TALLY.slowest
