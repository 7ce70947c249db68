"""The kind node image, assembled offline and cached by what it is made of.

`kind build node-image` pulls pause, etcd, CoreDNS, kindnetd and local-path images from
registries unconditionally; none is reachable here. So the image is assembled the way kind
assembles it, from local parts only:

1. a Debian base: `debootstrap --variant=minbase bookworm`, `docker import`ed;
2. the node base: kind v0.33.0's images/base files (read from the kind Go module) and
   packages, containerd, runc, crictl, the CNI plugins, kubelet, kubeadm, kubectl, and ours:
   the pod network service (e2e/kind/node/files) and the fake GPU device plugin;
3. the images kubeadm needs, built from the same binaries as the local control plane
   (kube-apiserver, kube-controller-manager, kube-scheduler, etcd) and from the node's
   (kube-proxy, CoreDNS, pause), tagged exactly as `kubeadm config images list` prints them;
4. those images imported into the node's containerd, and the container committed.

Each image's tag carries a fingerprint of its inputs, so a warm start reuses every one.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from e2e.cluster import build as cluster_build
from e2e.cluster.components import KUBERNETES_VERSION
from e2e.kind import build
from e2e.kind.components import COMPONENTS, KIND
from e2e.kind.progress import step

HERE = Path(__file__).resolve().parent
NODE_FILES = HERE / "node"
REGISTRY = "paraserve.local"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("PARASERVE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_IMAGE = f"{REGISTRY}/debian:{DEBIAN_SUITE}"
NODE_IMAGE = f"{REGISTRY}/kind-node"
# What the base the Python images build on needs beyond minbase (e2e/kind/images.sh).
CAP_SYS_RESOURCE = 24


def cache_dir() -> Path:
    path = cluster_build.cache_root() / "kind"
    path.mkdir(parents=True, exist_ok=True)
    return path


def docker(*args: str, input: bytes | None = None, quiet: bool = True) -> str:
    result = subprocess.run(
        ["docker", *args],
        input=input,
        capture_output=quiet,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    if result.returncode != 0:
        detail = (result.stderr or b"").decode(errors="replace")[-3000:] if quiet else ""
        raise SystemExit(f"docker {' '.join(args[:3])} … failed ({result.returncode})\n{detail}")
    return (result.stdout or b"").decode(errors="replace")


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:10]


def _tree_digest(root: Path) -> str:
    parts: list[bytes | str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts += [str(path.relative_to(root)), path.read_bytes()]
    return _digest(*parts)


# -- 1. the Debian base ---------------------------------------------------------------------


def base_image() -> str:
    """debootstrap --variant=minbase bookworm, imported: the base of every local image."""
    if image_exists(BASE_IMAGE):
        step(f"Debian base: reusing {BASE_IMAGE}")
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is not installed (apt-get install debootstrap)")
    step(f"Debian base: debootstrap --variant=minbase {DEBIAN_SUITE} ({DEBIAN_MIRROR})")
    work = cache_dir() / "base"
    work.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs.", dir=work))
    try:
        with open(work / "debootstrap.log", "wb") as log:
            subprocess.run(
                ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR],
                stdout=log, stderr=subprocess.STDOUT, check=True,
            )  # fmt: skip
        # Leave apt clean and the rootfs without the host's resolver or hostname.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        step(f"Debian base: docker import as {BASE_IMAGE}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", "CMD [\"/bin/bash\"]", "-", BASE_IMAGE],
            stdin=tar.stdout, capture_output=True,
        )  # fmt: skip
        tar.wait()
        if imported.returncode or tar.returncode:
            raise SystemExit(f"docker import failed: {imported.stderr.decode()[-2000:]}")
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(rootfs)], check=False)
    return BASE_IMAGE


# -- 2. the images kubeadm needs -------------------------------------------------------------


def kubeadm_images() -> list[str]:
    """`kubeadm config images list` for our Kubernetes version, as kind's build runs it."""
    out = subprocess.run(
        [str(build.binary("kubeadm")), "config", "images", "list",
         "--kubernetes-version", KUBERNETES_VERSION],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [line.strip() for line in out.splitlines() if line.strip()]


def _name(ref: str) -> str:
    """registry.k8s.io/coredns/coredns:v1.14.2 -> coredns."""
    return ref.rsplit("/", 1)[-1].split(":", 1)[0]


# Per image: (binary, where it goes, entrypoint or None, needs iptables).
_IMAGE_BINARIES = {
    "kube-apiserver": ("kube-apiserver", "/usr/local/bin/kube-apiserver", None, False),
    "kube-controller-manager": (
        "kube-controller-manager",
        "/usr/local/bin/kube-controller-manager",
        None,
        False,
    ),
    "kube-scheduler": ("kube-scheduler", "/usr/local/bin/kube-scheduler", None, False),
    "kube-proxy": ("kube-proxy", "/usr/local/bin/kube-proxy", None, True),
    "etcd": ("etcd", "/usr/local/bin/etcd", None, False),
    "coredns": ("coredns", "/coredns", ["/coredns"], False),
    "pause": ("pause", "/pause", ["/pause"], False),
}


def _build_context(files: dict[str, Path | str], dockerfile: str) -> Path:
    context = Path(tempfile.mkdtemp(prefix="context.", dir=cache_dir()))
    for name, source in files.items():
        target = context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            else:
                shutil.copy2(source, target)
        else:
            target.write_text(source)
    (context / "Dockerfile").write_text(dockerfile)
    return context


def _docker_build(tag: str, context: Path, build_args: dict[str, str] | None = None) -> None:
    args = ["build", "--network=host", "-q", "-t", tag]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    try:
        docker(*args, str(context))
    finally:
        shutil.rmtree(context, ignore_errors=True)


def iptables_base(base: str) -> str:
    """The Debian base with iptables and conntrack, for kube-proxy."""
    tag = f"{REGISTRY}/debian:{DEBIAN_SUITE}-iptables"
    if image_exists(tag):
        return tag
    step(f"image {tag}: apt-get install iptables conntrack")
    dockerfile = (
        f"FROM {base}\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
        "--no-install-recommends iptables conntrack && apt-get clean "
        "&& rm -rf /var/lib/apt/lists/*\n"
    )
    _docker_build(tag, _build_context({}, dockerfile))
    return tag


def component_images(base: str) -> list[str]:
    """Every image kubeadm lists (and containerd's sandbox image), built if absent."""
    refs = kubeadm_images()
    built: list[str] = []
    for ref in refs:
        name = _name(ref)
        if name not in _IMAGE_BINARIES:
            raise SystemExit(f"kubeadm wants {ref}, which this build does not know how to make")
        binary_name, target, entrypoint, iptables = _IMAGE_BINARIES[name]
        binary = build.binary(binary_name)
        local = f"{REGISTRY}/kind-images/{name}:{ref.rsplit(':', 1)[1]}-{_file_digest(binary)}"
        if not image_exists(local):
            step(f"image {ref} ({binary_name} {_version_of(binary_name)})")
            parent = iptables_base(base) if iptables else base
            if name == "pause":
                parent = "scratch"
            lines = [f"FROM {parent}", f"COPY {binary_name} {target}"]
            if entrypoint:
                lines.append(f"ENTRYPOINT {json.dumps(entrypoint)}")
            if name == "pause":
                lines.append("USER 65535:65535")
            _docker_build(local, _build_context({binary_name: binary}, "\n".join(lines) + "\n"))
        docker("tag", local, ref)
        built.append(ref)
    return built


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:10]


