"""The Llama-style decoder math of one stage's shard: embedding, layers, final norm, LM head.

Shapes: hidden states are [batch, tokens, H]. With sequence parallelism they are sharded
along tokens between the row-parallel and column-parallel matmuls (the norm/residual
region); otherwise every TP rank holds them whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from paraserve.worker.device_memory import ActivationMeter
from paraserve.worker.kvcache import KVCache
from paraserve.worker.parallel import TensorParallel
from paraserve.worker.shape import RMS_NORM_EPS, ROPE_THETA
from paraserve.worker.weights import LayerWeights, StageWeights


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS)
    return (normed * weight.float()).to(x.dtype)


def rotary(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on [batch, heads, tokens, d] for absolute ``positions`` [tokens]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, d, 2, device=x.device).float() / d))
    angles = positions.float()[:, None] * inv_freq[None, :]
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1)
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1)
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal_offset: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention of q [b, heads, n, d] over k, v [b, kv_heads, t, d].

    ``causal_offset`` is the position of q's first token among k's (None: no mask). Returns
    the output [b, heads, n, d] and the probabilities (for activation accounting).
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal_offset is not None:
        n, t = q.shape[2], k.shape[2]
        rows = torch.arange(n, device=q.device)[:, None] + causal_offset
        cols = torch.arange(t, device=q.device)[None, :]
        scores = scores.masked_fill(cols > rows, float("-inf"))
    probs = scores.softmax(dim=-1)
    return (probs @ v.float()).to(q.dtype), probs


class StageModel:
    """Forward passes of one rank's shard; communication goes through ``tp``."""

    def __init__(self, weights: StageWeights, tp: TensorParallel, meter: ActivationMeter) -> None:
        self.weights = weights
        self.tp = tp
        self.meter = meter
        self.shard = weights.shard

    def embed(self, tokens: torch.Tensor, scatter_sequence: bool) -> torch.Tensor:
        """Vocab-parallel lookup; each rank contributes its rows, summed across the group."""
        assert self.weights.embed is not None
        local = tokens - self.shard.vocab_start
        outside = (local < 0) | (local >= self.shard.vocab)
        hidden = F.embedding(local.masked_fill(outside, 0), self.weights.embed)
        hidden = hidden.masked_fill(outside[..., None], 0.0)
        if scatter_sequence:
            return self.tp.reduce_scatter(hidden, dim=1)
        return self.tp.all_reduce(hidden)

    def _gather(self, x: torch.Tensor, sp: bool) -> torch.Tensor:
        return self.tp.all_gather(x, dim=1) if sp else x

    def _reduce(self, x: torch.Tensor, sp: bool) -> torch.Tensor:
        return self.tp.reduce_scatter(x, dim=1) if sp else self.tp.all_reduce(x)

    def layer(
        self,
        x: torch.Tensor,
        w: LayerWeights,
        cache: KVCache,
        cache_layer: int,
        start: int,
        real_tokens: int,
        sp: bool,
    ) -> torch.Tensor:
        """One decoder layer on the tokens at positions [start, start + n).

        With ``start == 0`` this is a prefill (causal attention over the new tokens; only the
        first ``real_tokens`` are cached, the rest are sequence-parallel padding); otherwise
        a decode step attending over the cache.
        """
        d = self.shard.shape.head_dim
        h = self._gather(rms_norm(x, w.attn_norm), sp)
        b, n, _ = h.shape
        q = (h @ w.wq.t()).view(b, n, -1, d).transpose(1, 2)
        k = (h @ w.wk.t()).view(b, n, -1, d).transpose(1, 2)
        v = (h @ w.wv.t()).view(b, n, -1, d).transpose(1, 2)
        positions = torch.arange(start, start + n, device=x.device)
        q, k = rotary(q, positions), rotary(k, positions)
        if start == 0:
            cache.write(cache_layer, 0, k[:, :, :real_tokens], v[:, :, :real_tokens])
            out, probs = attend(q, k, v, causal_offset=0)
        else:
            cache.write(cache_layer, start, k, v)
            keys, values = cache.read(cache_layer, b, start + n)
            out, probs = attend(q, keys, values, causal_offset=start)
        self.meter.observe(x, h, q, k, v, probs, out)
        attn = out.transpose(1, 2).reshape(b, n, -1) @ w.wo.t()
        x = x + self._reduce(attn, sp)

        h = self._gather(rms_norm(x, w.mlp_norm), sp)
        gate = F.silu(h @ w.w_gate.t())
        up = h @ w.w_up.t()
        product = gate * up
        self.meter.observe(x, h, gate, up, product)
        return x + self._reduce(product @ w.w_down.t(), sp)

    def layers(
        self, x: torch.Tensor, cache: KVCache, start: int, real_tokens: int, sp: bool
    ) -> torch.Tensor:
        for index, w in enumerate(self.weights.layers):
            x = self.layer(x, w, cache, index, start, real_tokens, sp)
        return x

    def logits(self, x: torch.Tensor, sp: bool, last_token: int | None) -> torch.Tensor:
        """Final norm and vocab-parallel LM head → full float32 logits [b, n', V].

        ``last_token`` keeps only that position (what sampling needs); None keeps all.
        """
        assert self.weights.final_norm is not None and self.weights.lm_head is not None
        h = self._gather(rms_norm(x, self.weights.final_norm), sp)
        if last_token is not None:
            h = h[:, last_token : last_token + 1]
        local = h @ self.weights.lm_head.t()
        full = self.tp.all_gather(local, dim=-1)
        self.meter.observe(x, h, local, full)
        return full[..., : self.shard.shape.vocab_size].float()
