"""The KV cache of a rank's layers, allocated once for maxBatchSize × maxSequenceLength."""

from __future__ import annotations

import torch

from paraserve.worker.shape import Shard


class KVCache:
    """Per layer, keys and values shaped [maxBatchSize, kv_heads/rank, maxSequenceLength, d]."""

    def __init__(
        self,
        shard: Shard,
        num_layers: int,
        max_batch_size: int,
        max_sequence_length: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (max_batch_size, shard.kv_heads, max_sequence_length, shard.shape.head_dim)
        self.max_batch_size = max_batch_size
        self.max_sequence_length = max_sequence_length
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        #: Tokens cached so far (all sequences of a batch have the same length).
        self.length = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store [batch, kv_heads, n, d] at positions [start, start+n)."""
        batch, _, count, _ = keys.shape
        end = start + count
        if end > self.max_sequence_length or batch > self.max_batch_size:
            raise ValueError(
                f"KV cache holds {self.max_batch_size} × {self.max_sequence_length} tokens; "
                f"asked for batch {batch} up to position {end}"
            )
        self.keys[layer][:batch, :, start:end] = keys
        self.values[layer][:batch, :, start:end] = values

    def read(self, layer: int, batch: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions [0, end) (views, no copy)."""
        return self.keys[layer][:batch, :, :end], self.values[layer][:batch, :, :end]
