"""model.architectureFrom: what the operator keeps of ConfigMaps, and reading it before a plan.

Pure. Two kopf indexes feed it (running/watches.py):

* ``CONFIG_MAPS``: every ConfigMap of the served namespaces but the operator's own, keyed by
  (namespace, name), as its key names, with the text kept only of the values that hold a
  ``"model_type"`` (a Hugging Face config.json always does; anything else is never read);
* ``NAMED_BY``: (namespace, ConfigMap name) → the deployments whose architectureFrom names it,
  so that a ConfigMap event queues exactly those.

No label is asked of the user's ConfigMap: ``kubectl create configmap NAME
--from-file=config.json`` is all it takes. Only ConfigMaps named by some deployment cannot be
what is indexed: kopf evaluates an index's filter on the ConfigMap's own events, so one
created before the deployment that names it would never be seen (docs/operator.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from paraserve.api import Finding, InferenceDeploymentSpec
from paraserve.api.labels import LABEL_MANAGED_BY, MANAGER
from paraserve.planner import ConfigError, resolve_architecture

#: The kopf index ids (also the keyword names kopf hands the indexes to handlers under).
CONFIG_MAPS: Final = "model_config_maps"
NAMED_BY: Final = "architecture_sources"
#: A value without this text is no config.json: its text is not kept.
MODEL_TYPE_MARK: Final = '"model_type"'

Key = tuple[str, str]  # (namespace, name)
#: (namespace, ConfigMap name) → its data as kept (None: no such ConfigMap in the index).
ConfigMapLookup = Callable[[str, str], Mapping[str, str | None] | None]


def config_map_view(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the index keeps of a ConfigMap: its keys, the text of model configs only.

    None for the operator's own (topology) ConfigMaps. A key of binaryData is kept as a name.
    """
    metadata = body.get("metadata") or {}
    if (metadata.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGER:
        return None
    data: dict[str, str | None] = dict.fromkeys(body.get("binaryData") or {})
    for key, value in (body.get("data") or {}).items():
        data[str(key)] = value if isinstance(value, str) and MODEL_TYPE_MARK in value else None
    return {"data": data}


def config_map_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """The CONFIG_MAPS index entry. Empty, never None: kopf keeps an object's previous value
    when its indexing function returns None."""
    view = config_map_view(body)
    metadata = body.get("metadata") or {}
    key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
    return {key: view} if view is not None else {}


def named_config_map(raw_spec: Mapping[str, Any]) -> str | None:
    """The ConfigMap a raw spec's model.architectureFrom names, if any."""
    model = raw_spec.get("model")
    source = model.get("architectureFrom") if isinstance(model, Mapping) else None
    ref = source.get("configMapKeyRef") if isinstance(source, Mapping) else None
    name = ref.get("name") if isinstance(ref, Mapping) else None
    return name if isinstance(name, str) and name else None


def named_by_entry(body: Mapping[str, Any]) -> dict[Key, str]:
    """The NAMED_BY index entry of a deployment (empty when it names no ConfigMap)."""
    metadata = body.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "")
    name = named_config_map(body.get("spec") or {})
    return {(namespace, name): str(metadata.get("name") or "")} if name else {}


def deployments_naming(named_by: Mapping[Any, Any], namespace: str, config_map: str) -> list[Key]:
    """The deployments to look at again when this ConfigMap changes."""
    return sorted({(namespace, name) for name in named_by.get((namespace, config_map), ())})


def config_map_data(
    config_maps: Mapping[Any, Any], namespace: str, name: str
) -> Mapping[str, str | None] | None:
    """A ConfigMap's data as kept in the CONFIG_MAPS index; None when there is none."""
    store = config_maps.get((namespace, name))
    view = next(iter(store), None) if store is not None else None
    return view.get("data") or {} if view is not None else None


def resolve(
    spec: InferenceDeploymentSpec, namespace: str, lookup: ConfigMapLookup
) -> tuple[InferenceDeploymentSpec, Finding | None]:
    """The spec with its architecture read (planner.resolve_architecture), or the spec as it is
    and the finding that stops its plan: ConfigMapNotFound (a wait) or InvalidModelConfig."""
    source = spec.model.architecture_from
    if source is None:
        return spec, None
    data = lookup(namespace, source.config_map_key_ref.name)
    try:
        return resolve_architecture(spec, data), None
    except ConfigError as error:
        return spec, Finding(code=error.code, message=str(error))
