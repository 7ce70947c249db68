"""One rank's life: build its shard, then step with the replica — rank 0 runs the load
generator and broadcasts each step, every rank runs it and records its metrics."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from paraserve.api.rank_env import RankEnv
from paraserve.worker.device_memory import ActivationMeter, device_peaks, process_rss_bytes
from paraserve.worker.engine import Engine
from paraserve.worker.groups import RankGroups
from paraserve.worker.kvcache import KVCache
from paraserve.worker.loadgen import LoadGenerator, LoadProfile
from paraserve.worker.model import StageModel
from paraserve.worker.parallel import TensorParallel
from paraserve.worker.rank_metrics import RankMetrics
from paraserve.worker.shape import ModelShape
from paraserve.worker.weights import StageWeights, build_stage

log = logging.getLogger("paraserve.worker")

# Control message: [op, batch, prompt_length, output_tokens, queue delay of each sequence…]
OP_IDLE, OP_GENERATE, OP_STOP = 0, 1, 2
_HEADER = 4


@dataclass(frozen=True)
class RunConfig:
    """What every rank of the replica must agree on, plus this rank's own options."""

    shape: ModelShape
    dtype: torch.dtype
    kv_cache_dtype: torch.dtype
    max_batch_size: int
    max_sequence_length: int
    layer_range: tuple[int, int]
    seed: int = 0
    load: LoadProfile = field(default_factory=LoadProfile)
    exit_when_done: bool = False
    # Tests of hang detection: after this many requests, accept but never generate (0: never).
    stall_after: int = 0
    dump: Path | None = None
    heartbeat_seconds: float = 1.0


@dataclass
class Rank:
    """The assembled rank: its shard, cache, engine and metrics."""

    env: RankEnv
    groups: RankGroups
    config: RunConfig
    weights: StageWeights
    cache: KVCache
    meter: ActivationMeter
    engine: Engine
    metrics: RankMetrics
    dumped: bool = False

    def publish_memory(self) -> None:
        parameters, kv_cache = self.weights.nbytes, self.cache.nbytes
        activations = self.meter.peak
        self.metrics.set_memory(
            parameters=parameters,
            kv_cache=kv_cache,
            activations_peak=activations,
            process_rss=process_rss_bytes(),
        )
        peaks = device_peaks(self.groups.device)
        if peaks is None:
            self.metrics.set_memory_used(parameters + kv_cache + activations)
        else:
            self.metrics.set_memory(
                device_allocated_peak=peaks.allocated, device_reserved_peak=peaks.reserved
            )
            self.metrics.set_memory_used(peaks.reserved)


def build_rank(groups: RankGroups, config: RunConfig, metrics: RankMetrics) -> Rank:
    env = groups.env
    weights = build_stage(
        config.shape,
        tp_size=env.tp_size,
        tp_rank=env.tp_rank,
        layer_range=config.layer_range,
        first_stage=env.is_first_stage,
        last_stage=env.is_last_stage,
        seed=config.seed,
        dtype=config.dtype,
        device=groups.device,
    )
    cache = KVCache(
        weights.shard,
        len(weights.layers),
        config.max_batch_size,
        config.max_sequence_length,
        config.kv_cache_dtype,
        groups.device,
    )
    tp = TensorParallel(env.tp_size, env.tp_rank, groups.tp_group, env.sequence_parallel)
    meter = ActivationMeter()
    engine = Engine(groups, StageModel(weights, tp, meter), cache, config.dtype)
    rank = Rank(env, groups, config, weights, cache, meter, engine, metrics)
    rank.publish_memory()
    return rank


def _broadcast(rank: Rank, tensor: torch.Tensor) -> None:
    if rank.groups.world_group is not None:
        dist.broadcast(tensor, src=0, group=rank.groups.world_group)


def _control(rank: Rank, op: int, batch: int = 0, delays: list[float] | None = None) -> None:
    load = rank.config.load
    message = torch.zeros(_HEADER + rank.config.max_batch_size, dtype=torch.float64)
    message[:_HEADER] = torch.tensor([op, batch, load.prompt_length, load.output_tokens])
    if delays:
        message[_HEADER : _HEADER + len(delays)] = torch.tensor(delays, dtype=torch.float64)
    _broadcast(rank, message.to(rank.groups.device))


