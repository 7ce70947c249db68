"""The CustomResourceDefinition, generated from the models: a structural OpenAPI v3 schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from paraserve.api.constants import CRD_NAME, GROUP, KIND, LIST_KIND, PLURAL, SHORT_NAMES, SINGULAR
from paraserve.api.constants import VERSION as API_VERSION_NAME
from paraserve.api.spec import InferenceDeploymentSpec
from paraserve.api.status import InferenceDeploymentStatus

# Keywords of JSON Schema that the apiextensions OpenAPI v3 subset accepts as they are.
_PASSTHROUGH = {
    "description",
    "default",
    "enum",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "pattern",
    "required",
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "PP", "type": "integer", "jsonPath": ".spec.parallelism.pipeline",
     "description": "Pipeline-parallel degree."},
    {"name": "TP", "type": "integer", "jsonPath": ".spec.parallelism.tensor",
     "description": "Tensor-parallel degree."},
    {"name": "SP", "type": "integer", "jsonPath": ".spec.parallelism.sequence",
     "description": "Sequence-parallel degree."},
    {"name": "GPUS", "type": "integer", "jsonPath": ".status.gpusRequired",
     "description": "GPUs required: replicas × pipeline × tensor."},
    {"name": "READY", "type": "string", "jsonPath": ".status.ranks.summary",
     "description": "Ready ranks / total ranks."},
    {"name": "PHASE", "type": "string", "jsonPath": ".status.phase",
     "description": "Lifecycle phase."},
    {"name": "MEM", "type": "string", "jsonPath": ".status.memory",
     "description": "Worst-GPU memory: measured, or ~estimate before measurement."},
    {"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]  # fmt: skip


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema as a structural schema: refs inlined, nullables unwrapped."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    definitions = schema.pop("$defs", {})
    return _structural(schema, definitions)


def _structural(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = definitions[node.pop("$ref").rsplit("/", 1)[-1]]
        # The field's own description and default win over the referenced model's.
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**_resolve(node.pop("allOf")[0], definitions), **node}
    nullable = False
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of differing types: {branches}")
        node = {**_resolve(branches[0], definitions), **node}
        nullable = True
    out: dict[str, Any] = {}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key, value in node.items():
        if key in _PASSTHROUGH:
            out[key] = value
    if out.get("default", 0) is None:
        del out["default"]
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        out["maximum"] = node["exclusiveMaximum"]
        out["exclusiveMaximum"] = True
    if nullable:
        # A null is the same as an absent field: never required, accepted when sent.
        out["nullable"] = True
    if out.get("x-kubernetes-int-or-string"):
        return out
    kind = node.get("type")
    if kind is None:
        if "enum" in node:
            kind = "string"
        else:
            raise ValueError(f"untyped schema node: {node}")
    out = {"type": kind, **out}
    if kind == "object":
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        if properties:
            out["properties"] = {
                name: _structural(sub, definitions) for name, sub in properties.items()
            }
            required = [
                r for r in out.get("required", []) if not out["properties"][r].get("nullable")
            ]
            if required:
                out["required"] = required
            else:
                out.pop("required", None)
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, definitions)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        items = node.get("items")
        if "prefixItems" in node:
            # Tuples (layer ranges) become fixed-length arrays of one item type.
            types = {p.get("type") for p in node["prefixItems"]}
            if len(types) != 1:
                raise ValueError(f"tuple of mixed types: {node}")
            items = node["prefixItems"][0]
            out["minItems"] = out["maxItems"] = len(node["prefixItems"])
        out["items"] = _structural(items or {}, definitions)
    return out


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return {**definitions[node["$ref"].rsplit("/", 1)[-1]], **_without(node, "$ref")}
    return node


def _without(node: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != key}


def custom_resource_definition() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CRD of InferenceDeployment."""
    spec = openapi_schema(InferenceDeploymentSpec)
    status = openapi_schema(InferenceDeploymentStatus)
    status.pop("required", None)
    root = {
        "type": "object",
        "description": "A parallel inference job: a model split across GPUs by pipeline,"
        " tensor and sequence parallelism, one rank per GPU.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "paraserve.dev/v1alpha1."},
            "kind": {"type": "string", "description": "InferenceDeployment."},
            # The API server forbids anything but type here (metadata is implicit).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": LIST_KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["all", "paraserve"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION_NAME,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed under crds/."""
    import yaml

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    header = "# Generated by `paraserve crd` from paraserve.api; do not edit.\n"
    body = yaml.dump(
        custom_resource_definition(),
        Dumper=_NoAliases,
        sort_keys=False,
        width=100,
        allow_unicode=True,
    )
    return header + body
