"""The rank environment contract of DESIGN.md: parse it, check it is self-consistent, build it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from paraserve.planner import topology

DEFAULT_METRICS_PORT = 9400
DEFAULT_METRICS_PATH = "/metrics"


class RankEnvError(ValueError):
    """The environment a rank was started with is missing a value or contradicts itself."""


@dataclass(frozen=True)
class RankEnv:
    """Where one rank sits: its torch.distributed identity and its PP/TP/SP coordinates."""

    world_size: int
    rank: int
    pp_size: int
    tp_size: int
    sp_size: int
    pp_rank: int
    tp_rank: int
    sp_rank: int
    stage_layers: tuple[int, int] | None
    replica: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    local_rank: int = 0
    topology_path: str | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_path: str = DEFAULT_METRICS_PATH

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_coordinator(self) -> bool:
        """Rank 0 runs the load generator and tells every rank what to do next."""
        return self.rank == 0

    @property
    def sequence_parallel(self) -> bool:
        return self.sp_size > 1

    def rank_of(self, pp_rank: int, tp_rank: int) -> int:
        """Megatron's order: a tensor-parallel group is a run of consecutive ranks."""
        return pp_rank * self.tp_size + tp_rank

    def check(self, num_layers: int | None = None) -> None:
        """Raise RankEnvError with one actionable line if the coordinates contradict each other."""
        for name, value in (
            ("PARASERVE_PP_SIZE", self.pp_size),
            ("PARASERVE_TP_SIZE", self.tp_size),
            ("PARASERVE_SP_SIZE", self.sp_size),
            ("WORLD_SIZE", self.world_size),
        ):
            if value < 1:
                raise RankEnvError(f"{name}={value} must be ≥ 1")
        if self.pp_size * self.tp_size != self.world_size:
            raise RankEnvError(
                f"WORLD_SIZE={self.world_size} but PARASERVE_PP_SIZE × PARASERVE_TP_SIZE = "
                f"{self.pp_size} × {self.tp_size} = {self.pp_size * self.tp_size}"
            )
        if self.sp_size not in (1, self.tp_size):
            raise RankEnvError(
                f"PARASERVE_SP_SIZE={self.sp_size} must be 1 or PARASERVE_TP_SIZE={self.tp_size}"
            )
        if not 0 <= self.rank < self.world_size:
            raise RankEnvError(f"RANK={self.rank} is outside WORLD_SIZE={self.world_size}")
        if not 0 <= self.pp_rank < self.pp_size:
            raise RankEnvError(
                f"PARASERVE_PP_RANK={self.pp_rank} is outside PP_SIZE={self.pp_size}"
            )
        if not 0 <= self.tp_rank < self.tp_size:
            raise RankEnvError(
                f"PARASERVE_TP_RANK={self.tp_rank} is outside TP_SIZE={self.tp_size}"
            )
        expected = self.rank_of(self.pp_rank, self.tp_rank)
        if self.rank != expected:
            raise RankEnvError(
                f"RANK={self.rank} but PP_RANK × TP_SIZE + TP_RANK = "
                f"{self.pp_rank} × {self.tp_size} + {self.tp_rank} = {expected}"
            )
        sp_expected = self.tp_rank if self.sp_size > 1 else 0
        if self.sp_rank != sp_expected:
            raise RankEnvError(
                f"PARASERVE_SP_RANK={self.sp_rank} but it must be {sp_expected} "
                f"(TP_RANK when SP_SIZE > 1, else 0)"
            )
        if self.stage_layers is not None:
            start, end = self.stage_layers
            if not 0 <= start < end:
                raise RankEnvError(f"PARASERVE_STAGE_LAYERS={start}:{end} is not a layer range")
            if num_layers is not None and end > num_layers:
                raise RankEnvError(
                    f"PARASERVE_STAGE_LAYERS={start}:{end} goes past the model's "
                    f"{num_layers} layers"
                )


