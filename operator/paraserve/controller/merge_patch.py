"""JSON merge patches (RFC 7386): the patch that takes a stored object to the desired one.

A merge patch merges objects key by key, so a nested key that is simply left out stays on the
server: the patch must name it with an explicit null, or it is never empty again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def diff(current: Any, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch from `current` to `desired` (an object): changed keys, nulls for the
    keys `desired` drops, nested objects patched key by key; empty when they are equal."""
    old: Mapping[str, Any] = current if isinstance(current, Mapping) else {}
    patch: dict[str, Any] = {key: None for key in old if key not in desired}
    for key, value in desired.items():
        before = old.get(key)
        if before == value and key in old:
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = diff(before, value)
        else:
            patch[key] = value
    return patch


def apply(target: Any, patch: Any) -> Any:
    """`target` with the merge patch applied, as the API server applies it."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply(out.get(key), value)
    return out
