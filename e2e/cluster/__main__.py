"""Command line: `python -m e2e.cluster build|up|down|status|gomod`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from e2e.cluster import build, gomod, processes
from e2e.cluster.build import cache_root
from e2e.cluster.components import COMPONENTS
from e2e.cluster.controlplane import ClusterStartError, ControlPlane


def _up_dir() -> Path:
    """State of the cluster `up` started: its supervisor's pid and a stable kubeconfig path."""
    path = cache_root() / "up"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _up_state() -> dict[str, object] | None:
    state_file = _up_dir() / "state.json"
    try:
        state: dict[str, object] = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    pid, started = state.get("pid"), state.get("start")
    start = started if isinstance(started, int) else None
    if isinstance(pid, int) and processes.is_alive(pid, start):
        return state
    state_file.unlink(missing_ok=True)
    return None


def _export_line(kubeconfig: object) -> str:
    return f"export KUBECONFIG={kubeconfig}"


def cmd_build(_: argparse.Namespace) -> int:
    build.build_all()
    return 0


def cmd_gomod(args: argparse.Namespace) -> int:
    gomod.generate_all(args.components or None)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run a cluster in the foreground until SIGTERM/SIGINT (what `up` starts in the background)."""
    plane = ControlPlane()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        started = time.monotonic()
        plane.start()
        kubeconfig = _up_dir() / "kubeconfig"
        shutil.copyfile(plane.kubeconfig, kubeconfig)
        state = {
            "pid": os.getpid(),
            "start": processes.start_time(os.getpid()),
            "server": plane.server,
            "kubeconfig": str(kubeconfig),
            "bin_dir": str(plane.bin_dir),
            "workdir": str(plane.workdir),
            "start_seconds": round(time.monotonic() - started, 1),
        }
        (_up_dir() / "state.json").write_text(json.dumps(state, indent=2))
        print(json.dumps(state), flush=True)
        while True:
            signal.pause()
    finally:
        plane.stop()
        (_up_dir() / "state.json").unlink(missing_ok=True)


def cmd_up(args: argparse.Namespace) -> int:
    if (state := _up_state()) is None:
        build.build_all()
        log = _up_dir() / "serve.log"
        with open(log, "w") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "e2e.cluster", "serve"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command, on purpose
            )
        deadline = time.monotonic() + args.timeout
        while (state := _up_state()) is None:
            if serve.poll() is not None or time.monotonic() > deadline:
                reason = "failed to start"
                if serve.poll() is None:  # too slow: stop it rather than leave it starting
                    reason = f"did not start within {args.timeout:g}s"
                    serve.terminate()  # it stops its components in order on SIGTERM
                    try:
                        serve.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        serve.kill()
                print(log.read_text()[-4000:], file=sys.stderr)
                print(f"cluster {reason} (log: {log})", file=sys.stderr)
                return 1
            time.sleep(0.3)
        print(f"cluster up in {state['start_seconds']}s: {state['server']}", file=sys.stderr)
    else:
        print(f"cluster already up: {state['server']}", file=sys.stderr)
    print(_export_line(state["kubeconfig"]))
    print(f"export PATH={state['bin_dir']}:$PATH")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    state = _up_state()
    if state is not None:
        pid = state["pid"]
        assert isinstance(pid, int)
        started = state.get("start")
        processes.kill_groups([(pid, started if isinstance(started, int) else None)], grace=30)
        print(f"stopped cluster at {state['server']}", file=sys.stderr)
    else:
        print("no cluster was up", file=sys.stderr)
    reaped = processes.reap_stale()
    if reaped:
        print(f"cleaned up stale runs: {', '.join(reaped)}", file=sys.stderr)
    (_up_dir() / "kubeconfig").unlink(missing_ok=True)
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    state = _up_state()
    if state is None:
        print("up: no cluster")
    else:
        print(f"up: {state['server']}  (supervisor pid {state['pid']})")
        print(f"    {_export_line(state['kubeconfig'])}")
    for record in processes.live_runs():
        total = 0
        names = []
        for proc in record.processes:
            alive = processes.is_alive(proc.pid, proc.start)
            names.append(f"{proc.name}={proc.pid}{'' if alive else '(dead)'}")
            total += _rss(proc.pid) if alive else 0
        print(f"run {record.run_id} owner {record.owner_pid}: {' '.join(names)}")
        print(f"    workdir {record.workdir}  rss {total / 2**20:.0f} MiB")
    missing = build.missing()
    print("binaries: " + ("all present" if not missing else f"missing {', '.join(missing)}"))
    return 0


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: seconds must be > 0")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build or reuse every binary").set_defaults(func=cmd_build)
    up = sub.add_parser("up", help="start a cluster in the background; prints KUBECONFIG")
    up.add_argument("--timeout", type=_positive_seconds, default=300)
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the cluster `up` started").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show running clusters").set_defaults(func=cmd_status)
    sub.add_parser("serve", help="run a cluster in the foreground").set_defaults(func=cmd_serve)
    gen = sub.add_parser("gomod", help="regenerate go/*/go.mod and go.sum from upstream")
    gen.add_argument("components", nargs="*", choices=[c.name for c in COMPONENTS])
    gen.set_defaults(func=cmd_gomod)
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"
    try:
        result: int = args.func(args)
    except FileNotFoundError as error:
        if error.filename != "go":
            raise
        print(
            f"{prog}: `go` is not on the PATH (the binaries are built from Go modules)",
            file=sys.stderr,
        )
        return 1
    except subprocess.CalledProcessError as error:
        # The command's own output is above; the traceback would only repeat it.
        command = " ".join(str(part) for part in error.cmd)
        print(f"{prog}: `{command}` exited {error.returncode}", file=sys.stderr)
        return 1
    except ClusterStartError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
