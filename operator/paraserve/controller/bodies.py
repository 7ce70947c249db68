"""kopf's bodies are live views of the watch stream: plain copies of them are safe to keep."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists (kopf's bodies are live views)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
