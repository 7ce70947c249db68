"""Run every rank of one replica as local processes, each with exactly the env and topology
file the operator would give its pod (for tests and by-hand runs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import select
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from paraserve.api import InferenceDeploymentSpec, describe_validation_error
from paraserve.api.rank_env import METRICS_PORT, rank_environ
from paraserve.api.rank_layout import replica_stages
from paraserve.api.topology_document import TOPOLOGY_KEY, topology_document
from paraserve.worker.shape import TINY_ARCHITECTURE

#: The name a local replica's topology gives its deployment, model and service.
LOCAL_NAME = "tiny"


def free_ports(count: int) -> list[int]:
    """Distinct ports free now (all held open together, so none is handed out twice)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _follow_launcher(launcher: int) -> None:
    """Stop this rank when the launcher goes, however it goes (a SIGKILL too): SIGTERM, then
    SIGKILL after the grace period. Its direct parent is the fork server, which lives on while
    any rank does, so the launcher's own process is what is watched."""

    def watch() -> None:
        try:
            pidfd = os.pidfd_open(launcher)
            select.select([pidfd], [], [])
        except (AttributeError, OSError):  # no pidfd (or it is gone already): look every second
            while _alive(launcher):
                time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Seconds the ranks have to stop after SIGTERM before they are killed.
STOP_GRACE = 10.0


class Stopped(Exception):
    """The launcher was asked to stop (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _rank_main(environ: dict[str, str], argv: list[str], launcher: int) -> None:
    _follow_launcher(launcher)
    import torch

    from paraserve.worker.worker_flags import main

    os.environ.update(environ)
    # Ranks share this machine's cores; one thread each avoids OpenMP spinning against peers.
    torch.set_num_threads(1)

    sys.exit(main(argv))


class LocalReplica:
    """The rank processes of one replica on this machine, and their topology file."""

    def __init__(
        self,
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
    ) -> None:
        """``metrics_port_base`` 0 gives each rank a free port (see ``metrics_ports``)."""
        architecture = architecture or TINY_ARCHITECTURE
        try:
            spec = InferenceDeploymentSpec.model_validate(
                {
                    "model": {"name": LOCAL_NAME, "dtype": dtype, "architecture": architecture},
                    "parallelism": {"pipeline": pipeline, "tensor": tensor, "sequence": sequence},
                    "serving": {
                        "maxBatchSize": max_batch_size,
                        "maxSequenceLength": max_sequence_length,
                    },
                }
            )
        except ValidationError as error:
            raise ValueError(describe_validation_error(error, "spec")) from None
        parallelism = spec.parallelism
        num_layers = spec.model.architecture.num_layers if spec.model.architecture else None
        self._scratch = tempfile.TemporaryDirectory(prefix="paraserve-topology-")
        self.topology_path = Path(self._scratch.name) / TOPOLOGY_KEY
        document = topology_document(
            LOCAL_NAME,
            "default",
            spec,
            replica_stages(parallelism, num_layers),
            service=LOCAL_NAME,
        )
        self.topology_path.write_text(json.dumps(document, indent=2))
        # Forked from a server that imported torch once: a replica starts in about a second
        # instead of one torch import per rank.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "paraserve.worker.rank_runtime"])
        world_size = pipeline * tensor
        master_port, *ports = free_ports(1 + world_size)
        if metrics_port_base:
            ports = [metrics_port_base + rank for rank in range(world_size)]
        #: Rank k serves its metrics on ``metrics_ports[k]``.
        self.metrics_ports = ports
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for rank in range(world_size):
            environ = rank_environ(
                parallelism,
                rank,
                num_layers=num_layers,
                master_port=master_port,
                topology_path=str(self.topology_path),
            )
            environ[METRICS_PORT] = str(ports[rank])
            # Every rank is on this machine: gloo's pairs on loopback, not on the address the
            # hostname resolves to (which may be a routable one).
            environ["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
            process = context.Process(
                target=_rank_main, args=(environ, list(worker_args), os.getpid())
            )
            process.start()
            self.processes.append(process)

    def stop(self) -> None:
        """SIGTERM to rank 0, which stops every rank in step (what the kubelet sends)."""
        pid = self.processes[0].pid
        if pid is not None and self.processes[0].is_alive():
            os.kill(pid, signal.SIGTERM)

    def terminate(self, grace: float = STOP_GRACE) -> list[int | None]:
        """SIGTERM to every rank, SIGKILL to those still running after `grace` seconds."""
        for process in self.processes:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        return self.wait(grace)

    def wait(self, timeout: float | None = None) -> list[int | None]:
        """Exit code of each rank; ranks still running at the deadline are killed (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        codes: list[int | None] = []
        for process in self.processes:
            process.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
                codes.append(None)
            else:
                codes.append(process.exitcode)
        self._scratch.cleanup()
        return codes


def run_replica(
    worker_args: Sequence[str], *, timeout: float | None = 300, **options: Any
) -> list[int | None]:
    """Start a replica (``LocalReplica``'s options) and wait for every rank's exit code."""
    return LocalReplica(worker_args, **options).wait(timeout)


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
    if min(args.pipeline, args.tensor, args.sequence) < 1:
        parser.error("--pipeline, --tensor and --sequence must be ≥ 1")
    architecture = None
    if args.architecture:
        try:
            architecture = json.loads(Path(args.architecture).read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--architecture {args.architecture}: {error}")
    try:
        replica = LocalReplica(
            worker_args,
            pipeline=args.pipeline,
            tensor=args.tensor,
            sequence=args.sequence,
            architecture=architecture,
            dtype=args.dtype,
            max_batch_size=args.max_batch_size,
            max_sequence_length=args.max_sequence_length,
            metrics_port_base=args.metrics_port_base,
        )
    except ValueError as error:  # the architecture, dtype or serving figures the spec refuses
        parser.error(str(error))

    def stopped(signum: int, _: Any) -> None:
        raise Stopped(signum)

    # Asked to stop (by a harness, a terminal, a supervisor): the ranks stop with us.
    previous = {s: signal.signal(s, stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = replica.wait(None)
    except Stopped as stop:
        for number, handler in previous.items():
            signal.signal(number, handler)
        codes = replica.terminate()
        print(f"{stop}: ranks stopped, exit codes by rank: {codes}", file=sys.stderr)
        return 128 + stop.signum
    print(f"exit codes by rank: {codes}", file=sys.stderr)
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
