"""Base classes for the wire models: camelCase aliases, and unknown fields named with a hint."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """A model serialised with camelCase keys; extra keys are kept (status side)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=False,
        validate_default=False,
        # Validators are built on first use, not at import: most models are only ever
        # validated nested in another one. Building every one at import (with spec.py's CRD
        # defaults, which made instances) was half of importing paraserve.api, 0.15 s of CPU.
        defer_build=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict as the Kubernetes API stores it (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SpecModel(WireModel):
    """A spec model: unknown fields are an error naming the field and its likely intent."""

    model_config = ConfigDict(extra="forbid")

    _known_keys: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = {name for name in cls.model_fields}
        aliases = [f.alias or name for name, f in cls.model_fields.items()]
        known.update(aliases)
        unknown = [key for key in data if key not in known]
        if unknown:
            key = str(unknown[0])
            close = difflib.get_close_matches(key, aliases, n=1, cutoff=0.6)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; known fields: {', '.join(aliases)}"
            )
            raise ValueError(f"unknown field {key!r}{hint}")
        return data


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line for a person: where (camelCase path) and what, for the first problem."""
    first = error.errors(include_url=False)[0]
    path = ".".join(str(part) for part in first["loc"])
    where = ".".join(part for part in (prefix, path) if part)
    message = first["msg"].removeprefix("Value error, ")
    more = len(error.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {message}{tail}" if where else f"{message}{tail}"
