"""Text → objects: an InferenceDeployment document, or the Node and Pod objects of a pool file.

Pure (the caller reads the file); every failure is a DocumentError with one line for a person.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import ValidationError

from paraserve.api.base import describe_validation_error
from paraserve.api.constants import API_VERSION, KIND
from paraserve.api.resource import InferenceDeployment
from paraserve.api.yaml_reading import Loader, Unusual, read_fast

_LIST_KINDS = {"List", "NodeList", "PodList"}


class DocumentError(ValueError):
    """Bad input: a one-line message naming the source and the problem."""


def parse_documents(text: str, source: str) -> list[Any]:
    """All non-empty YAML (or JSON) documents of ``text``."""
    if text.lstrip().startswith("{"):
        # `kubectl get -o json`: the json module parses large pools ~30× faster than PyYAML.
        try:
            return [json.loads(text)]
        except json.JSONDecodeError:
            pass  # not one JSON object; YAML's parser reports the problem
    try:
        return [doc for doc in read_fast(text) if doc is not None]
    except (Unusual, yaml.YAMLError):
        pass  # outside what the fast readers take, or not YAML: PyYAML's loader decides
    try:
        return [doc for doc in yaml.load_all(text, Loader=Loader) if doc is not None]
    except yaml.YAMLError as error:
        raise DocumentError(f"{source}: not valid YAML: {_yaml_problem(error)}") from None


def load_deployment(text: str, source: str) -> InferenceDeployment:
    """The one InferenceDeployment of a document, validated."""
    docs = parse_documents(text, source)
    if len(docs) != 1:
        raise DocumentError(f"{source}: expected one {KIND} document, found {len(docs)}")
    doc = docs[0]
    if not isinstance(doc, dict):
        raise DocumentError(
            f"{source}: expected an {KIND} object (a mapping), got {type(doc).__name__}"
        )
    if doc.get("kind") != KIND:
        raise DocumentError(f"{source}: kind is {doc.get('kind')!r}; expected {KIND!r}")
    if doc.get("apiVersion") != API_VERSION:
        raise DocumentError(
            f"{source}: apiVersion is {doc.get('apiVersion')!r}; expected {API_VERSION!r}"
        )
    try:
        return InferenceDeployment.model_validate(doc)
    except ValidationError as error:
        raise DocumentError(f"{source}: {describe_validation_error(error)}") from None


def load_nodes_and_pods(
    text: str, source: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes and Pods of ``kubectl get nodes,pods -A -o yaml`` or of a multi-document stream."""
    nodes: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    for number, doc in enumerate(parse_documents(text, source), start=1):
        items = [doc]
        if isinstance(doc, dict) and doc.get("kind") in _LIST_KINDS:
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise DocumentError(f"{source}: document {number}: items is not a list")
        for item in items:
            if not isinstance(item, dict):
                raise DocumentError(
                    f"{source}: document {number}: expected a Node or Pod object,"
                    f" got {type(item).__name__}"
                )
            kind = item.get("kind")
            if kind == "Node":
                nodes.append(item)
            elif kind == "Pod":
                pods.append(item)
            else:
                raise DocumentError(
                    f"{source}: document {number}: kind is {kind!r}; expected Node or Pod"
                    " (as `kubectl get nodes,pods -A -o yaml` prints)"
                )
    return nodes, pods


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{problem}{where}"
