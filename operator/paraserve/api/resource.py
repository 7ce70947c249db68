"""The InferenceDeployment object as a whole, and loading it from a parsed document."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from paraserve.api.base import WireModel
from paraserve.api.constants import API_VERSION, KIND
from paraserve.api.spec import InferenceDeploymentSpec
from paraserve.api.status import InferenceDeploymentStatus


class InferenceDeployment(WireModel):
    """A parallel inference job: the top-level Kubernetes object."""

    api_version: str = Field(API_VERSION, description="paraserve.dev/v1alpha1.")
    kind: str = Field(KIND, description="InferenceDeployment.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard metadata.")
    spec: InferenceDeploymentSpec = Field(description="Desired state.")
    status: InferenceDeploymentStatus | None = Field(None, description="Observed state.")

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value != API_VERSION:
            raise ValueError(f"apiVersion is {value!r}; expected {API_VERSION!r}")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != KIND:
            raise ValueError(f"kind is {value!r}; expected {KIND!r}")
        return value

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))