def stage_layers(num_layers: int, pipeline: int, pp_rank: int) -> tuple[int, int]:
    """The planner's split: ⌊L/pp⌋ layers per stage, one more for each of the first L mod pp."""
    return topology.stage_layers(num_layers, pipeline)[pp_rank]


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise RankEnvError(f"{name} is not set (the operator sets it on every rank pod)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise RankEnvError(f"{name}={raw!r} is not an integer") from None


def _layers(raw: str | None) -> tuple[int, int] | None:
    if raw is None or raw == "":
        return None
    start, sep, end = raw.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise RankEnvError(f"PARASERVE_STAGE_LAYERS={raw!r} is not 'start:end'") from None


def parse_rank_env(environ: Mapping[str, str]) -> RankEnv:
    """Read the contract; without WORLD_SIZE the worker is a single process (world of one)."""
    metrics_port = _int(environ, "PARASERVE_METRICS_PORT", DEFAULT_METRICS_PORT)
    metrics_path = environ.get("PARASERVE_METRICS_PATH") or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/"):
        raise RankEnvError(f"PARASERVE_METRICS_PATH={metrics_path!r} must start with '/'")
    topology = environ.get("PARASERVE_TOPOLOGY") or None
    if "WORLD_SIZE" not in environ:
        return RankEnv(
            world_size=1,
            rank=0,
            pp_size=1,
            tp_size=1,
            sp_size=1,
            pp_rank=0,
            tp_rank=0,
            sp_rank=0,
            stage_layers=_layers(environ.get("PARASERVE_STAGE_LAYERS")),
            topology_path=topology,
            metrics_port=metrics_port,
            metrics_path=metrics_path,
        )
    world_size = _int(environ, "WORLD_SIZE")
    env = RankEnv(
        world_size=world_size,
        rank=_int(environ, "RANK"),
        pp_size=_int(environ, "PARASERVE_PP_SIZE", 1 if world_size == 1 else None),
        tp_size=_int(environ, "PARASERVE_TP_SIZE", 1 if world_size == 1 else None),
        sp_size=_int(environ, "PARASERVE_SP_SIZE", 1),
        pp_rank=_int(environ, "PARASERVE_PP_RANK", 0 if world_size == 1 else None),
        tp_rank=_int(environ, "PARASERVE_TP_RANK", 0 if world_size == 1 else None),
        sp_rank=_int(environ, "PARASERVE_SP_RANK", 0),
        stage_layers=_layers(environ.get("PARASERVE_STAGE_LAYERS")),
        replica=_int(environ, "PARASERVE_REPLICA", 0),
        master_addr=environ.get("MASTER_ADDR") or "127.0.0.1",
        master_port=_int(environ, "MASTER_PORT", 29500),
        local_rank=_int(environ, "LOCAL_RANK", 0),
        topology_path=topology,
        metrics_port=metrics_port,
        metrics_path=metrics_path,
    )
    if world_size > 1 and "MASTER_ADDR" not in environ:
        raise RankEnvError("MASTER_ADDR is not set (the DNS name of rank 0 of the replica)")
    env.check()
    return env


def rank_environ(
    rank: int,
    *,
    pipeline: int,
    tensor: int,
    sequence: int,
    num_layers: int,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    replica: int = 0,
    topology_path: str | None = None,
) -> dict[str, str]:
    """The env the operator gives rank ``rank`` of a replica (used by tests and by-hand runs)."""
    pp_rank, tp_rank = divmod(rank, tensor)
    start, end = stage_layers(num_layers, pipeline, pp_rank)
    environ = {
        "WORLD_SIZE": str(pipeline * tensor),
        "RANK": str(rank),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "PARASERVE_PP_SIZE": str(pipeline),
        "PARASERVE_TP_SIZE": str(tensor),
        "PARASERVE_SP_SIZE": str(sequence),
        "PARASERVE_PP_RANK": str(pp_rank),
        "PARASERVE_TP_RANK": str(tp_rank),
        "PARASERVE_SP_RANK": str(tp_rank if sequence > 1 else 0),
        "PARASERVE_STAGE_LAYERS": f"{start}:{end}",
        "PARASERVE_REPLICA": str(replica),
    }
    if topology_path is not None:
        environ["PARASERVE_TOPOLOGY"] = topology_path
    return environ
