"""An engine's command for one rank: the container's command and args."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineCommand:
    """A container's command and args; ``argv`` is what the process sees."""

    command: tuple[str, ...]
    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]
