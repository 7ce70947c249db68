"""The built-in load generator: seeded request arrivals and random prompts, batched statically."""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoadProfile:
    """Requests per second (0: all at once), their shape, and when to stop (0: never)."""

    rate: float = 1.0
    prompt_length: int = 16
    output_tokens: int = 8
    requests: int = 0
    duration: float = 0.0
    arrival: str = "poisson"  # or "uniform": one request every 1/rate seconds
    seed: int = 0

    def check(self, max_batch_size: int, max_sequence_length: int) -> None:
        if self.prompt_length < 1 or self.output_tokens < 1:
            raise ValueError("--prompt-length and --output-tokens must be ≥ 1")
        if self.prompt_length + self.output_tokens > max_sequence_length:
            raise ValueError(
                f"--prompt-length {self.prompt_length} + --output-tokens {self.output_tokens} "
                f"exceeds maxSequenceLength {max_sequence_length}"
            )
        if self.rate < 0 or self.requests < 0 or self.duration < 0:
            raise ValueError("--rate, --requests and --duration must be ≥ 0")
        if self.arrival not in ("poisson", "uniform"):
            raise ValueError(f"--arrival {self.arrival!r}: use poisson or uniform")


@dataclass(frozen=True)
class Request:
    index: int
    arrival: float  # seconds since the load started


@dataclass(frozen=True)
class Batch:
    requests: tuple[Request, ...]
    prompt: torch.Tensor  # [batch, prompt_length] int64


class LoadGenerator:
    """Arrivals on a seeded schedule; the engine takes up to maxBatchSize waiting requests,
    runs them to completion, then takes the next batch (static batching)."""

    def __init__(self, profile: LoadProfile, vocab_size: int, max_batch_size: int) -> None:
        self.profile = profile
        self.vocab_size = vocab_size
        self.max_batch_size = max_batch_size
        self._clock = random.Random(profile.seed)
        self._tokens = torch.Generator().manual_seed(profile.seed)
        self._queue: deque[Request] = deque()
        self._issued = 0
        self._next = self._first_arrival()

    def _first_arrival(self) -> float | None:
        return 0.0 if self._may_issue(0.0) else None

    def _may_issue(self, at: float) -> bool:
        p = self.profile
        if p.requests and self._issued >= p.requests:
            return False
        return not (p.duration and at >= p.duration)

    def _gap(self) -> float:
        rate = self.profile.rate
        if rate <= 0:
            return 0.0
        if self.profile.arrival == "uniform":
            return 1.0 / rate
        return -math.log(1.0 - self._clock.random()) / rate

    def next_arrival(self) -> float | None:
        """When the next request arrives (seconds since start); None when no more will."""
        return self._next

    def admit(self, now: float) -> None:
        """Queue every request that has arrived by ``now``."""
        while self._next is not None and self._next <= now:
            self._queue.append(Request(self._issued, self._next))
            self._issued += 1
            following = self._next + self._gap()
            self._next = following if self._may_issue(following) else None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def finished(self) -> bool:
        return self._next is None and not self._queue

    def take(self) -> Batch | None:
        """Up to maxBatchSize waiting requests with their random prompts."""
        if not self._queue:
            return None
        count = min(len(self._queue), self.max_batch_size)
        requests = tuple(self._queue.popleft() for _ in range(count))
        prompt = torch.randint(
            0, self.vocab_size, (count, self.profile.prompt_length), generator=self._tokens
        )
        return Batch(requests, prompt)
