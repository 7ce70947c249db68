"""Tier 2 of the fast YAML reading: any YAML without anchors and tags, built straight from
libyaml's parse events (anchors, aliases, explicit tags, merge keys and complex keys raise
`Unusual`)."""

from __future__ import annotations

from typing import Any

import yaml
from yaml import events

from paraserve.api.yaml_scalars import MISSING, PlainScalars, Unusual

# libyaml's parser when PyYAML was built with it.
Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_events(text: str, plain: PlainScalars) -> list[Any]:
    parser = Loader(text)
    documents: list[Any] = []
    stack: list[tuple[Any, Any]] = []
    current: Any = None  # the open dict or list, or the finished value of a document
    key: Any = MISSING  # in a dict: the key waiting for its value
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
                current, key = ({} if kind is mapping else []), MISSING
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
                if key is MISSING:
                    if type(value) is dict or type(value) is list:
                        raise Unusual("a complex key")
                    key = value
                else:
                    current[key] = value
                    key = MISSING
            elif type(current) is list:
                current.append(value)
            else:
                current = value
    finally:
        parser.dispose()
