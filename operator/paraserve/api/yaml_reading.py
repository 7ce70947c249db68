"""Fast reading of the YAML that `kubectl get -o yaml` and PyYAML's dumper write.

`read_fast(text)` returns the same documents as ``yaml.load_all(text, Loader=CSafeLoader)``
(unit tests hold them equal, and equally refused) or raises `Unusual`, and the caller lets
PyYAML decide. PyYAML's loader composes a node graph and constructs every object through
generic per-node Python calls: a 5,000-node pool file takes seconds. Two faster tiers:

1. Block YAML of plain mappings, sequences and one-line scalars, as emitters write Kubernetes
   objects, is read line by line: indentation opens and closes containers. Anything outside
   that subset (flow collections other than ``{}``/``[]``, anchors, tags, comments after
   values, multi-line or escaped scalars, tabs, directives) raises `Unusual`.
2. Other YAML is built straight from libyaml's parse events; anchors, aliases, explicit
   tags, merge keys and complex keys raise `Unusual`.

In both, a plain scalar's value depends only on its text (``8`` is an int, ``yes`` a bool,
``gpu-1`` a string: PyYAML's resolver decides), so each distinct text is resolved once.
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml
from yaml import events

# libyaml's parser when PyYAML was built with it.
Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Unusual(Exception):
    """The text uses something the fast readers leave to PyYAML's loader."""


