"""A rank's place in its replica, as an engine's command needs it, and the command itself."""

from __future__ import annotations

from dataclasses import dataclass

from paraserve.planner.topology import Rank


@dataclass(frozen=True)
class RankLaunch:
    """Where one rank sits: the replica's head (rank 0) is where every other rank connects."""

    replica: int
    rank: Rank
    world_size: int
    head_host: str  # the head's stable DNS name (MASTER_ADDR)
    rendezvous_port: int  # MASTER_PORT

    @property
    def is_head(self) -> bool:
        return self.rank.rank == 0


@dataclass(frozen=True)
class EngineCommand:
    """A container's command and args; ``argv`` is what the process sees."""

    command: tuple[str, ...]
    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]