def _version_of(binary_name: str) -> str:
    for component in COMPONENTS:
        if binary_name in component.binaries:
            return component.version
    if binary_name == "pause":
        return build.PAUSE_VERSION
    if binary_name == "etcd":
        from e2e.cluster.components import ETCD_VERSION

        return ETCD_VERSION
    return KUBERNETES_VERSION


# -- 3. the node base and the node image ----------------------------------------------------


def kind_files() -> Path:
    """kind's images/base/files, from the kind module in the Go module cache."""
    module = cluster_build._module_dir_in_cache(KIND, KIND.module)
    return module / "images" / "base" / "files"


def host_adaptations() -> dict[str, str]:
    """What this host needs of the node's containerd, and why (part of the image's key).

    - root without CAP_SYS_RESOURCE cannot lower oom_score_adj: containerd must not try
      (restrict_oom_score_adj);
    - an open-file hard limit below what containerd's unit asks (infinity) makes systemd
      refuse to start it: the unit asks for the limit there is.
    """
    bounding = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    adapt = {"restrict_oom_score_adj": "false", "nofile": "infinity"}
    if not bounding >> CAP_SYS_RESOURCE & 1:
        adapt["restrict_oom_score_adj"] = "true"
    if hard != resource.RLIM_INFINITY and hard < nr_open:
        adapt["nofile"] = str(hard)
    return adapt