def generate(
    rank: Rank, prompt: torch.Tensor, output_tokens: int, delays: list[float], started: float
) -> torch.Tensor:
    """Prefill then decode ``output_tokens - 1`` steps; every rank records the latencies.

    Each step ends for every rank when the sampled tokens reach it along the pipeline, so
    each rank's clock measures the same end-to-end step; ``delays`` adds the queueing that
    only rank 0 saw. Counters are kept by rank 0 alone so that summing over ranks is right.
    """
    batch, length = prompt.shape
    keep_logits = rank.config.dump is not None and not rank.dumped
    result = rank.engine.prefill(prompt, batch, length, all_logits=keep_logits)
    prefill_seconds = time.perf_counter() - started
    for delay in delays:
        rank.metrics.prefill.observe(delay + prefill_seconds)
    generated = [result.tokens]
    logits = [result.logits]
    for _ in range(output_tokens - 1):
        step = time.perf_counter()
        result = rank.engine.decode(generated[-1])
        seconds = time.perf_counter() - step
        for _ in range(batch):
            rank.metrics.decode.observe(seconds)
        generated.append(result.tokens)
        logits.append(result.logits)
    if rank.env.is_coordinator:
        rank.metrics.requests.inc(batch)
        rank.metrics.tokens.inc(batch * output_tokens)
    rank.publish_memory()
    tokens = torch.stack(generated, dim=1)
    if keep_logits:
        rank.dumped = True
        if rank.env.is_last_stage and rank.env.tp_rank == 0 and rank.config.dump is not None:
            torch.save(
                {
                    "prompt": prompt.cpu(),
                    "generated": tokens.cpu(),
                    "prefill_logits": logits[0].cpu() if logits[0] is not None else None,
                    "decode_logits": [t[:, 0].cpu() for t in logits[1:] if t is not None],
                },
                rank.config.dump,
            )
    return tokens


def coordinate(rank: Rank, stop: threading.Event) -> None:
    """Rank 0: run the load generator, tell every rank each step, stop them all at the end."""
    config = rank.config
    load = LoadGenerator(config.load, config.shape.vocab_size, config.max_batch_size)
    start = last_sent = time.monotonic()
    served = 0
    while True:
        now = time.monotonic() - start
        load.admit(now)
        rank.metrics.waiting.set(load.waiting)
        if stop.is_set() or (load.finished and config.exit_when_done):
            _control(rank, OP_STOP)
            return
        stalled = 0 < config.stall_after <= served
        batch = None if stalled else load.take()
        if batch is None:
            upcoming = load.next_arrival()
            wait = config.heartbeat_seconds if upcoming is None else upcoming - now
            stop.wait(max(0.0, min(wait, config.heartbeat_seconds)))
            if time.monotonic() - last_sent >= config.heartbeat_seconds:
                # Keeps the other ranks' pending collective from timing out while idle.
                _control(rank, OP_IDLE)
                last_sent = time.monotonic()
            continue
        started = time.perf_counter()
        dispatched = time.monotonic() - start
        delays = [dispatched - request.arrival for request in batch.requests]
        rank.metrics.waiting.set(load.waiting)
        rank.metrics.running.set(len(batch.requests))
        _control(rank, OP_GENERATE, len(batch.requests), delays)
        prompt = batch.prompt.to(rank.groups.device)
        _broadcast(rank, prompt)
        generate(rank, prompt, config.load.output_tokens, delays, started)
        rank.metrics.running.set(0)
        last_sent = time.monotonic()
        served += len(batch.requests)
        if served % 50 < len(batch.requests) or load.finished:
            log.info("served %d requests, %d waiting", served, load.waiting)


def follow(rank: Rank) -> None:
    """Every other rank: wait for the next step from rank 0 and run it."""
    message = torch.zeros(_HEADER + rank.config.max_batch_size, dtype=torch.float64)
    message = message.to(rank.groups.device)
    while True:
        _broadcast(rank, message)
        op, batch, length, output_tokens = (int(v) for v in message[:_HEADER].tolist())
        if op == OP_STOP:
            return
        if op != OP_GENERATE:
            continue
        started = time.perf_counter()
        delays = message[_HEADER : _HEADER + batch].tolist()
        prompt = torch.empty(batch, length, dtype=torch.int64, device=rank.groups.device)
        _broadcast(rank, prompt)
        generate(rank, prompt, output_tokens, delays, started)


def serve(rank: Rank, stop: threading.Event) -> None:
    if rank.env.is_coordinator:
        coordinate(rank, stop)
    else:
        follow(rank)
