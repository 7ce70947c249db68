"""Where an engine finds the weights: the model argument, and the volumes and env behind it.

A PersistentVolumeClaim is mounted read-only at the same path in every rank; a Hugging Face
id is downloaded by each rank into its cache volume (HF_HOME), with HF_TOKEN from a Secret.
Without a source the engine is given ``model.name`` and downloads into the pod.
"""

from __future__ import annotations

from typing import Any, Final

from paraserve.api import InferenceDeploymentSpec

MODEL_MOUNT: Final = "/models"
HF_HOME: Final = "/var/cache/huggingface"
WEIGHTS_VOLUME: Final = "weights"
CACHE_VOLUME: Final = "hf-cache"


def model_argument(spec: InferenceDeploymentSpec) -> str:
    """What the engine is told to load: a local directory or a Hugging Face id."""
    source = spec.model.source
    if source is not None and source.persistent_volume_claim is not None:
        path = source.persistent_volume_claim.path
        return f"{MODEL_MOUNT}/{path}" if path else MODEL_MOUNT
    if source is not None and source.hugging_face is not None and source.hugging_face.id:
        return source.hugging_face.id
    return spec.model.name


def model_revision(spec: InferenceDeploymentSpec) -> str | None:
    source = spec.model.source
    return source.hugging_face.revision if source and source.hugging_face else None


def model_volumes(
    spec: InferenceDeploymentSpec,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container volumeMounts) for the model source."""
    source = spec.model.source
    if source is None:
        return [], []
    if source.persistent_volume_claim is not None:
        claim = source.persistent_volume_claim.claim_name
        volume = {
            "name": WEIGHTS_VOLUME,
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
        mount = {"name": WEIGHTS_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True}
        return [volume], [mount]
    assert source.hugging_face is not None
    cache = source.hugging_face.cache
    if cache is not None and cache.claim_name:
        volume = {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.claim_name}}
    else:
        empty: dict[str, Any] = {}
        if cache is not None and cache.size_limit is not None:
            empty["sizeLimit"] = str(cache.size_limit)
        volume = {"name": CACHE_VOLUME, "emptyDir": empty}
    return [volume], [{"name": CACHE_VOLUME, "mountPath": HF_HOME}]


def model_env(spec: InferenceDeploymentSpec) -> list[dict[str, Any]]:
    """HF_HOME and HF_TOKEN for a Hugging Face source; nothing otherwise."""
    source = spec.model.source
    if source is None or source.hugging_face is None:
        return []
    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": HF_HOME}]
    secret = source.hugging_face.token_secret
    if secret is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
            }
        )
    return env
