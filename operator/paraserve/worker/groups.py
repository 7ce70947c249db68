"""Rendezvous (env://) and the tensor-parallel and pipeline process groups of one replica."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from paraserve.api.rank_env import RankEnv


@dataclass(frozen=True)
class RankGroups:
    """The rank's communicators; ``None`` stands for a group of one (no communication)."""

    env: RankEnv
    device: torch.device
    backend: str | None
    tp_group: dist.ProcessGroup | None
    pp_group: dist.ProcessGroup | None
    world_group: dist.ProcessGroup | None

    @property
    def tp_ranks(self) -> list[int]:
        return [self.env.rank_of(self.env.pp_rank, t) for t in range(self.env.tp_size)]

    @property
    def pp_ranks(self) -> list[int]:
        return [self.env.rank_of(p, self.env.tp_rank) for p in range(self.env.pp_size)]

    @property
    def prev_stage_rank(self) -> int:
        """The rank of the previous stage with the same tensor-parallel rank."""
        return self.env.rank_of(self.env.pp_rank - 1, self.env.tp_rank)

    @property
    def next_stage_rank(self) -> int:
        return self.env.rank_of(self.env.pp_rank + 1, self.env.tp_rank)

    @property
    def last_stage_rank(self) -> int:
        return self.env.rank_of(self.env.pp_size - 1, self.env.tp_rank)


def select_device(env: RankEnv, requested: str = "auto") -> torch.device:
    """Each pod sees one GPU (LOCAL_RANK 0); without CUDA the rank runs on CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but this process sees no CUDA device")
    device = torch.device("cuda", env.local_rank)
    torch.cuda.set_device(device)
    return device


def form_groups(env: RankEnv, device: torch.device, timeout_seconds: float = 1800) -> RankGroups:
    """Join the replica's rendezvous and create every TP group, then every pipeline group.

    ``new_group`` is collective over the world: every rank creates every group, in the same
    order, and keeps the two it belongs to.
    """
    if env.world_size == 1:
        return RankGroups(env, device, None, None, None, None)
    os.environ.update(
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
    )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        timeout=timedelta(seconds=timeout_seconds),
    )
    tp_group: dist.ProcessGroup | None = None
    pp_group: dist.ProcessGroup | None = None
    for p in range(env.pp_size):
        group = dist.new_group([env.rank_of(p, t) for t in range(env.tp_size)])
        if p == env.pp_rank and isinstance(group, dist.ProcessGroup):
            tp_group = group
    for t in range(env.tp_size):
        group = dist.new_group([env.rank_of(p, t) for p in range(env.pp_size)])
        if t == env.tp_rank and isinstance(group, dist.ProcessGroup):
            pp_group = group
    return RankGroups(
        env,
        device,
        backend,
        tp_group if env.tp_size > 1 else None,
        pp_group if env.pp_size > 1 else None,
        dist.group.WORLD,
    )


def leave_groups() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
