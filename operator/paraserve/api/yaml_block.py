"""Tier 1 of the fast YAML reading: block YAML of plain mappings, sequences and one-line
scalars, as `kubectl -o yaml` and PyYAML's dumper write Kubernetes objects, read line by line.

Indentation opens and closes containers; ``|``/``|-`` literal blocks are read as such.
Anything outside that subset (flow collections other than ``{}``/``[]``, anchors, tags,
comments after values, multi-line or escaped scalars, tabs, directives) raises `Unusual`.

Most lines of a pool file are lines already seen, to the last space of indentation, that
continue the mapping the line before was in or open one under it: the loop takes those with
one dict look-up of the whole line, and everything else (items, dedents, new text, documents)
on a slower path that checks it all.
"""

from __future__ import annotations

import re
from typing import Any, Final

from paraserve.api.yaml_scalars import MISSING, PlainScalars, Unusual, one_line_scalar

# PyYAML's reader refuses these characters; YAML line breaks other than \n; tabs and BOMs.
_OUTSIDE_SUBSET: Final = (
    "[^\x0a\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
# The same for ASCII text, checked by bytes.translate (a quarter of the regex's time; and the
# regex, compiled only for other text, takes 10 ms to compile).
_ASCII_INSIDE_SUBSET: Final = b"\n" + bytes(range(0x20, 0x7F))
_EMPTY_FLOW: Final = ("{}", "[]")
# Keys whose line at column 0 would be a document marker are never remembered, so that line
# always takes the slow path, which looks for markers.
_MARKERS: Final = ("---", "...")
OPENS: Final = object()  # a known ``key:`` line: its value is the block below, or null


def outside_subset(text: str) -> bool:
    """Whether ``text`` has a character the line reader leaves to PyYAML."""
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _ASCII_INSIDE_SUBSET))
    return re.search(_OUTSIDE_SUBSET, text) is not None  # compiled once, by re's cache


