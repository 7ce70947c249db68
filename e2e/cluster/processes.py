"""Start component processes so they cannot outlive us, and reap those a dead run left behind."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from e2e.cluster.build import cache_root

_PR_SET_PDEATHSIG = 1


def runs_dir() -> Path:
    """One JSON record per live cluster, so a later start can clean up after a killed one."""
    path = cache_root() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_time(pid: int) -> int | None:
    """The kernel's start time of a process, which tells a live pid from a recycled one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 counted after the command name, which may itself contain spaces.
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_alive(pid: int, started: int | None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started)


@dataclass
class ProcessRecord:
    name: str
    pid: int
    start: int | None


@dataclass
class RunRecord:
    """What a cluster owns: its owner process, its children and its working directory."""

    run_id: str
    owner_pid: int
    owner_start: int | None
    workdir: str
    processes: list[ProcessRecord] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return runs_dir() / f"{self.run_id}.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())
        data["processes"] = [ProcessRecord(**p) for p in data["processes"]]
        return cls(**data)

    def owner_alive(self) -> bool:
        return is_alive(self.owner_pid, self.owner_start)


@contextlib.contextmanager
def _runs_lock() -> Iterator[None]:
    # Concurrent test sessions on one machine must not reap each other's records twice.
    with open(runs_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def kill_groups(targets: Sequence[tuple[int, int | None]], grace: float = 15.0) -> None:
    """SIGTERM process groups together, then SIGKILL whatever has not exited within `grace`."""
    alive = [(pid, started) for pid, started in targets if is_alive(pid, started)]
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        for pid, _ in alive:
            _reap_child(pid)
        alive = [(p, s) for p, s in alive if is_alive(p, s) and not _is_zombie(p)]
        time.sleep(0.05)
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for pid, _ in targets:
        _reap_child(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _reap_child(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def release(record: RunRecord, keep_logs_in: str | None = None) -> None:
    """Stop every process of a run, delete its working directory and its record.

    With `keep_logs_in`, the components' logs are first copied to `<keep_logs_in>/<run_id>/`.
    """
    # Reverse start order: the API server drains quickly while etcd is up, but hangs without it.
    for proc in reversed(record.processes):
        kill_groups([(proc.pid, proc.start)], grace=10.0)
    logs = Path(record.workdir) / "logs"
    if keep_logs_in and logs.is_dir():
        shutil.copytree(logs, Path(keep_logs_in) / record.run_id, dirs_exist_ok=True)
    shutil.rmtree(record.workdir, ignore_errors=True)
    record.path.unlink(missing_ok=True)


def reap_stale() -> list[str]:
    """Release every run whose owner process is gone; returns their ids."""
    reaped = []
    with _runs_lock():
        for path in sorted(runs_dir().glob("*.json")):
            try:
                record = RunRecord.load(path)
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if not record.owner_alive():
                release(record)
                reaped.append(record.run_id)
    return reaped


def live_runs() -> list[RunRecord]:
    records = []
    for path in sorted(runs_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            records.append(RunRecord.load(path))
    return [r for r in records if r.owner_alive()]


# Resolved here, not in the forked child: between fork and exec only a bare call is safe.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    # If the owner is SIGKILLed, the kernel kills the component too: nothing is left running.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    record: RunRecord,
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start one component in its own process group and record it before anything else."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            cwd=record.workdir,
        )
    entry = ProcessRecord(name, proc.pid, start_time(proc.pid))
    # A component started again keeps its place: the run is stopped in reverse start order.
    index = next((i for i, p in enumerate(record.processes) if p.name == name), None)
    if index is None:
        record.processes.append(entry)
    else:
        record.processes[index] = entry
    record.save()
    return proc
