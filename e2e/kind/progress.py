"""One progress line per step, with the time since the set-up began (shared with the scripts)."""

from __future__ import annotations

import os
import sys
import time

_T0 = float(os.environ.get("KIND_T0_EPOCH") or time.time())


def step(what: str) -> None:
    elapsed = int(time.time() - _T0)
    print(f"[kind {elapsed // 60:2d}m{elapsed % 60:02d}s] {what}", file=sys.stderr, flush=True)
