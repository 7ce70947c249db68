"""Find the control-plane binaries (envtest variables, cache) or build them from the Go modules."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from e2e.cluster.components import COMPONENTS, KWOK, KWOK_STAGES, Component


def cache_root() -> Path:
    """Where built binaries live: outside the repository, shared by every clone."""
    if explicit := os.environ.get("PARASERVE_CACHE"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "paraserve"


def _fingerprint(component: Component) -> str:
    # A change of pins or flags must not reuse binaries built from the old ones.
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((component.module_dir / name).read_bytes())
    digest.update("\n".join(component.ldflags).encode())
    # A wrapper with sources of its own (e2e/kind's), tags or cgo: those count too.
    for source in sorted(component.module_dir.glob("*.go")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    if component.tags or component.cgo:
        digest.update(f"tags={','.join(component.tags)} cgo={component.cgo}".encode())
    return digest.hexdigest()[:10]


def component_dir(component: Component) -> Path:
    return cache_root() / "bin" / f"{component.cache_key}-{_fingerprint(component)}"


def kwok_stages() -> list[Path]:
    """The kwok Stage files in use, copied out of the kwok module at build time."""
    stages = component_dir(KWOK) / "stages"
    return [stages / Path(s).relative_to("kustomize/stage") for s in KWOK_STAGES]


def _external(component: Component, binary: str) -> Path | None:
    """A ready binary named by the envtest convention, if any."""
    if (var := component.envtest_vars.get(binary)) and (value := os.environ.get(var)):
        return Path(value)
    if (assets := os.environ.get("KUBEBUILDER_ASSETS")) and (Path(assets) / binary).is_file():
        return Path(assets) / binary
    return None


def _to_build(component: Component) -> list[str]:
    """Binaries of a component that neither an envtest variable nor the cache provides."""
    target = component_dir(component)
    return [
        b for b in component.binaries if not _external(component, b) and not (target / b).is_file()
    ]


def _stages_present() -> bool:
    return all(p.is_file() for p in kwok_stages())


def binary_path(binary: str) -> Path:
    """The path of a binary by name, preferring envtest variables over the build cache."""
    for component in COMPONENTS:
        if binary in component.binaries:
            return _external(component, binary) or component_dir(component) / binary
    raise KeyError(binary)


def binaries() -> dict[str, Path]:
    return {name: binary_path(name) for c in COMPONENTS for name in c.binaries}


def missing() -> list[str]:
    return [name for name, path in binaries().items() if not path.is_file()]


def _go_env(component: Component | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # -p 2: this machine has two cores and other jobs; the pinned go.sum must not change.
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=readonly -p=2").strip()
    if component is not None and component.cgo:
        env["CGO_ENABLED"] = "1"
    env.setdefault("CGO_ENABLED", "0")
    return env


def _module_dir_in_cache(component: Component, module: str) -> Path:
    out = subprocess.run(
        ["go", "list", "-m", "-json", module],
        cwd=component.module_dir,
        env=_go_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info = json.loads(out)
    if not info.get("Dir"):
        subprocess.run(
            ["go", "mod", "download", module],
            cwd=component.module_dir,
            env=_go_env(),
            check=True,
        )
        return _module_dir_in_cache(component, module)
    return Path(info["Dir"])


def _go_build(component: Component, binary: str, output: Path) -> None:
    ldflags = " ".join(["-s", "-w", *component.ldflags])
    subprocess.run(
        [
            "nice",
            "-n",
            "10",
            "go",
            "build",
            "-trimpath",
            f"-ldflags={ldflags}",
            *([f"-tags={','.join(component.tags)}"] if component.tags else []),
            "-o",
            str(output),
            component.binaries[binary],
        ],
        cwd=component.module_dir,
        env=_go_env(component),
        check=True,
    )


def _copy_kwok_stages() -> None:
    source = _module_dir_in_cache(KWOK, KWOK.module) / "kustomize" / "stage"
    target = component_dir(KWOK) / "stages"
    partial = target.with_name(f".stages.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    # The whole stage tree, so the choice of stages (KWOK_STAGES) can change without a build.
    shutil.copytree(source, partial)
    for path in [partial, *partial.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _so_far(since: float | None) -> str:
    if since is None:
        return ""
    elapsed = int(time.monotonic() - since)
    return f" ({elapsed // 60}m{elapsed % 60:02d}s so far)"


def build_component(component: Component, log: bool = True, since: float | None = None) -> Path:
    """Build the binaries of one component that are not there yet into its cache directory.

    `since`: when the whole build began, for the "so far" of each progress line.
    """
    target = component_dir(component)
    target.mkdir(parents=True, exist_ok=True)
    for binary in _to_build(component):
        started = time.monotonic()
        if log:
            print(
                f"building {binary} ({component.module} {component.version}){_so_far(since)}",
                file=sys.stderr,
                flush=True,
            )
        partial = target / f".{binary}.{os.getpid()}.partial"
        try:
            _go_build(component, binary, partial)
            partial.replace(target / binary)  # atomic: a binary in the cache is always whole
        finally:
            partial.unlink(missing_ok=True)
        if log:
            print(
                f"built {binary} in {time.monotonic() - started:.0f}s{_so_far(since)}",
                file=sys.stderr,
                flush=True,
            )
    if component is KWOK and not _stages_present():
        _copy_kwok_stages()
    return target


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    # Two test runs starting on a cold cache build once, not twice on two cores.
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_all() -> None:
    """Build (or reuse) every component, one after another."""
    started = time.monotonic()
    if missing() and shutil.which("go") is None:
        sys.exit("`go` is not on the PATH: the cluster binaries are built from Go modules")
    with build_lock():
        for component in COMPONENTS:
            if _to_build(component) or (component is KWOK and not _stages_present()):
                build_component(component, since=started)
    if absent := missing():
        sys.exit(f"missing binaries after build: {absent}")
    print(
        f"binaries ready in {time.monotonic() - started:.0f}s under {cache_root()}",
        file=sys.stderr,
        flush=True,
    )
