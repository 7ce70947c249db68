"""Where the event loop was while something held it: its thread's stack, sampled from another.

`loop_lag` says how long the loop was held, not by what, and a profiler's samples of the whole
run do not say which of them fell in the one long stall. Here `loop_lag`'s 0.1 s timer also
beats; a watchdog thread that finds the beat older than half of `HELD` takes the loop thread's
stack every 0.1 s until the beat comes back, and the loop then logs one line per stall of `HELD`
or more: how long, and the frames it was found in, the most often first.

The watchdog runs only between the loop's bytecodes or while it waits in C with the GIL released
(Python hands the GIL over every 5 ms); a single C call that keeps the GIL (a JSON parse of a
whole listing, a garbage collection) is seen as the frame that made it, once it has returned.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Final

logger = logging.getLogger("paraserve.controller")

#: A stall worth a line: nothing of the operator (watches, reconciles, the webhook) ran for 1 s.
HELD: Final = 1.0
#: How often the watchdog looks.
EVERY: Final = 0.1
#: The innermost frames that name a sample (enough to see the caller of a library).
DEPTH: Final = 6
#: The distinct stacks a line shows.
SHOWN: Final = 3
#: The line logged per stall, and how a reader of the log finds it again: seconds, stacks.
LINE: Final = "event loop held for %.2f s; found in: %s"
LOGGED: Final = re.compile(r"event loop held for ([0-9.]+) s; found in: (.*)$")


def where(frame: FrameType) -> str:
    """A stack, innermost first: `folder/file:line function` for the innermost `DEPTH` frames."""
    frames = traceback.extract_stack(frame)[-DEPTH:]
    return " < ".join(
        f"{'/'.join(entry.filename.split('/')[-2:])}:{entry.lineno} {entry.name}"
        for entry in reversed(frames)
    )


class StallWatch:
    """Beaten on the loop; a daemon thread samples the loop's stack while the beat is late."""

    def __init__(self, held: float = HELD, every: float = EVERY) -> None:
        self.held = held
        self.every = every
        self._beat = time.monotonic()
        self._loop_thread = 0
        # Appended by the watchdog thread, swapped out by the loop: both single bytecodes.
        self._samples: list[str] = []
        self._stopped = threading.Event()
        self._report: Callable[[float, list[tuple[str, int]]], None] = lambda *_: None

    def start(self, report: Callable[[float, list[tuple[str, int]]], None]) -> Callable[[], None]:
        """Watch the running loop's thread; `report(seconds, stacks)` on the loop after each
        stall. Returns the function that stops the watchdog."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._report = report
        thread = threading.Thread(target=self._watch, name="loop-stalls", daemon=True)
        thread.start()
        return self._stopped.set

    def beat(self) -> None:
        """One beat of the loop: reports the stall that has just ended, if there was one."""
        now = time.monotonic()
        held, self._beat = now - self._beat, now
        samples, self._samples = self._samples, []
        if held >= self.held:
            counted = collections.Counter(samples).most_common(SHOWN)
            self._report(held, counted)

    def _watch(self) -> None:
        while not self._stopped.wait(self.every):
            if time.monotonic() - self._beat < self.held / 2:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is not None:
                self._samples.append(where(frame))


def log_stall(seconds: float, stacks: list[tuple[str, int]]) -> None:
    found = "; ".join(f"{count}× {stack}" for stack, count in stacks) or "no sample taken"
    logger.warning(LINE, seconds, found)