_STR: Final = "tag:yaml.org,2002:str"
_SPECIAL: Final = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
_MISSING: Final = object()
# PyYAML's reader refuses these characters; YAML line breaks other than \n; tabs and BOMs.
_OUTSIDE_SUBSET: Final = re.compile(
    "[^\x0a\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
# A plain scalar may not start with these (`-`, `?` and `:` are checked apart).
_INDICATORS: Final = frozenset(",[]{}#&*!|>'\"%@`")
_EMPTY_FLOW: Final = ("{}", "[]")


def read_fast(text: str) -> list[Any]:
    """The documents of `text`, or `Unusual`."""
    scalars = _PlainScalars()
    try:
        return _read_block(text, scalars)
    except Unusual:
        return _read_events(text, scalars)


class _PlainScalars:
    """Plain scalar text → value, as PyYAML's resolver and constructor make it; remembered."""

    def __init__(self) -> None:
        self._resolver = yaml.SafeLoader("")
        self._known: dict[str, Any] = {}

    def __call__(self, text: str) -> Any:
        value = self._known.get(text, _MISSING)
        if value is _MISSING:
            tag = self._resolver.resolve(yaml.ScalarNode, text, (True, False))
            if tag == _STR:
                value = text
            elif tag in _SPECIAL:
                raise Unusual(f"{text!r} is a merge key or value indicator")
            else:
                value = self._resolver.construct_object(yaml.ScalarNode(tag, text))
            self._known[text] = value
        return value


# -- tier 1: block YAML, line by line ---------------------------------------------------------


class _Frame:
    """An open block mapping or sequence at a column, with a slot waiting for a nested value."""

    __slots__ = ("column", "container", "pending")

    def __init__(self, column: int, container: dict[Any, Any] | list[Any]) -> None:
        self.column = column
        self.container = container
        self.pending: Any = _MISSING  # a mapping's key, or True for a sequence's item

    def settle(self) -> None:
        """A slot that got no nested value holds null."""
        if self.pending is not _MISSING:
            if type(self.container) is dict:
                self.container[self.pending] = None
            else:
                self.container.append(None)  # type: ignore[union-attr]
            self.pending = _MISSING

    def attach(self, value: Any) -> None:
        if type(self.container) is dict:
            self.container[self.pending] = value
        else:
            self.container.append(value)  # type: ignore[union-attr]
        self.pending = _MISSING


def _read_block(text: str, plain: _PlainScalars) -> list[Any]:
    if _OUTSIDE_SUBSET.search(text):
        raise Unusual("tabs, carriage returns or characters outside the subset")
    lines = text.split("\n")
    documents: list[Any] = []
    stack: list[_Frame] = []
    root: list[Any] = []  # the current document's value, once it has one
    started = False  # a document is open (content or an explicit ---)
    index, count = 0, len(lines)
    # One-line scalars by text (a pool repeats most of them); {} and [] are never shared.
    values: dict[str, Any] = {}
    names: dict[str, Any] = {}

    def close_document() -> None:
        while stack:
            stack.pop().settle()
        documents.append(root[0] if root else None)
        root.clear()

    def frame_at(column: int, sequence: bool) -> _Frame:
        """The frame a mapping key (or a sequence item) at `column` belongs to, opened if new."""
        while stack and stack[-1].column > column:
            stack.pop().settle()
        top = stack[-1] if stack else None
        if top is not None and top.column == column:
            is_sequence = type(top.container) is list
            if sequence == is_sequence:
                top.settle()
                return top
            if sequence and top.pending is not _MISSING:
                # `key:` then `- item` at the key's column: an indentless sequence.
                frame = _Frame(column, [])
                top.attach(frame.container)
                stack.append(frame)
                return frame
            below = stack[-2] if len(stack) > 1 else None
            if not sequence and below is not None and below.column == column:
                # The key after an indentless sequence: back to its mapping.
                stack.pop().settle()
                below.settle()
                return below
            raise Unusual(f"line {index + 1}: a key and an item at one column")
        frame = _Frame(column, [] if sequence else {})
        if top is None:
            if root:
                raise Unusual(f"line {index + 1}: a second value at the top")
            root.append(frame.container)
        elif top.pending is _MISSING:
            raise Unusual(f"line {index + 1}: deeper than anything open (a multi-line value?)")
        else:
            top.attach(frame.container)
        stack.append(frame)
        return frame

    while index < count:
        line = lines[index]
        content = line.lstrip(" ")
        if not content or content[0] == "#":
            index += 1
            continue
        if line[-1] == " ":
            raise Unusual(f"line {index + 1}: trailing spaces")
        column = len(line) - len(content)
        if column == 0 and content.startswith(("---", "...", "%")):
            if content != "---":
                raise Unusual(f"line {index + 1}: a directive, a document end or content after ---")
            if started or stack or root:
                close_document()
            started = True
            index += 1
            continue
        started = True
        item: _Frame | None = None
        while content[0] == "-" and (len(content) == 1 or content[1] == " "):
            item = frame_at(column, sequence=True)
            item.pending = True
            if len(content) == 1:
                content = ""
                break
            content = content[2:]
            column += 2
            if content[:1] == " ":
                raise Unusual(f"line {index + 1}: more than one space after -")
        if not content:
            index += 1
            continue
        key, colon, value = content.partition(": ")
        if not colon and content[-1] == ":":
            key, colon, value = content[:-1], ":", ""
        if not colon:  # a scalar: only right after `- ` on its own line
            if item is None or item.column != column - 2:
                raise Unusual(f"line {index + 1}: a scalar on a line of its own")
            scalar = values.get(content, _MISSING)
            if scalar is _MISSING:
                scalar = _scalar(content, plain, index)
                if content not in _EMPTY_FLOW:
                    values[content] = scalar
            item.attach(scalar)
            index += 1
            continue
        while stack and stack[-1].column > column:
            stack.pop().settle()
        top = stack[-1] if stack else None
        if top is not None and top.column == column and type(top.container) is dict:
            frame = top  # the next key of the open mapping: by far the most common line
            if frame.pending is not _MISSING:
                frame.settle()
        elif top is not None and top.column < column and top.pending is not _MISSING:
            frame = _Frame(column, {})  # the first key of a nested mapping
            top.attach(frame.container)
            stack.append(frame)
        else:
            frame = frame_at(column, sequence=False)
        name = names.get(key, _MISSING)
        if name is _MISSING:
            name = names[key] = _scalar(key, plain, index, key=True)
        if not value:
            frame.pending = name  # a nested block, or null
        elif value[0] == "|":
            if value not in ("|", "|-"):
                raise Unusual(f"line {index + 1}: a block scalar with indicators")
            text_value, index = _literal(lines, index, column, keep_newline=value == "|")
            frame.container[name] = text_value
            continue
        else:
            scalar = values.get(value, _MISSING)
            if scalar is _MISSING:
                scalar = _scalar(value, plain, index)
                if value not in _EMPTY_FLOW:
                    values[value] = scalar
            frame.container[name] = scalar
        index += 1
    if started or stack or root:
        close_document()
    return documents


def _scalar(text: str, plain: _PlainScalars, index: int, *, key: bool = False) -> Any:
    """A one-line scalar of the subset: plain, simply quoted, or an empty flow collection."""
    first = text[0] if text else ""
    if first == "'":
        inner = text[1:-1]
        if len(text) < 2 or text[-1] != "'" or "'" in inner.replace("''", ""):
            raise Unusual(f"line {index + 1}: a single-quoted scalar of more than one line")
        return inner.replace("''", "'")
    if first == '"':
        inner = text[1:-1]
        if len(text) < 2 or text[-1] != '"' or '"' in inner or "\\" in inner:
            raise Unusual(f"line {index + 1}: a double-quoted scalar with escapes")
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
        raise Unusual(f"line {index + 1}: {text[:40]!r} is not a plain scalar of the subset")
    return plain(text)


def _literal(lines: list[str], index: int, column: int, *, keep_newline: bool) -> tuple[str, int]:
    """A literal block scalar (``|`` or ``|-``) of a key at `column`; and the next line's index."""
    parts = []
    indent = -1
    position = index + 1
    while position < len(lines):
        line = lines[position]
        content = line.lstrip(" ")
        depth = len(line) - len(content)
        if not content:
            if position == len(lines) - 1 and not line:
                break  # the end of the text
            raise Unusual(f"line {position + 1}: an empty line in a block scalar")
        if indent < 0:
            if depth <= column:
                break
            indent = depth
        elif depth < indent:
            if depth > column:
                raise Unusual(f"line {position + 1}: a block scalar line less indented")
            break
        parts.append(line[indent:])
        position += 1
    if not parts:
        raise Unusual(f"line {index + 1}: an empty block scalar")
    return "\n".join(parts) + ("\n" if keep_newline else ""), position


# -- tier 2: any YAML without anchors and tags, from libyaml's events -------------------------


def _read_events(text: str, plain: _PlainScalars) -> list[Any]:
    parser = Loader(text)
    documents: list[Any] = []
    stack: list[tuple[Any, Any]] = []
    current: Any = None  # the open dict or list, or the finished value of a document
    key: Any = _MISSING  # in a dict: the key waiting for its value
    scalar, mapping = events.ScalarEvent, events.MappingStartEvent
    sequence, closing = events.SequenceStartEvent, (events.MappingEndEvent, events.SequenceEndEvent)
    get_event = parser.get_event
    try:
        while True:
            event: Any = get_event()
            kind = type(event)
            if kind is scalar:
                if event.anchor is not None or event.tag not in (None, "!"):
                    raise Unusual("an anchor or a tag")
                # Plain (or `!`): typed by its text, as the composer resolves it; else a string.
                value: Any = plain(event.value) if event.implicit[0] else event.value
            elif kind is mapping or kind is sequence:
                if event.anchor is not None or event.tag is not None:
                    raise Unusual("an anchor or a tag")
                stack.append((current, key))
                current, key = ({} if kind is mapping else []), _MISSING
                continue
            elif kind in closing:
                value = current
                current, key = stack.pop()
            elif kind is events.DocumentEndEvent:
                documents.append(current)
                current = None
                continue
            elif kind is events.StreamEndEvent:
                return documents
            elif kind is events.AliasEvent:
                raise Unusual("an alias")
            else:  # stream or document start
                continue
            if type(current) is dict:
                if key is _MISSING:
                    if type(value) is dict or type(value) is list:
                        raise Unusual("a complex key")
                    key = value
                else:
                    current[key] = value
                    key = _MISSING
            elif type(current) is list:
                current.append(value)
            else:
                current = value
    finally:
        parser.dispose()
