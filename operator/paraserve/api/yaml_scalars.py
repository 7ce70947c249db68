"""Scalars for the fast YAML readers: a plain scalar's value from its text, and the one-line
scalars the line reader takes (anything else is `Unusual`: the caller lets PyYAML decide)."""

from __future__ import annotations

from typing import Any, Final

import yaml


class Unusual(Exception):
    """The text uses something the fast readers leave to PyYAML's loader."""


_STR: Final = "tag:yaml.org,2002:str"
_SPECIAL: Final = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
MISSING: Final = object()
# A plain scalar may not start with these (`-`, `?` and `:` are checked apart).
_INDICATORS: Final = frozenset(",[]{}#&*!|>'\"%@`")


def _resolved_starts() -> frozenset[str] | None:
    """The first characters PyYAML's SafeLoader has implicit resolvers for (a plain scalar
    starting with any other is a string), or None when its resolvers are not all by first
    character."""
    resolvers = yaml.SafeLoader.yaml_implicit_resolvers
    if None in resolvers or yaml.SafeLoader.yaml_path_resolvers:
        return None
    return frozenset(key for key in resolvers if key)


_RESOLVED_STARTS: Final = _resolved_starts()


class PlainScalars:
    """Plain scalar text → value, as PyYAML's resolver and constructor make it; remembered."""

    def __init__(self) -> None:
        self._resolver = yaml.SafeLoader("")
        self._known: dict[str, Any] = {}

    def __call__(self, text: str) -> Any:
        if _RESOLVED_STARTS is not None and text and text[0] not in _RESOLVED_STARTS:
            return text  # `gpu-1`, `Running`: no resolver looks at these (most of a pool's text)
        value = self._known.get(text, MISSING)
        if value is MISSING:
            tag = self._resolver.resolve(yaml.ScalarNode, text, (True, False))
            if tag == _STR:
                value = text
            elif tag in _SPECIAL:
                raise Unusual(f"{text!r} is a merge key or value indicator")
            else:
                value = self._resolver.construct_object(yaml.ScalarNode(tag, text))
            self._known[text] = value
        return value


def one_line_scalar(text: str, plain: PlainScalars, *, key: bool = False) -> Any:
    """A one-line scalar of the subset: plain, simply quoted, or (not as a key) an empty flow
    collection."""
    first = text[0] if text else ""
    if first == "'":
        inner = text[1:-1]
        if len(text) < 2 or text[-1] != "'" or "'" in inner.replace("''", ""):
            raise Unusual("a single-quoted scalar of more than one line")
        return inner.replace("''", "'")
    if first == '"':
        inner = text[1:-1]
        if len(text) < 2 or text[-1] != '"' or '"' in inner or "\\" in inner:
            raise Unusual("a double-quoted scalar with escapes")
        return inner
    if not key and text in ("{}", "[]"):
        return {} if text == "{}" else []
    if (
        not first
        or first in _INDICATORS
        or (first in "-?:" and (len(text) == 1 or text[1] == " "))
        or first == " "
        or text[-1] == " "
        or ": " in text
        or " #" in text
        or text[-1] == ":"
    ):
        raise Unusual(f"{text[:40]!r} is not a plain scalar of the subset")
    return plain(text)