def read_block(text: str, plain: PlainScalars) -> list[Any]:
    """The documents of ``text``, or `Unusual`."""
    if outside_subset(text):
        raise Unusual("tabs, carriage returns or characters outside the subset")
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()  # the final newline
    documents: list[Any] = []
    # Texts already checked. A line ``key: value`` or ``key:`` means the same wherever it
    # comes (keys that could be document markers are never remembered), so a known line gives
    # its column, key and value (or OPENS) in one look-up: most of a pool's lines, the same
    # text over and over. Else the key text gives the key, the value text the value. ({} and
    # [] are new each time, never remembered.)
    known: dict[str, tuple[int, Any, Any]] = {}
    known_items: dict[str, tuple[int, Any, Any]] = {}  # ``- key: value``: the same, after -
    names: dict[str, Any] = {}
    values: dict[str, Any] = {}
    # The open container deepest in: its column, it, whether a mapping, and its slot waiting
    # for a nested value (a key, or True for a sequence's item). Column -1: none open.
    col, is_map = -1, False
    cont: Any = None
    pending: Any = MISSING
    parents: list[tuple[int, Any, bool]] = []  # the containers it is in (none has a slot)
    root: Any = MISSING  # the document's value, once it has one
    started = False  # a document is open (content or an explicit ---)
    # A literal block scalar being read: its key's column (-1: none), name, indent, lines.
    literal_col, literal_indent = -1, -1
    literal_name: Any = None
    literal_keep = False
    literal: list[str] = []

    for line in lines:
        if literal_col >= 0:
            content = line.lstrip(" ")
            column = len(line) - len(content)
            if not content:
                raise Unusual("an empty line in a block scalar")
            if literal_indent < 0 and column > literal_col:
                literal_indent = column
            if literal_indent >= 0 and column >= literal_indent:
                literal.append(line[literal_indent:])
                continue
            if column > literal_col or not literal:
                raise Unusual("a block scalar line less indented, or an empty block scalar")
            cont[literal_name] = "\n".join(literal) + ("\n" if literal_keep else "")
            literal_col, literal_indent, literal = -1, -1, []
        entry = known.get(line)
        if entry is not None:
            column, name, scalar = entry
            if column == col and is_map:
                # A known line, the next key of the open mapping: by far the most common line.
                if pending is not MISSING:
                    cont[pending] = None
                    pending = MISSING
                if scalar is OPENS:
                    pending = name
                else:
                    cont[name] = scalar
                continue
            if column > col and pending is not MISSING:
                # A known line, the first key of a nested mapping.
                nested: dict[Any, Any] = {}
                if is_map:
                    cont[pending] = nested
                else:
                    cont.append(nested)
                parents.append((col, cont, is_map))
                col, cont, is_map, pending = column, nested, True, MISSING
                if scalar is OPENS:
                    pending = name
                else:
                    nested[name] = scalar
                continue
        else:
            content = line.lstrip(" ")
            column = len(line) - len(content)
            name = MISSING
            item = known_items.get(line)
            if item is None:
                key, colon, value = content.partition(": ")
                if colon:
                    name = names.get(key, MISSING)
        item_col = -1
        if entry is None and name is MISSING:
            # -- any other line but a known key's, checked in full (a known item's passed) ----
            if item is None:
                if not content or content[0] == "#":
                    continue
                if line[-1] == " ":
                    raise Unusual("trailing spaces")
                if column == 0 and content.startswith(("---", "...", "%")):
                    if content != "---":
                        raise Unusual("a directive, a document end or content after ---")
                    if started or col >= 0 or root is not MISSING:
                        _fill_open(cont, is_map, pending)
                        documents.append(None if root is MISSING else root)
                        col, cont, is_map, pending, root = -1, None, False, MISSING, MISSING
                        parents.clear()
                    started = True
                    continue
                started = True
            first = column
            while content[0] == "-" and (len(content) == 1 or content[1] == " "):
                # An item at `column`: of the sequence there, or of a new one.
                if col > column:
                    col, cont, is_map = _leave_to(column, col, cont, is_map, pending, parents)
                    pending = MISSING
                if col == column:
                    if not is_map:
                        if pending is not MISSING:
                            cont.append(None)
                    elif pending is not MISSING:
                        # `key:` then `- item` at the key's column: an indentless sequence.
                        sequence: list[Any] = []
                        cont[pending] = sequence
                        parents.append((col, cont, is_map))
                        cont, is_map = sequence, False
                    else:
                        raise Unusual("a key and an item at one column")
                else:
                    sequence = []
                    if col < 0:
                        if root is not MISSING:
                            raise Unusual("a second value at the top")
                        root = sequence
                    elif pending is MISSING:
                        raise Unusual("deeper than anything open (a multi-line value?)")
                    else:
                        if is_map:
                            cont[pending] = sequence
                        else:
                            cont.append(sequence)
                        parents.append((col, cont, is_map))
                    col, cont, is_map = column, sequence, False
                pending = True
                item_col = column
                if len(content) == 1:
                    content = ""
                    break
                content = content[2:]
                column += 2
                if content[:1] == " ":
                    raise Unusual("more than one space after -")
            if not content:
                continue
            if item is not None:
                entry = item
                name, scalar = item[1], item[2]
            elif item_col >= 0:
                key, colon, value = content.partition(": ")
            if entry is None and not colon and content[-1] == ":":
                key, colon, value = content[:-1], ":", ""
            if entry is None and not colon:  # a scalar: only right after `- ` on its own line
                if item_col < 0 or item_col != column - 2:
                    raise Unusual("a scalar on a line of its own")
                scalar = values.get(content, MISSING)
                if scalar is MISSING:
                    scalar = one_line_scalar(content, plain)
                    if content not in _EMPTY_FLOW:
                        values[content] = scalar
                cont.append(scalar)
                pending = MISSING
                continue
        # -- a mapping key at `column`: of the mapping there, of a new one, or of the mapping
        # an indentless sequence ends in --------------------------------------------------------
        if col > column:
            col, cont, is_map = _leave_to(column, col, cont, is_map, pending, parents)
            pending = MISSING
        if col == column and is_map:
            if pending is not MISSING:
                cont[pending] = None
                pending = MISSING
        elif col < column and pending is not MISSING:
            nested = {}
            if is_map:
                cont[pending] = nested
            else:
                cont.append(nested)
            parents.append((col, cont, is_map))
            col, cont, is_map, pending = column, nested, True, MISSING
        elif col == column:  # a sequence: the key after an indentless one?
            if not parents or parents[-1][0] != column:
                raise Unusual("a key and an item at one column")
            if pending is not MISSING:
                cont.append(None)
            col, cont, is_map = parents.pop()
            pending = MISSING
        elif col >= 0:
            raise Unusual("deeper than anything open (a multi-line value?)")
        elif root is not MISSING:
            raise Unusual("a second value at the top")
        else:
            root = cont = {}
            col, is_map, pending = column, True, MISSING
        # -- the key and its value -------------------------------------------------------------
        if entry is None:
            if name is MISSING:
                name = names.get(key, MISSING)
            if name is MISSING:
                name = one_line_scalar(key, plain, key=True)
                if not key.startswith(_MARKERS):
                    names[key] = name
            if not value:
                if colon == ": ":  # `key: ` after a known key skipped the check
                    raise Unusual("trailing spaces")
                scalar = OPENS
            else:
                scalar = values.get(value, MISSING)
                if scalar is MISSING:
                    if value[0] == "|":
                        if value not in ("|", "|-"):
                            raise Unusual("a block scalar with indicators")
                        literal_col, literal_name, literal_keep = column, name, value == "|"
                        continue
                    scalar = one_line_scalar(value, plain)
                    if value not in _EMPTY_FLOW:
                        values[value] = scalar
            if value not in _EMPTY_FLOW and not key.startswith(_MARKERS):
                if item_col < 0:
                    known[line] = (column, name, scalar)
                elif item_col == first:  # one `- `: the item it opens, then this key
                    known_items[line] = (column, name, scalar)
        if scalar is OPENS:
            pending = name  # a nested block, or null
        else:
            cont[name] = scalar

    if literal_col >= 0:
        if not literal:
            raise Unusual("an empty block scalar")
        cont[literal_name] = "\n".join(literal) + ("\n" if literal_keep else "")
    if started or col >= 0 or root is not MISSING:
        _fill_open(cont, is_map, pending)
        documents.append(None if root is MISSING else root)
    return documents


def _fill_open(cont: Any, is_map: bool, pending: Any) -> None:
    """A `key:` or `-` with nothing below it is null (nothing open: nothing to fill)."""
    if pending is MISSING:
        return
    if is_map:
        cont[pending] = None
    else:
        cont.append(None)


def _leave_to(
    column: int, col: int, cont: Any, is_map: bool, pending: Any, parents: list[Any]
) -> tuple[int, Any, bool]:
    """A line at `column` ends what is open deeper: its open slot is null, and the containers
    it is in are left until the one at `column` or above (col, container, is_map of it)."""
    _fill_open(cont, is_map, pending)
    while col > column:
        col, cont, is_map = parents.pop() if parents else (-1, None, False)
    return col, cont, is_map
