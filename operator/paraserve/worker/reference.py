"""The single-process, cache-free forward of the full model: the ground truth that the sharded,
pipelined runtime is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from paraserve.worker.model import rms_norm, rotary
from paraserve.worker.weights import StageWeights


def reference_logits(weights: StageWeights, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [batch, n, V] (float32) of the whole model on ``tokens`` [batch, n].

    ``weights`` must be the unsharded model (tensor 1, all layers, both ends).
    """
    assert weights.shard.tp_size == 1 and weights.embed is not None
    assert weights.final_norm is not None and weights.lm_head is not None
    shape = weights.shard.shape
    d = shape.head_dim
    x = F.embedding(tokens, weights.embed)
    b, n, _ = x.shape
    positions = torch.arange(n)
    for w in weights.layers:
        h = rms_norm(x, w.attn_norm)
        q = rotary((h @ w.wq.t()).view(b, n, shape.num_heads, d).transpose(1, 2), positions)
        k = rotary((h @ w.wk.t()).view(b, n, shape.num_kv_heads, d).transpose(1, 2), positions)
        v = (h @ w.wv.t()).view(b, n, shape.num_kv_heads, d).transpose(1, 2)
        group = shape.num_heads // shape.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
        out = out.to(x.dtype)
        x = x + out.transpose(1, 2).reshape(b, n, -1) @ w.wo.t()
        h = rms_norm(x, w.mlp_norm)
        x = x + (F.silu(h @ w.w_gate.t()) * (h @ w.w_up.t())) @ w.w_down.t()
    logits = rms_norm(x, weights.final_norm) @ weights.lm_head.t()
    return logits[..., : shape.vocab_size].float()
