"""Tensor- and sequence-parallel collectives of one TP group (identity for a group of one)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorParallel:
    """Megatron's f/g operators: all-reduce after a row-parallel matmul, or with sequence
    parallelism an all-gather along the sequence before a column-parallel matmul and a
    reduce-scatter along the sequence after a row-parallel one."""

    size: int = 1
    rank: int = 0
    group: dist.ProcessGroup | None = None
    sequence_parallel: bool = False

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.group is None:
            return x
        dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Concatenate every rank's ``x`` along ``dim`` in rank order."""
        if self.group is None:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def reduce_scatter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Sum over ranks, then keep this rank's chunk along ``dim``."""
        if self.group is None:
            return x
        chunks = [c.contiguous() for c in x.chunk(self.size, dim=dim)]
        out = torch.empty_like(chunks[self.rank])
        try:
            dist.reduce_scatter(out, chunks, group=self.group)
        except (RuntimeError, NotImplementedError):
            # Older gloo builds lack reduce_scatter; all-reduce then slice is the same sum.
            dist.all_reduce(x, group=self.group)
            out = x.chunk(self.size, dim=dim)[self.rank].contiguous()
        return out

    def scatter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's chunk of a replicated tensor (no communication)."""
        if self.size == 1:
            return x
        return x.chunk(self.size, dim=dim)[self.rank].contiguous()
