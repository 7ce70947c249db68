"""Resolve a rank's run configuration from its env, the topology file and the command line."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from paraserve.api import Dtype
from paraserve.api.rank_env import RankEnv, parse_rank_env
from paraserve.api.rank_layout import stage_layers
from paraserve.worker.loadgen import LoadProfile
from paraserve.worker.rank_runtime import RunConfig
from paraserve.worker.shape import ModelShape, Shard
from paraserve.worker.topology import load_topology

DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_MAX_SEQUENCE_LENGTH = 128

TORCH_DTYPES = {
    Dtype.FLOAT32: torch.float32,
    Dtype.BFLOAT16: torch.bfloat16,
    Dtype.FLOAT16: torch.float16,
}


def torch_dtype(value: str | Dtype, what: str) -> torch.dtype:
    try:
        dtype = Dtype(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a dtype") from None
    if dtype not in TORCH_DTYPES:
        raise ValueError(
            f"{what} {dtype.value}: the reference worker runs float32, bfloat16 or float16"
        )
    return TORCH_DTYPES[dtype]


def resolve(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    read_architecture: Callable[[str], dict[str, Any]],
) -> tuple[RankEnv, RunConfig, str, str, float]:
    """(env, config, device request, metrics address, timeout); ValueError on bad input."""
    env = parse_rank_env(environ)
    if args.metrics_port is not None:
        env = dataclasses.replace(env, metrics_port=args.metrics_port)
    if not 0 <= env.metrics_port <= 65535:
        raise ValueError(f"metrics port {env.metrics_port}: a port is 0–65535 (0: any free one)")
    if not 0 < args.timeout < float("inf"):
        raise ValueError(f"--timeout {args.timeout:g}: seconds must be > 0")
    if args.dump is not None and not args.dump.parent.is_dir():
        raise ValueError(f"--dump {args.dump}: {args.dump.parent} is not a directory")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but this process sees no CUDA device")
    topology_path = args.topology or (None if args.architecture or args.tiny else env.topology_path)
    dtype_name: str = args.dtype or "float32"
    kv_dtype_name: str | None = args.kv_cache_dtype
    max_batch, max_length = DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_SEQUENCE_LENGTH
    layers = env.stage_layers
    if topology_path:
        topology = load_topology(topology_path)
        topology.check(env)
        shape = topology.shape
        dtype_name = args.dtype or topology.dtype.value
        kv_dtype_name = kv_dtype_name or topology.kv_cache_dtype.value
        max_batch = topology.serving.max_batch_size
        max_length = topology.serving.max_sequence_length
        stage = next(s for s in topology.stages if s.index == env.pp_rank)
        layers = layers or stage.layers
    elif args.architecture:
        shape = ModelShape.from_wire(read_architecture(args.architecture))
    elif args.tiny:
        shape = ModelShape.tiny()
    else:
        raise ValueError(
            "no model: give --topology FILE (or PARASERVE_TOPOLOGY), --architecture FILE or --tiny"
        )
    env.check(shape.num_layers)
    Shard(shape, env.tp_size, env.tp_rank)  # raises ShapeError when it cannot be split
    max_batch = args.max_batch_size or max_batch
    max_length = args.max_sequence_length or max_length
    if max_batch < 1 or max_length < 1:
        raise ValueError("--max-batch-size and --max-sequence-length must be ≥ 1")
    load = LoadProfile(
        rate=args.rate,
        prompt_length=args.prompt_length,
        output_tokens=args.output_tokens,
        requests=args.requests,
        duration=args.duration,
        arrival=args.arrival,
        seed=args.load_seed,
    )
    load.check(max_batch, max_length)
    stall_after = getattr(args, "stall_after", 0)
    if stall_after < 0:
        raise ValueError("--stall-after must be ≥ 0")
    config = RunConfig(
        shape=shape,
        dtype=torch_dtype(dtype_name, "dtype"),
        kv_cache_dtype=torch_dtype(kv_dtype_name or dtype_name, "kvCacheDtype"),
        max_batch_size=max_batch,
        max_sequence_length=max_length,
        layer_range=layers or stage_layers(shape.num_layers, env.pp_size)[env.pp_rank],
        seed=args.seed,
        load=load,
        exit_when_done=args.exit_when_done,
        stall_after=stall_after,
        dump=args.dump,
    )
    return env, config, args.device, args.metrics_addr, args.timeout
