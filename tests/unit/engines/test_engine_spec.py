"""spec.engine and model.source: defaults, what goes with what, and the CRD rules behind them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from paraserve.api import EngineName, InferenceDeploymentSpec, describe_validation_error

MODEL = {"name": "meta-llama/Llama-3.1-8B", "parameters": "8B"}


def spec(**fields: Any) -> InferenceDeploymentSpec:
    return InferenceDeploymentSpec.model_validate({"model": MODEL, **fields})


def refused(document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        InferenceDeploymentSpec.model_validate({"model": MODEL, **document})
    return describe_validation_error(caught.value, "spec")


def test_the_default_engine_is_the_reference_worker() -> None:
    s = spec()
    assert s.engine.name is EngineName.PARASERVE
    assert not s.engine.rendered and s.engine.api_port is None


@pytest.mark.parametrize(("name", "port"), [("vllm", 8000), ("sglang", 30000)])
def test_rendered_engines_default_their_own_port(name: str, port: int) -> None:
    s = spec(engine={"name": name})
    assert s.engine.rendered and s.engine.api_port == port
    assert spec(engine={"name": name, "port": 9000}).engine.api_port == 9000


def test_a_rendered_engine_owns_the_command() -> None:
    message = refused({"engine": {"name": "vllm"}, "worker": {"command": ["python"]}})
    assert "renders the rank command" in message and "engine.args" in message


def test_engine_args_belong_to_rendered_engines_only() -> None:
    message = refused({"engine": {"name": "paraserve", "args": ["--x"]}})
    assert "apply to vllm and sglang" in message


def test_custom_needs_a_command() -> None:
    assert "give it" in refused({"engine": {"name": "custom"}})
    s = spec(engine={"name": "custom"}, worker={"command": ["serve"]})
    assert s.engine.name is EngineName.CUSTOM


def test_an_unknown_engine_is_named() -> None:
    assert "vllm" in refused({"engine": {"name": "tgi"}})


def test_model_source_is_exactly_one() -> None:
    document = {"model": {**MODEL, "source": {}}}
    with pytest.raises(ValidationError, match="exactly one"):
        InferenceDeploymentSpec.model_validate(document)
    both = {"persistentVolumeClaim": {"claimName": "w"}, "huggingFace": {}}
    with pytest.raises(ValidationError, match="exactly one"):
        InferenceDeploymentSpec.model_validate({"model": {**MODEL, "source": both}})


@pytest.mark.parametrize("path", ["/abs", "a/../b", ".."])
def test_a_claim_path_stays_inside_the_claim(path: str) -> None:
    source = {"persistentVolumeClaim": {"claimName": "w", "path": path}}
    with pytest.raises(ValidationError, match="relative to the claim"):
        InferenceDeploymentSpec.model_validate({"model": {**MODEL, "source": source}})


def test_hugging_face_source_camel_case() -> None:
    source = {
        "huggingFace": {
            "id": "org/model",
            "tokenSecret": {"name": "hf"},
            "cache": {"claimName": "hf-cache"},
        }
    }
    s = InferenceDeploymentSpec.model_validate({"model": {**MODEL, "source": source}})
    assert s.model.source is not None and s.model.source.hugging_face is not None
    assert s.model.source.hugging_face.token_secret is not None
    assert s.model.source.hugging_face.token_secret.key == "token"


def test_crd_carries_the_engine_and_source_rules() -> None:
    from paraserve.api.crd import openapi_schema

    schema = openapi_schema(InferenceDeploymentSpec)
    engine = schema["properties"]["engine"]
    assert engine["properties"]["name"]["enum"] == ["paraserve", "vllm", "sglang", "custom"]
    assert engine["default"] == {"name": "paraserve", "args": []}
    source = schema["properties"]["model"]["properties"]["source"]
    rules = [r["rule"] for r in source["x-kubernetes-validations"]]
    assert rules == ["has(self.persistentVolumeClaim) != has(self.huggingFace)"]
