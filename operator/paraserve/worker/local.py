"""Run every rank of one replica as local processes, each with exactly the env and topology
file the operator would give its pod (for tests and by-hand runs)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paraserve.worker.env import rank_environ
from paraserve.worker.shape import TINY_ARCHITECTURE
from paraserve.worker.topology import topology_document


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rank_main(environ: dict[str, str], argv: list[str]) -> None:
    import torch

    from paraserve.worker.command import main

    os.environ.update(environ)
    # Ranks share this machine's cores; one thread each avoids OpenMP spinning against peers.
    torch.set_num_threads(1)

    sys.exit(main(argv))


def run_replica(
    worker_args: Sequence[str],
    *,
    pipeline: int,
    tensor: int,
    sequence: int = 1,
    architecture: dict[str, Any] | None = None,
    dtype: str = "float32",
    max_batch_size: int = 4,
    max_sequence_length: int = 128,
    metrics_port_base: int = 0,
    workdir: str | Path | None = None,
    timeout: float | None = 300,
) -> list[int | None]:
    """Start pipeline × tensor ranks and wait; the exit code of each (None: timed out, killed).

    Ranks are forked from a server that has imported torch once, so a replica starts in about
    a second instead of one torch import per rank.
    """
    architecture = architecture or TINY_ARCHITECTURE
    with tempfile.TemporaryDirectory(prefix="paraserve-topology-") as scratch:
        topology_path = Path(workdir or scratch) / "topology.json"
        document = topology_document(
            architecture,
            pipeline=pipeline,
            tensor=tensor,
            sequence=sequence,
            max_batch_size=max_batch_size,
            max_sequence_length=max_sequence_length,
            dtype=dtype,
        )
        topology_path.write_text(json.dumps(document, indent=2))
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "paraserve.worker.runtime"])
        port = free_port()
        processes = []
        for rank in range(pipeline * tensor):
            environ = rank_environ(
                rank,
                pipeline=pipeline,
                tensor=tensor,
                sequence=sequence,
                num_layers=int(architecture["numLayers"]),
                master_port=port,
                topology_path=str(topology_path),
            )
            metrics_port = metrics_port_base + rank if metrics_port_base else 0
            environ["PARASERVE_METRICS_PORT"] = str(metrics_port)
            process = context.Process(target=_rank_main, args=(environ, list(worker_args)))
            process.start()
            processes.append(process)
        codes: list[int | None] = []
        for process in processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
                codes.append(None)
            else:
                codes.append(process.exitcode)
        return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paraserve.worker.local",
        description="Run one replica's ranks locally; arguments after -- go to every worker.",
    )
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--tensor", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=1)
    parser.add_argument("--architecture", metavar="FILE", help="camelCase JSON; default tiny")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--max-sequence-length", type=int, default=128)
    parser.add_argument(
        "--metrics-port-base", type=int, default=9400, help="rank k serves on base + k"
    )
    parser.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    worker_args = args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args
    architecture = json.loads(Path(args.architecture).read_text()) if args.architecture else None
    codes = run_replica(
        worker_args,
        pipeline=args.pipeline,
        tensor=args.tensor,
        sequence=args.sequence,
        architecture=architecture,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        max_sequence_length=args.max_sequence_length,
        metrics_port_base=args.metrics_port_base,
        timeout=None,
    )
    print(f"exit codes by rank: {codes}", file=sys.stderr)
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
