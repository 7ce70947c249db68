"""Prefill and decode through the pipeline: stage 0 embeds, activations go stage to stage with
send/recv, the last stage samples, and the sampled tokens return to every rank of the pipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from paraserve.worker.groups import RankGroups
from paraserve.worker.kvcache import KVCache
from paraserve.worker.model import StageModel


@dataclass
class StepResult:
    """The next token of every sequence (on every rank) and, on the last stage, the logits."""

    tokens: torch.Tensor  # [batch] int64
    logits: torch.Tensor | None  # [batch, n, V] float32, last stage only


class Engine:
    """One rank's part of a step; every rank of the replica calls the same steps in order."""

    def __init__(
        self, groups: RankGroups, model: StageModel, cache: KVCache, dtype: torch.dtype
    ) -> None:
        self.groups = groups
        self.env = groups.env
        self.model = model
        self.cache = cache
        self.dtype = dtype
        self.device = groups.device

    @property
    def hidden_size(self) -> int:
        return self.model.shard.shape.hidden_size

    def _receive(self, batch: int, tokens: int) -> torch.Tensor:
        buffer = torch.empty(batch, tokens, self.hidden_size, dtype=self.dtype, device=self.device)
        dist.recv(buffer, src=self.groups.prev_stage_rank)
        return buffer

    def _finish(self, x: torch.Tensor, sp: bool, last: int, all_logits: bool) -> StepResult:
        """Hand activations on, or sample; then share the tokens along the pipeline."""
        logits = None
        tokens = torch.empty(x.shape[0], dtype=torch.int64, device=self.device)
        if not self.env.is_last_stage:
            dist.send(x.contiguous(), dst=self.groups.next_stage_rank)
        else:
            logits = self.model.logits(x, sp, last_token=None if all_logits else last)
            tokens = logits[:, last if all_logits else -1].argmax(dim=-1)
        if self.groups.pp_group is not None:
            dist.broadcast(tokens, src=self.groups.last_stage_rank, group=self.groups.pp_group)
        return StepResult(tokens, logits)

    def prefill(
        self, prompt: torch.Tensor | None, batch: int, length: int, all_logits: bool = False
    ) -> StepResult:
        """Run ``batch`` prompts of ``length`` tokens (``prompt`` needed on the first stage).

        With sequence parallelism the prompt is padded to a multiple of tensor so it splits
        evenly; padding sits after the real tokens, so causal attention never sees it.
        """
        tp = self.env.tp_size
        sp = self.env.sequence_parallel and tp > 1
        padded = -(-length // tp) * tp if sp else length
        self.cache.length = 0
        if self.env.is_first_stage:
            assert prompt is not None
            tokens = torch.zeros(batch, padded, dtype=torch.int64, device=self.device)
            tokens[:, :length] = prompt
            x = self.model.embed(tokens, scatter_sequence=sp)
        else:
            x = self._receive(batch, padded // tp if sp else padded)
        x = self.model.layers(x, self.cache, start=0, real_tokens=length, sp=sp)
        result = self._finish(x, sp, last=length - 1, all_logits=all_logits)
        if result.logits is not None and all_logits:
            result.logits = result.logits[:, :length]
        self.cache.length = length
        return result

    def decode(self, tokens: torch.Tensor) -> StepResult:
        """One token per sequence at the next position.

        A single token cannot be split along the sequence, so decode runs plain tensor
        parallelism (all-reduce) even when sequence parallelism is on.
        """
        start = self.cache.length
        if self.env.is_first_stage:
            x = self.model.embed(tokens.view(-1, 1), scatter_sequence=False)
        else:
            x = self._receive(tokens.numel(), 1)
        x = self.model.layers(x, self.cache, start=start, real_tokens=1, sp=False)
        result = self._finish(x, sp=False, last=0, all_logits=False)
        self.cache.length = start + 1
        return result
