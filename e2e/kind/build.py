"""Build (or reuse) the node image's binaries: the Go components, then pause from its C source."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from e2e.cluster import build
from e2e.cluster.components import KUBERNETES_VERSION
from e2e.kind.components import COMPONENTS, NODE
from e2e.kind.progress import step

# kubeadm v1.36's pause (cmd/kubeadm/app/constants: PauseVersion).
PAUSE_VERSION = "3.10.2"


def pause_path() -> Path:
    return build.cache_root() / "bin" / f"pause-{PAUSE_VERSION}-{KUBERNETES_VERSION}" / "pause"


def _build_pause() -> Path:
    """The pause binary from k8s.io/kubernetes' build/pause/linux/pause.c, static."""
    target = pause_path()
    if target.is_file():
        return target
    source = build._module_dir_in_cache(NODE, NODE.module) / "build" / "pause" / "linux"
    if shutil.which("gcc") is None:
        raise SystemExit("gcc is not on the PATH: the pause image is built from its C source")
    step(f"building pause {PAUSE_VERSION} (C, {source.relative_to(source.parents[3])})")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".pause.{os.getpid()}.partial")
    subprocess.run(
        ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}",
         "-o", str(partial), str(source / "pause.c")],
        check=True,
    )  # fmt: skip
    subprocess.run(["strip", str(partial)], check=True)
    partial.replace(target)
    return target


def binary(name: str) -> Path:
    """A node binary by name (kubelet, containerd, …), or one of the control plane's."""
    if name == "pause":
        return pause_path()
    for component in COMPONENTS:
        if name in component.binaries:
            return build.component_dir(component) / name
    return build.binary_path(name)


def missing() -> list[str]:
    names = [n for c in COMPONENTS for n in c.binaries] + ["pause"]
    return [n for n in names if not binary(n).is_file()]


def build_all() -> None:
    """Every Go component of the node image, then pause; one line per binary built."""
    if not missing():
        step(f"node binaries: reusing the cache ({build.cache_root() / 'bin'})")
        return
    if shutil.which("go") is None:
        raise SystemExit("`go` is not on the PATH: the node binaries are built from Go modules")
    started = time.monotonic()
    with build.build_lock():
        for component in COMPONENTS:
            if names := build._to_build(component):
                began = time.monotonic()
                step(f"building {', '.join(names)} ({component.module} {component.version})")
                build.build_component(component, log=False)
                step(f"built {', '.join(names)} in {time.monotonic() - began:.0f}s")
        _build_pause()
    if absent := missing():
        raise SystemExit(f"missing node binaries after build: {absent}")
    step(
        f"node binaries built in {time.monotonic() - started:.0f}s, "
        f"cached in {build.cache_root() / 'bin'}"
    )