def _containerd_config(text: str, pause: str, adapt: dict[str, str]) -> str:
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("sandbox_image"):
            line = f'  sandbox_image = "{pause}"'
        elif stripped.startswith("restrict_oom_score_adj"):
            line = f"  restrict_oom_score_adj = {adapt['restrict_oom_score_adj']}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def node_base(base: str, pause: str) -> str:
    """kind's base layout with our binaries, as a docker image (no images preloaded yet)."""
    adapt = host_adaptations()
    names = [
        "containerd", "containerd-shim-runc-v2", "ctr", "crictl", "fakegpu", "runc",
        "host-local", "loopback", "ptp", "portmap", "kubelet", "kubeadm", "kubectl",
    ]  # fmt: skip
    binaries = {f"bin/{n}": build.binary(n) for n in names}
    key = _digest(
        base,
        pause,
        json.dumps(adapt, sort_keys=True),
        _tree_digest(kind_files()),
        _tree_digest(NODE_FILES),
        *(f"{n}={_file_digest(p)}" for n, p in sorted(binaries.items())),
    )
    tag = f"{REGISTRY}/kind-node-base:{KUBERNETES_VERSION}-{key}"
    if image_exists(tag):
        step(f"node base: reusing {tag}")
        return tag
    step(f"node base: kind {KIND.version}'s layout, containerd, runc, kubelet… ({tag})")
    files: dict[str, Path | str] = {
        "kind": kind_files(),
        "paraserve": NODE_FILES / "files",
        **binaries,
    }
    context = _build_context(files, (NODE_FILES / "Dockerfile").read_text())
    # The module cache is read-only: make the copy writable, then adapt containerd's config.
    subprocess.run(["chmod", "-R", "u+w", str(context)], check=True)
    config = context / "kind" / "etc" / "containerd" / "config.toml"
    config.write_text(_containerd_config(config.read_text(), pause, adapt))
    if adapt["nofile"] != "infinity":
        dropin = context / "paraserve" / "etc/systemd/system/containerd.service.d/10-nofile.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(f"[Service]\nLimitNOFILE={adapt['nofile']}\n")
    # kind's LICENSES/README and the like go where kind puts them; nothing else is needed.
    _docker_build(tag, context, {"BASE_IMAGE": base})
    return tag


def node_image() -> str:
    """The node image: built, or reused when every input is unchanged. Returns its tag."""
    started = time.monotonic()
    base = base_image()
    images = component_images(base)
    pause = next(ref for ref in images if _name(ref) == "pause")
    nbase = node_base(base, pause)
    image_ids = [docker("image", "inspect", "-f", "{{.Id}}", ref).strip() for ref in images]
    key = _digest(nbase, *images, *image_ids)
    tag = f"{NODE_IMAGE}:{KUBERNETES_VERSION}-{key}"
    if image_exists(tag):
        step(f"node image: reusing {tag}")
        return tag
    step(f"node image: importing {len(images)} images into containerd: {' '.join(images)}")
    name = f"paraserve-node-build-{os.getpid()}"
    docker("run", "-d", "--name", name, "--entrypoint=sleep", "--security-opt",
           "seccomp=unconfined", nbase, "infinity")  # fmt: skip
    try:
        docker("exec", name, "bash", "-c", "nohup containerd >/tmp/containerd.log 2>&1 &")
        docker("exec", name, "bash", "-c",
               "for i in $(seq 1 50); do [ -S /run/containerd/containerd.sock ] && break; "
               "sleep 0.2; done; ctr info >/dev/null")  # fmt: skip
        archive = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "exec", "-i", name, "ctr", "--namespace=k8s.io", "images", "import",
             "--label=io.cri-containerd.pinned=pinned", "--all-platforms", "--no-unpack",
             "--digests", "-"],
            stdin=archive.stdout, capture_output=True,
        )  # fmt: skip
        archive.wait()
        if imported.returncode or archive.returncode:
            raise SystemExit(f"importing images failed: {imported.stderr.decode()[-2000:]}")
        listed = docker("exec", name, "ctr", "--namespace=k8s.io", "images", "list", "-q")
        absent = [ref for ref in images if ref not in listed.split()]
        if absent:
            raise SystemExit(f"containerd in the node image lacks {absent}")
        docker("exec", name, "bash", "-c",
               f"echo {KUBERNETES_VERSION} >/kind/version && pkill containerd; "
               "for i in $(seq 1 50); do pgrep containerd >/dev/null || break; sleep 0.2; done; "
               "rm -f /tmp/containerd.log")  # fmt: skip
        docker("commit", "--change", 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]',
               name, tag)  # fmt: skip
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
    step(f"node image {tag} ready in {time.monotonic() - started:.0f}s")
    return tag


def prune(keep: Iterable[str]) -> None:
    """Remove node images of ours other than `keep` (a cache keyed by inputs grows)."""
    keep = set(keep)
    for repo in (NODE_IMAGE, f"{REGISTRY}/kind-node-base"):
        out = docker("image", "ls", repo, "--format", "{{.Repository}}:{{.Tag}}")
        for ref in out.split():
            if ref not in keep and not ref.endswith(":<none>"):
                subprocess.run(["docker", "rmi", ref], capture_output=True)
