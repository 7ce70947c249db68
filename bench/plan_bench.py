"""How long `plan` and `plan --suggest` take on a large pool: 5,000 nodes × 8 GPUs, 10,000 pods.

Run: .venv/bin/python bench/plan_bench.py [--nodes 5000] [--pods 10000] [--repeat 5]

Prints, for the review's PP=4 × TP=2 × SP=2 (coarse) and Llama-2-70B (exact):
building the pool from Node/Pod dicts, plan(), suggest(), and the whole
`paraserve plan` command on a YAML and on a JSON file of the same pool (parse included):
in this process, and as a process of its own (interpreter start and imports included, with
its CPU seconds beside the wall-clock ones: on a shared machine the CPU figure is the steadier).
A process runs two ways, in turn: with paraserve's bytecode cached, as an installed package
has it (in a temporary pycache_prefix, written by a first run that is not timed), and
compiling paraserve's modules each time, as a source tree under PYTHONDONTWRITEBYTECODE=1 does.
PyYAML's own loader on the same YAML file is timed for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from paraserve.api import InferenceDeploymentSpec
from paraserve.cli import main
from paraserve.planner import Pool, plan, suggest

ROOT = Path(__file__).resolve().parents[1]
POOL_LABEL = "paraserve.dev/pool"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def nodes(count: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"gpu-{i:05d}",
                "labels": {
                    "kubernetes.io/hostname": f"gpu-{i:05d}",
                    POOL_LABEL: "a100-80g",
                    "nvidia.com/gpu.memory": "81920",
                },
            },
            "spec": {},
            "status": {"allocatable": {"cpu": "127", "memory": "1000Gi", "nvidia.com/gpu": "8"}},
        }
        for i in range(count)
    ]


def pods(count: int, node_count: int) -> list[dict[str, Any]]:
    # Every other pod holds a GPU; a tenth have finished and hold nothing.
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"job-{i}", "namespace": "default"},
            "spec": {
                "nodeName": f"gpu-{i % node_count:05d}",
                "containers": [
                    {
                        "name": "main",
                        "resources": {
                            "requests": {"cpu": "1", "nvidia.com/gpu": str(i % 2)},
                            "limits": {"nvidia.com/gpu": str(i % 2)},
                        },
                    }
                ],
            },
            "status": {"phase": "Succeeded" if i % 10 == 0 else "Running"},
        }
        for i in range(count)
    ]


def timed(repeat: int, action: Callable[[], object]) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def report(label: str, seconds: tuple[float, float]) -> None:
    median, best = seconds
    print(f"  {label:<44} median {median * 1000:9.1f} ms   best {best * 1000:9.1f} ms")


def cli(args: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        main(args)


def processes(repeat: int, args: list[str], pycache: Path) -> dict[str, tuple[float, ...]]:
    """`paraserve ARGS` as a process, both ways in turn (so that a machine slowing down or
    speeding up weighs on both alike): median and best wall seconds, median CPU seconds.

    "bytecode cached" reads bytecode from ``pycache`` (written by a first, untimed run);
    "compiling" writes none and compiles paraserve's modules on every run.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}
    cached_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    ways = {
        "bytecode cached": (
            [sys.executable, "-X", f"pycache_prefix={pycache}", "-m", "paraserve.cli", *args],
            cached_env,
        ),
        "compiling": (
            [sys.executable, "-m", "paraserve.cli", *args],
            {**env, "PYTHONDONTWRITEBYTECODE": "1"},
        ),
    }
    command, cached = ways["bytecode cached"]
    subprocess.run(command, stdout=subprocess.DEVNULL, env=cached, check=False)  # writes it
    samples: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    for _ in range(repeat):
        for way, (command, way_env) in ways.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, env=way_env, check=False)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            samples[way].append((wall, cpu))
    return {
        way: (
            statistics.median(w for w, _ in runs),
            min(w for w, _ in runs),
            statistics.median(c for _, c in runs),
        )
        for way, runs in samples.items()
    }


def report_process(label: str, seconds: tuple[float, ...]) -> None:
    median, best, cpu = seconds
    print(
        f"  {label:<60} median {median * 1000:7.1f} ms   best {best * 1000:7.1f} ms"
        f"   CPU {cpu * 1000:7.1f} ms"
    )


def _plan_from_objects(spec: InferenceDeploymentSpec, nodes: Any, pods: Any) -> object:
    return plan(spec, Pool.from_objects(nodes, pods, spec))


def _bind(function: Callable[..., object], *args: Any) -> Callable[[], object]:
    return lambda: function(*args)


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    node_objects = nodes(args.nodes)
    pod_objects = pods(args.pods, args.nodes)
    print(
        f"pool: {args.nodes} nodes × 8 GPUs = {args.nodes * 8} GPUs, {args.pods} pods;"
        f" python {sys.version.split()[0]}; median and best of {args.repeat}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        nodes_file = Path(tmp) / "nodes.yaml"
        nodes_file.write_text(
            yaml.dump(
                {"apiVersion": "v1", "kind": "List", "items": node_objects + pod_objects},
                Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
            )
        )
        json_file = Path(tmp) / "nodes.json"
        json_file.write_text(
            json.dumps({"apiVersion": "v1", "kind": "List", "items": node_objects + pod_objects})
        )
        for example in ("review-pp4-tp2-sp2.yaml", "llama-2-70b-exact.yaml"):
            path = ROOT / "examples" / example
            spec = InferenceDeploymentSpec.model_validate(yaml.safe_load(path.read_text())["spec"])
            nodes_, pods_ = node_objects, pod_objects
            pool = Pool.from_objects(nodes_, pods_, spec)
            print(f"\n{example}: {len(suggest(spec, pool))} strategies fit")
            command = ["plan", "-f", str(path), "--nodes", str(nodes_file)]
            json_command = ["plan", "-f", str(path), "--nodes", str(json_file)]
            measurements: list[tuple[str, Callable[[], object]]] = [
                (
                    "Pool.from_objects(nodes, pods, spec)",
                    _bind(Pool.from_objects, nodes_, pods_, spec),
                ),
                (
                    "plan(spec, Pool.from_objects(…))",
                    _bind(_plan_from_objects, spec, nodes_, pods_),
                ),
                ("plan(spec, pool)", _bind(plan, spec, pool)),
                ("suggest(spec, pool)", _bind(suggest, spec, pool)),
                ("paraserve plan (YAML parse included)", _bind(cli, command)),
                ("paraserve plan --suggest", _bind(cli, [*command, "--suggest"])),
                ("paraserve plan, nodes as JSON", _bind(cli, json_command)),
                (
                    "paraserve plan --suggest, nodes as JSON",
                    _bind(cli, [*json_command, "--suggest"]),
                ),
            ]
            for label, action in measurements:
                report(label, timed(args.repeat, action))
            for label, arguments in (
                ("paraserve plan, YAML", command),
                ("paraserve plan --suggest, YAML", [*command, "--suggest"]),
                ("paraserve plan, JSON", json_command),
                ("paraserve plan --suggest, JSON", [*json_command, "--suggest"]),
            ):
                timings = processes(args.repeat, arguments, Path(tmp) / "pycache")
                for way, seconds in timings.items():
                    report_process(f"process, {way}: {label}", seconds)
        print()
        text = nodes_file.read_text()
        report(
            "for comparison: yaml.load_all, C loader",
            timed(min(args.repeat, 3), lambda: list(yaml.load_all(text, Loader=LOADER))),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
