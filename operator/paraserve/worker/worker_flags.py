"""`paraserve worker`: its arguments, and turning them plus the rank env into a running rank."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DESCRIPTION = """\
Run one rank of a paraserve replica: a Llama-style decoder with random weights, sharded by
the PARASERVE_* environment (pipeline stages, tensor and sequence parallelism), driven by a
built-in load generator on rank 0, with Prometheus metrics on PARASERVE_METRICS_PORT.
Without WORLD_SIZE in the environment it runs as a single process."""

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model (default: the topology file in PARASERVE_TOPOLOGY)")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--topology", metavar="FILE", help="topology JSON the operator mounts")
    source.add_argument(
        "--architecture",
        metavar="FILE",
        help="YAML/JSON architecture block (camelCase), or a spec holding model.architecture",
    )
    source.add_argument("--tiny", action="store_true", help="a 4-layer, 64-wide test model")
    model.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: topology, float32)")
    model.add_argument("--kv-cache-dtype", help="default: the topology's, else --dtype")
    model.add_argument("--max-batch-size", type=int, help="default: topology serving, else 4")
    model.add_argument("--max-sequence-length", type=int, help="default: topology, else 128")
    model.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    model.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    load = parser.add_argument_group("load generator (rank 0)")
    load.add_argument("--rate", type=float, default=1.0, help="requests/s; 0 = all at once")
    load.add_argument("--arrival", choices=("poisson", "uniform"), default="poisson")
    load.add_argument("--prompt-length", type=int, default=16)
    load.add_argument("--output-tokens", type=int, default=8)
    load.add_argument("--requests", type=int, default=0, help="stop after N (0 = no limit)")
    load.add_argument("--duration", type=float, default=0.0, help="stop after S s (0 = never)")
    load.add_argument("--load-seed", type=int, default=0, help="seed of arrivals and prompts")
    load.add_argument(
        "--stall-after",
        type=int,
        default=0,
        metavar="N",
        help="for tests of hang detection: after N requests keep accepting but generate"
        " nothing more (0 = never)",
    )
    load.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit when the load ends (default: keep serving metrics until SIGTERM)",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--metrics-port", type=int, help="default: PARASERVE_METRICS_PORT or 9400")
    run.add_argument("--metrics-addr", default="0.0.0.0")
    run.add_argument("--timeout", type=float, default=1800, help="collective timeout, seconds")
    run.add_argument("--dump", type=Path, metavar="FILE", help="save the first batch's logits")
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        default="INFO",
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``worker`` subcommand to the ``paraserve`` parser (imports no torch)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="run one rank of a replica (reference runtime)", description=DESCRIPTION
    )
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paraserve worker", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _architecture_document(path: str) -> dict[str, Any]:
    """The architecture block of a YAML/JSON file: bare, under model:, or under spec.model:."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError:
        raise ValueError(f"{path} is not YAML or JSON") from None
    for keys in (("spec", "model", "architecture"), ("model", "architecture"), ()):
        node: Any = data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and "numLayers" in node:
            return node
    raise ValueError(f"{path}: no architecture (numLayers, hiddenSize, …) found")


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Configure, rendezvous and serve; one clear line on stderr for bad input."""
    environ = os.environ if environ is None else environ
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s rank " + environ.get("RANK", "0") + ": %(message)s",
        stream=sys.stderr,
    )
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    try:
        prepared = _prepare(args, environ)
    except ValueError as error:  # RankEnvError, TopologyError, ShapeError are ValueErrors
        print(f"paraserve worker: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _serve(*prepared)


def _prepare(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Any, ...]:
    from paraserve.worker.config import resolve

    return resolve(args, environ, _architecture_document)


def _serve(env: Any, config: Any, device_request: str, metrics_addr: str, timeout: float) -> int:
    from paraserve.worker.groups import form_groups, leave_groups, select_device
    from paraserve.worker.rank_metrics import MetricsServer, RankMetrics
    from paraserve.worker.rank_runtime import build_rank, serve

    log = logging.getLogger("paraserve.worker")
    metrics = RankMetrics(env)
    try:
        server = MetricsServer(metrics.registry, env.metrics_port, env.metrics_path, metrics_addr)
    except OSError as error:
        print(
            f"paraserve worker: error: cannot serve metrics on {metrics_addr}:{env.metrics_port}: "
            f"{error.strerror}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    server.start()
    log.info(
        "metrics on :%d%s; rank %d of %d (pp %d/%d, tp %d/%d, sp %d), layers %s",
        server.port,
        env.metrics_path,
        env.rank,
        env.world_size,
        env.pp_rank,
        env.pp_size,
        env.tp_rank,
        env.tp_size,
        env.sp_size,
        json.dumps(list(config.layer_range)),
    )
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        if env.is_coordinator:
            for signum in previous:
                signal.signal(signum, lambda *_: stop.set())
        else:
            # Ctrl-C on a local replica reaches every rank; rank 0 stops them all in step.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        device = select_device(env, device_request)
        groups = form_groups(env, device, timeout)
        rank = build_rank(groups, config, metrics)
        server.ready = True
        log.info(
            "ready on %s (%s): parameters %d B, KV cache %d B",
            device,
            groups.backend or "single process",
            rank.weights.nbytes,
            rank.cache.nbytes,
        )
        serve(rank, stop)
        log.info("done")
        return EXIT_OK
    except Exception:
        log.exception("failed")
        return EXIT_FAILED
    finally:
        leave_groups()
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
