"""Find the control-plane binaries (envtest variables, cache) or build them from the Go modules."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
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


def _is_built(component: Component) -> bool:
    done = (component_dir(component) / ".complete").is_file()
    return done and (component is not KWOK or all(p.is_file() for p in kwok_stages()))


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


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # -p 2: this machine has two cores and other jobs; the pinned go.sum must not change.
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=readonly -p=2").strip()
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


def build_component(component: Component, log: bool = True) -> Path:
    """Build every binary of one component into its cache directory, unless already there."""
    target = component_dir(component)
    if _is_built(component):
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ldflags = " ".join(["-s", "-w", *component.ldflags])
    for binary, package in component.binaries.items():
        if _external(component, binary):
            continue
        started = time.monotonic()
        if log:
            print(f"building {binary} ({component.module} {component.version})", flush=True)
        subprocess.run(
            [
                "nice",
                "-n",
                "10",
                "go",
                "build",
                "-trimpath",
                f"-ldflags={ldflags}",
                "-o",
                str(staging / binary),
                package,
            ],
            cwd=component.module_dir,
            env=_go_env(),
            check=True,
        )
        if log:
            print(f"built {binary} in {time.monotonic() - started:.0f}s", flush=True)
    if component is KWOK:
        source = _module_dir_in_cache(component, component.module)
        # The whole stage tree, so the choice of stages (KWOK_STAGES) can change without a build.
        shutil.copytree(source / "kustomize" / "stage", staging / "stages")
        for path in [staging / "stages", *(staging / "stages").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    (staging / ".complete").write_text(component.version + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def build_all() -> None:
    """Build (or reuse) every component, one after another."""
    started = time.monotonic()
    for component in COMPONENTS:
        needs_build = any(not _external(component, b) for b in component.binaries)
        if component is KWOK:
            needs_build = True  # its stage files come from the module, not from a binary
        if needs_build and not _is_built(component):
            build_component(component)
    if absent := missing():
        sys.exit(f"missing binaries after build: {absent}")
    print(f"binaries ready in {time.monotonic() - started:.0f}s under {cache_root()}", flush=True)
