"""Deterministic random weights: each rank builds exactly its shard of one seeded full model.

Every row of every full matrix has its own seed (model seed, tensor name, layer, row), so a
shard is generated without materialising the full matrix and equals the same rows of the
single-process model. Row-parallel matrices are generated transposed, so their shard is
also a run of rows.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from paraserve.worker.shape import ModelShape, Shard

_MASK = (1 << 63) - 1


@dataclass
class LayerWeights:
    """One decoder layer's shard: q/k/v, gate/up column-parallel; o, down row-parallel."""

    attn_norm: torch.Tensor  # [H]
    wq: torch.Tensor  # [heads·d, H]
    wk: torch.Tensor  # [kv_heads·d, H]
    wv: torch.Tensor  # [kv_heads·d, H]
    wo: torch.Tensor  # [H, heads·d]
    mlp_norm: torch.Tensor  # [H]
    w_gate: torch.Tensor  # [I/tp, H]
    w_up: torch.Tensor  # [I/tp, H]
    w_down: torch.Tensor  # [H, I/tp]

    def tensors(self) -> list[torch.Tensor]:
        return [
            self.attn_norm,
            self.wq,
            self.wk,
            self.wv,
            self.wo,
            self.mlp_norm,
            self.w_gate,
            self.w_up,
            self.w_down,
        ]


@dataclass
class StageWeights:
    """What one rank holds: its layers, plus the embedding on the first stage and the final
    norm and LM head on the last."""

    shard: Shard
    layer_range: tuple[int, int]
    layers: list[LayerWeights]
    embed: torch.Tensor | None  # [V/tp, H], vocab-parallel
    final_norm: torch.Tensor | None  # [H]
    lm_head: torch.Tensor | None  # [V/tp, H], vocab-parallel; the embedding itself when tied

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor once (a tied LM head is the embedding, counted once)."""
        seen: set[int] = set()
        candidates = [self.embed, *(t for layer in self.layers for t in layer.tensors())]
        candidates += [self.final_norm, self.lm_head]
        for tensor in candidates:
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


class _RowSource:
    """Rows of the seeded full model, each from its own generator state."""

    def __init__(self, seed: int, dtype: torch.dtype, device: torch.device) -> None:
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.generator = torch.Generator()

    def _row_seed(self, name: str, layer: int, row: int) -> int:
        value = self.seed & _MASK
        for part in (zlib.crc32(name.encode()), layer + 1, row + 1):
            value = (value * 6364136223846793005 + part * 1442695040888963407 + 1) & _MASK
        return value

    def rows(
        self, name: str, layer: int, start: int, count: int, width: int, limit: int | None = None
    ) -> torch.Tensor:
        """Rows [start, start+count) of a full [*, width] matrix with std 1/√width; rows at
        or past ``limit`` are zero (vocabulary padding)."""
        if self.device.type == "meta":
            return torch.empty(count, width, dtype=self.dtype, device=self.device)
        out = torch.zeros(count, width, dtype=torch.float32)
        std = 1.0 / math.sqrt(width)
        for i in range(count):
            row = start + i
            if limit is not None and row >= limit:
                continue
            self.generator.manual_seed(self._row_seed(name, layer, row))
            out[i] = torch.randn(width, generator=self.generator) * std
        return out.to(device=self.device, dtype=self.dtype)

    def norm(self, name: str, layer: int, width: int) -> torch.Tensor:
        """A norm weight near 1 (not exactly 1, so a missing norm weight shows in the tests)."""
        if self.device.type == "meta":
            return torch.empty(width, dtype=self.dtype, device=self.device)
        self.generator.manual_seed(self._row_seed(name, layer, 0))
        weight = 1.0 + 0.1 * torch.randn(width, generator=self.generator)
        return weight.to(device=self.device, dtype=self.dtype)


def build_layer(source: _RowSource, shard: Shard, layer: int) -> LayerWeights:
    d, h = shard.shape.head_dim, shard.shape.hidden_size
    return LayerWeights(
        attn_norm=source.norm("attn_norm", layer, h),
        wq=source.rows("wq", layer, shard.head_start * d, shard.heads * d, h),
        wk=source.rows("wk", layer, shard.kv_head_start * d, shard.kv_heads * d, h),
        wv=source.rows("wv", layer, shard.kv_head_start * d, shard.kv_heads * d, h),
        # Row-parallel: rows of the transposed full matrix, then back to [out, in].
        wo=source.rows("wo_t", layer, shard.head_start * d, shard.heads * d, h).t().contiguous(),
        mlp_norm=source.norm("mlp_norm", layer, h),
        w_gate=source.rows(
            "w_gate", layer, shard.tp_rank * shard.intermediate, shard.intermediate, h
        ),
        w_up=source.rows("w_up", layer, shard.tp_rank * shard.intermediate, shard.intermediate, h),
        w_down=source.rows(
            "w_down_t", layer, shard.tp_rank * shard.intermediate, shard.intermediate, h
        )
        .t()
        .contiguous(),
    )


def build_stage(
    shape: ModelShape,
    *,
    tp_size: int = 1,
    tp_rank: int = 0,
    layer_range: tuple[int, int] | None = None,
    first_stage: bool = True,
    last_stage: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> StageWeights:
    """The shard of rank (stage, tp_rank); on the ``meta`` device nothing is allocated."""
    shard = Shard(shape, tp_size, tp_rank)
    source = _RowSource(seed, dtype, torch.device(device))
    start, end = layer_range if layer_range is not None else (0, shape.num_layers)
    layers = [build_layer(source, shard, layer) for layer in range(start, end)]
    h, v = shape.hidden_size, shape.vocab_size

    def vocab_rows(name: str) -> torch.Tensor:
        return source.rows(name, -1, shard.vocab_start, shard.vocab, h, limit=v)

    embed = vocab_rows("embed") if first_stage else None
    lm_head = None
    final_norm = None
    if last_stage:
        final_norm = source.norm("final_norm", -1, h)
        if shape.tie_word_embeddings and embed is not None:
            lm_head = embed
        else:
            lm_head = vocab_rows("embed" if shape.tie_word_embeddings else "lm_head")
    return StageWeights(shard, (start, end), layers, embed, final_norm, lm_head)
