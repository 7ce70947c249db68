"""The generated CRD: current, structural, described, with CEL rules, subresources and columns."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from paraserve.api.crd import crd_yaml, custom_resource_definition
from paraserve.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "inferencedeployments.paraserve.dev.yaml"

# The OpenAPI v3 subset of apiextensions.k8s.io/v1 JSONSchemaProps.
ALLOWED = {
    "type", "format", "title", "description", "default", "maximum", "exclusiveMaximum",
    "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
    "uniqueItems", "multipleOf", "enum", "maxProperties", "minProperties", "required", "items",
    "allOf", "oneOf", "anyOf", "not", "properties", "additionalProperties", "nullable",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-embedded-resource",
}  # fmt: skip
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def schema() -> dict[str, Any]:
    crd = custom_resource_definition()
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_committed_crd_is_current() -> None:
    assert COMMITTED.read_text() == crd_yaml(), "stale CRD: run `make crd` and commit it"


def test_paraserve_crd_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == COMMITTED.read_text()
    assert yaml.safe_load(COMMITTED.read_text())["kind"] == "CustomResourceDefinition"


def test_schema_is_structural() -> None:
    assert schema()["properties"]["metadata"] == {"type": "object"}
    for path, node in walk(schema()):
        assert set(node) <= ALLOWED, f"{path}: keywords outside the OpenAPI subset"
        assert not {"$ref", "definitions", "$defs"} & set(node), path
        # No logical junctors anywhere: int-or-string is expressed by its own extension.
        assert not {"anyOf", "oneOf", "allOf", "not"} & set(node), path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            continue
        assert node.get("type") in TYPES, f"{path}: every node needs a type"
        if node["type"] == "object":
            assert not ("properties" in node and "additionalProperties" in node), path
            if "properties" not in node and "additionalProperties" not in node:
                assert path == ".metadata" or node.get("x-kubernetes-preserve-unknown-fields"), path
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), f"{path}: items must be one schema"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, False), bool), f"{path}: {bound} must be boolean"
        for name in node.get("required", []):
            assert name in node["properties"], f"{path}: required {name} is not a property"
        if "default" in node:
            assert_valid_default(path, node, node["default"])


def assert_valid_default(path: str, node: dict[str, Any], value: Any) -> None:
    python: Any = {
        "object": dict, "array": list, "string": str, "integer": int,
        "number": (int, float), "boolean": bool,
    }[node["type"]]  # fmt: skip
    assert isinstance(value, python), f"{path}: default {value!r} is not {node['type']}"
    if "enum" in node:
        assert value in node["enum"], path
    if "minimum" in node:
        assert value >= node["minimum"], path


def test_every_field_has_a_description() -> None:
    # Array items and map values are not fields: `kubectl explain` shows the field's text.
    fields = [(p, n) for p, n in walk(schema()) if p and not p.endswith(("[]", "{}"))]
    fields = [(p, n) for p, n in fields if p != ".metadata"]  # nothing but type is allowed
    missing = [path for path, node in fields if not node.get("description")]
    assert missing == []


def test_kubectl_explain_parallelism_helps() -> None:
    parallelism = schema()["properties"]["spec"]["properties"]["parallelism"]
    assert "Pipeline" in parallelism["description"]
    assert "adds no GPUs" in parallelism["properties"]["sequence"]["description"]


def test_static_rules_are_enforced_by_the_api_server() -> None:
    spec = schema()["properties"]["spec"]
    parallelism = spec["properties"]["parallelism"]
    for degree in ("pipeline", "tensor", "sequence"):
        assert parallelism["properties"][degree]["minimum"] == 1
        assert parallelism["properties"][degree]["default"] == 1
    rules = [v["rule"] for v in parallelism["x-kubernetes-validations"]]
    assert rules == [
        "self.sequence == 1 || self.sequence == self.tensor",
        "self.pipeline * self.tensor <= 16384",
    ]
    model_rule = spec["properties"]["model"]["x-kubernetes-validations"][0]["rule"]
    assert model_rule.startswith("has(self.parameters) ||")


def test_cel_rules_name_existing_fields() -> None:
    for path, node in walk(schema()):
        for validation in node.get("x-kubernetes-validations", []):
            assert validation["message"], path
            for chain in re.findall(r"self((?:\.\w+)+)", validation["rule"]):
                current = node
                for name in chain.strip(".").split("."):
                    assert name in current.get("properties", {}), f"{path}: {chain}"
                    current = current["properties"][name]


def test_quantities_accept_integers_and_strings() -> None:
    nodes = dict(walk(schema()))
    for path in (
        ".spec.gpu.memory",
        ".spec.memory.overheadPerGpu",
        ".spec.model.parameters",
        ".spec.slo.prefillP99",
    ):
        assert nodes[path]["x-kubernetes-int-or-string"] is True, path


def test_names_subresources_and_columns() -> None:
    crd = custom_resource_definition()
    assert crd["metadata"]["name"] == "inferencedeployments.paraserve.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["infd"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    scale = version["subresources"]["scale"]
    assert version["subresources"]["status"] == {}
    assert scale["specReplicasPath"] == ".spec.replicas"
    nodes = dict(walk(schema()))
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        assert scale[key] in nodes, scale[key]
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == [
        "PP",
        "TP",
        "SP",
        "GPUS",
        "READY",
        "PHASE",
        "MEM",
        "AGE",
    ]
    for column in columns[:-1]:
        assert column["jsonPath"] in nodes, column["jsonPath"]
        assert nodes[column["jsonPath"]]["type"] == column["type"]


DEPLOYMENTS = [
    path
    for path in sorted((ROOT / "examples").glob("*.yaml"))
    if yaml.safe_load(path.read_text()).get("kind") == "InferenceDeployment"
]


def test_there_are_example_deployments() -> None:
    assert len(DEPLOYMENTS) >= 3


@pytest.mark.parametrize("example", DEPLOYMENTS, ids=lambda p: p.name)
def test_examples_survive_pruning(example: Path) -> None:
    """Nothing an example says is unknown to the schema (the API server would drop it)."""
    assert_known(schema(), yaml.safe_load(example.read_text()), "")


def assert_known(node: dict[str, Any], value: Any, path: str) -> None:
    if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string"):
        return
    if isinstance(value, dict) and node.get("type") == "object":
        properties = node.get("properties")
        for key, sub in value.items():
            if properties is None:
                extra = node.get("additionalProperties")
                assert extra is not None or path == ".metadata", f"{path}.{key}"
                if isinstance(extra, dict):
                    assert_known(extra, sub, f"{path}.{key}")
            else:
                assert key in properties, f"{path}.{key} would be pruned"
                assert_known(properties[key], sub, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            assert_known(node["items"], item, f"{path}[]")


def test_what_every_rank_pod_would_carry_has_a_size_limit() -> None:
    """A user-controlled list or string copied into every pod is bounded in the CRD."""
    nodes = dict(walk(schema()))
    for path, keyword, limit in (
        (".spec.worker.args", "maxItems", 256),
        (".spec.worker.args[]", "maxLength", 4096),
        (".spec.worker.command", "maxItems", 256),
        (".spec.worker.command[]", "maxLength", 4096),
        (".spec.worker.env", "maxItems", 256),
        (".spec.worker.env[].name", "maxLength", 253),
        (".spec.worker.env[].value", "maxLength", 8192),
        (".spec.worker.image", "maxLength", 1024),
        (".spec.worker.resources", "maxProperties", 3),
        (".spec.model.name", "maxLength", 1024),
        (".spec.placement.nodeSelector", "maxProperties", 64),
        (".spec.placement.tolerations", "maxItems", 64),
        (".spec.metrics.path", "maxLength", 1024),
    ):
        assert nodes[path].get(keyword) == limit, (path, keyword)


def test_an_oversized_argument_is_one_line_naming_the_field() -> None:
    from paraserve.api import InferenceDeploymentSpec, describe_validation_error

    document = {"model": {"name": "m", "parameters": "7B"}, "worker": {"args": ["x" * 10**6]}}
    with pytest.raises(ValidationError) as error:
        InferenceDeploymentSpec.model_validate(document)
    message = describe_validation_error(error.value, "spec")
    assert message.startswith("spec.worker.args.0: ") and "4096" in message
    assert "\n" not in message
    document["worker"] = {"env": [{"name": "BIG", "value": "x" * 10**5}]}
    with pytest.raises(ValidationError) as error:
        InferenceDeploymentSpec.model_validate(document)
    message = describe_validation_error(error.value, "spec")
    assert message.startswith("spec.worker.env: ") and "env[0] (BIG).value" in message


def test_failure_policy_is_an_optional_block_with_its_bounds_and_defaults() -> None:
    from paraserve.api import FailurePolicy, InferenceDeploymentSpec, parse_duration

    nodes = dict(walk(schema()))
    policy = nodes[".spec.failurePolicy"]
    assert "default" not in policy  # absent stays absent in stored objects
    assert "failurePolicy" not in nodes[".spec"].get("required", [])
    assert nodes[".spec.failurePolicy.maxRestarts"]["type"] == "integer"
    assert nodes[".spec.failurePolicy.maxRestarts"]["minimum"] == 0
    assert nodes[".spec.failurePolicy.maxRestarts"]["maximum"] == 100
    assert "default" not in nodes[".spec.failurePolicy.maxRestarts"]  # unset: unlimited
    window = nodes[".spec.failurePolicy.restartWindow"]
    assert window["x-kubernetes-int-or-string"] is True and window["default"] == "1h"
    # The API server's default and the models' agree.
    assert parse_duration(window["default"]) == FailurePolicy().restart_window == 3600
    stall = nodes[".spec.failurePolicy.stallTimeout"]
    assert stall["x-kubernetes-int-or-string"] is True and "default" not in stall
    parsed = InferenceDeploymentSpec.model_validate({"model": {"name": "m", "parameters": "1B"}})
    assert parsed.failure_policy == FailurePolicy(max_restarts=None, stall_timeout=None)
