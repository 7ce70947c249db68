"""Fast reading of the YAML that `kubectl get -o yaml` and PyYAML's dumper write.

`read_fast(text)` returns the same documents as ``yaml.load_all(text, Loader=CSafeLoader)``
(unit tests hold them equal, and equally refused) or raises `Unusual`, and the caller lets
PyYAML decide. PyYAML's loader composes a node graph and constructs every object through
generic per-node Python calls: a 5,000-node pool file takes seconds. Two faster tiers:

1. `yaml_block`: block YAML of plain mappings, sequences and one-line scalars, as emitters
   write Kubernetes objects, read line by line.
2. `yaml_events`: other YAML without anchors and tags, built straight from libyaml's events.

In both, a plain scalar's value depends only on its text (``8`` is an int, ``yes`` a bool,
``gpu-1`` a string: PyYAML's resolver decides), so each distinct text is resolved once.
"""

from __future__ import annotations

import gc
from typing import Any

from paraserve.api.yaml_block import read_block
from paraserve.api.yaml_events import Loader, read_events
from paraserve.api.yaml_scalars import PlainScalars, Unusual

__all__ = ["Loader", "Unusual", "read_fast"]


def read_fast(text: str) -> list[Any]:
    """The documents of `text`, or `Unusual`."""
    scalars = PlainScalars()
    # The readers make only acyclic dicts and lists, a great many: the cycle collector would
    # walk the growing heap again and again for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            return read_block(text, scalars)
        except Unusual:
            return read_events(text, scalars)
    finally:
        if collecting:
            gc.enable()
