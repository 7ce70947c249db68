"""The rank environment: the variables the operator sets on every rank pod and the worker reads.

One contract, both sides: ``rank_environ`` computes the values (the operator's pods, local
replicas and the tests all call it) and ``parse_rank_env`` reads them back and checks they agree
with each other (docs/design.md, docs/worker.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from paraserve.api.rank_layout import rank_of, ranks, stage_layers
from paraserve.api.spec import Parallelism

# torch.distributed's own variables.
WORLD_SIZE: Final = "WORLD_SIZE"
RANK: Final = "RANK"
LOCAL_RANK: Final = "LOCAL_RANK"
LOCAL_WORLD_SIZE: Final = "LOCAL_WORLD_SIZE"
MASTER_ADDR: Final = "MASTER_ADDR"
MASTER_PORT: Final = "MASTER_PORT"
# Where the rank sits in the PP × TP grid, and what it holds.
PP_SIZE: Final = "PARASERVE_PP_SIZE"
TP_SIZE: Final = "PARASERVE_TP_SIZE"
SP_SIZE: Final = "PARASERVE_SP_SIZE"
PP_RANK: Final = "PARASERVE_PP_RANK"
TP_RANK: Final = "PARASERVE_TP_RANK"
SP_RANK: Final = "PARASERVE_SP_RANK"
# Set only with expert parallelism (EP > 1): the share of the routed experts the rank holds.
EP_SIZE: Final = "PARASERVE_EP_SIZE"
EP_RANK: Final = "PARASERVE_EP_RANK"
STAGE_LAYERS: Final = "PARASERVE_STAGE_LAYERS"
REPLICA: Final = "PARASERVE_REPLICA"
TOPOLOGY: Final = "PARASERVE_TOPOLOGY"
METRICS_PORT: Final = "PARASERVE_METRICS_PORT"
METRICS_PATH: Final = "PARASERVE_METRICS_PATH"

DEFAULT_MASTER_ADDR: Final = "127.0.0.1"
#: The rendezvous port of rank 0 (the pods' and the headless Service's).
DEFAULT_MASTER_PORT: Final = 29500
DEFAULT_METRICS_PORT: Final = 9400
DEFAULT_METRICS_PATH: Final = "/metrics"


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
    master_addr: str = DEFAULT_MASTER_ADDR
    master_port: int = DEFAULT_MASTER_PORT
    local_rank: int = 0
    topology_path: str | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_path: str = DEFAULT_METRICS_PATH
    ep_size: int = 1
    ep_rank: int = 0

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
        return rank_of(pp_rank, tp_rank, self.tp_size)

    def check(self, num_layers: int | None = None) -> None:
        """Raise RankEnvError with one actionable line if the coordinates contradict each other."""
        for name, value in (
            (PP_SIZE, self.pp_size),
            (TP_SIZE, self.tp_size),
            (SP_SIZE, self.sp_size),
            (WORLD_SIZE, self.world_size),
        ):
            if value < 1:
                raise RankEnvError(f"{name}={value} must be ≥ 1")
        if self.pp_size * self.tp_size != self.world_size:
            raise RankEnvError(
                f"{WORLD_SIZE}={self.world_size} but {PP_SIZE} × {TP_SIZE} = "
                f"{self.pp_size} × {self.tp_size} = {self.pp_size * self.tp_size}"
            )
        if self.sp_size not in (1, self.tp_size):
            raise RankEnvError(f"{SP_SIZE}={self.sp_size} must be 1 or {TP_SIZE}={self.tp_size}")
        if not 0 <= self.rank < self.world_size:
            raise RankEnvError(f"{RANK}={self.rank} is outside {WORLD_SIZE}={self.world_size}")
        if not 0 <= self.pp_rank < self.pp_size:
            raise RankEnvError(f"{PP_RANK}={self.pp_rank} is outside PP_SIZE={self.pp_size}")
        if not 0 <= self.tp_rank < self.tp_size:
            raise RankEnvError(f"{TP_RANK}={self.tp_rank} is outside TP_SIZE={self.tp_size}")
        expected = self.rank_of(self.pp_rank, self.tp_rank)
        if self.rank != expected:
            raise RankEnvError(
                f"{RANK}={self.rank} but PP_RANK × TP_SIZE + TP_RANK = "
                f"{self.pp_rank} × {self.tp_size} + {self.tp_rank} = {expected}"
            )
        sp_expected = self.tp_rank if self.sp_size > 1 else 0
        if self.sp_rank != sp_expected:
            raise RankEnvError(
                f"{SP_RANK}={self.sp_rank} but it must be {sp_expected} "
                f"(TP_RANK when SP_SIZE > 1, else 0)"
            )
        if self.ep_size < 1 or self.tp_size % self.ep_size:
            raise RankEnvError(f"{EP_SIZE}={self.ep_size} must divide {TP_SIZE}={self.tp_size}")
        ep_expected = self.tp_rank // (self.tp_size // self.ep_size) if self.ep_size > 1 else 0
        if self.ep_rank != ep_expected:
            raise RankEnvError(
                f"{EP_RANK}={self.ep_rank} but TP_RANK // (TP_SIZE / EP_SIZE) = "
                f"{self.tp_rank} // {self.tp_size // self.ep_size} = {ep_expected}"
            )
        if self.stage_layers is not None:
            start, end = self.stage_layers
            if not 0 <= start < end:
                raise RankEnvError(f"{STAGE_LAYERS}={start}:{end} is not a layer range")
            if num_layers is not None and end > num_layers:
                raise RankEnvError(
                    f"{STAGE_LAYERS}={start}:{end} goes past the model's {num_layers} layers"
                )


def rank_environ(
    parallelism: Parallelism,
    rank: int,
    *,
    num_layers: int | None,
    replica: int = 0,
    master_addr: str = DEFAULT_MASTER_ADDR,
    master_port: int = DEFAULT_MASTER_PORT,
    topology_path: str | None = None,
    metrics_port: int | None = None,
    metrics_path: str | None = None,
) -> dict[str, str]:
    """The env of rank ``rank`` of a replica, in the order the operator writes it.

    The stage's layers are the planner's split of ``num_layers`` (left out when unknown);
    the topology path and the metrics endpoint are left out when not given (the worker's
    defaults then apply).
    """
    coordinates = ranks(parallelism)[rank]
    environ = {
        WORLD_SIZE: str(parallelism.world_size),
        RANK: str(coordinates.rank),
        LOCAL_RANK: "0",
        LOCAL_WORLD_SIZE: "1",
        MASTER_ADDR: master_addr,
        MASTER_PORT: str(master_port),
        PP_SIZE: str(parallelism.pipeline),
        TP_SIZE: str(parallelism.tensor),
        SP_SIZE: str(parallelism.sequence),
        PP_RANK: str(coordinates.pp_rank),
        TP_RANK: str(coordinates.tp_rank),
        SP_RANK: str(coordinates.sp_rank),
    }
    if parallelism.expert > 1:
        environ[EP_SIZE] = str(parallelism.expert)
        environ[EP_RANK] = str(coordinates.ep_rank)
    if num_layers:
        start, end = stage_layers(num_layers, parallelism.pipeline)[coordinates.pp_rank]
        environ[STAGE_LAYERS] = f"{start}:{end}"
    environ[REPLICA] = str(replica)
    if topology_path is not None:
        environ[TOPOLOGY] = topology_path
    if metrics_port is not None:
        environ[METRICS_PORT] = str(metrics_port)
    if metrics_path is not None:
        environ[METRICS_PATH] = metrics_path
    return environ


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
        raise RankEnvError(f"{STAGE_LAYERS}={raw!r} is not 'start:end'") from None


def parse_rank_env(environ: Mapping[str, str]) -> RankEnv:
    """Read the contract; without WORLD_SIZE the worker is a single process (world of one)."""
    metrics_port = _int(environ, METRICS_PORT, DEFAULT_METRICS_PORT)
    metrics_path = environ.get(METRICS_PATH) or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/"):
        raise RankEnvError(f"{METRICS_PATH}={metrics_path!r} must start with '/'")
    topology = environ.get(TOPOLOGY) or None
    if WORLD_SIZE not in environ:
        return RankEnv(
            world_size=1,
            rank=0,
            pp_size=1,
            tp_size=1,
            sp_size=1,
            pp_rank=0,
            tp_rank=0,
            sp_rank=0,
            stage_layers=_layers(environ.get(STAGE_LAYERS)),
            topology_path=topology,
            metrics_port=metrics_port,
            metrics_path=metrics_path,
        )
    world_size = _int(environ, WORLD_SIZE)
    env = RankEnv(
        world_size=world_size,
        rank=_int(environ, RANK),
        pp_size=_int(environ, PP_SIZE, 1 if world_size == 1 else None),
        tp_size=_int(environ, TP_SIZE, 1 if world_size == 1 else None),
        sp_size=_int(environ, SP_SIZE, 1),
        pp_rank=_int(environ, PP_RANK, 0 if world_size == 1 else None),
        tp_rank=_int(environ, TP_RANK, 0 if world_size == 1 else None),
        sp_rank=_int(environ, SP_RANK, 0),
        stage_layers=_layers(environ.get(STAGE_LAYERS)),
        replica=_int(environ, REPLICA, 0),
        master_addr=environ.get(MASTER_ADDR) or DEFAULT_MASTER_ADDR,
        master_port=_int(environ, MASTER_PORT, DEFAULT_MASTER_PORT),
        local_rank=_int(environ, LOCAL_RANK, 0),
        topology_path=topology,
        metrics_port=metrics_port,
        metrics_path=metrics_path,
        ep_size=_int(environ, EP_SIZE, 1),
        ep_rank=_int(environ, EP_RANK, 0),
    )
    if world_size > 1 and MASTER_ADDR not in environ:
        raise RankEnvError(f"{MASTER_ADDR} is not set (the DNS name of rank 0 of the replica)")
    env.check()
    return env
