"""What the kind node image is made of: each Go module, its version and the binaries it builds.

The layout is kind's own node base (its images/base, read from the kind module): systemd,
containerd v2, runc, crictl and the CNI plugins, at the versions kind v0.33.0 pins; kubelet,
kubeadm and kube-proxy at the local control plane's Kubernetes version (e2e/cluster). Every
binary is built from a wrapper module under e2e/kind/go/ (pinned go.mod and go.sum) by the
same machinery as the control plane's binaries, into the same cache.
"""

from __future__ import annotations

from pathlib import Path

from e2e.cluster.components import KUBERNETES_VERSION, Component, _kubernetes_ldflags

GO_DIR = Path(__file__).resolve().parent / "go"

KIND_VERSION = "v0.33.0"
# kind v0.33.0's images/base/Dockerfile pins these.
CONTAINERD_VERSION = "v2.3.4"
RUNC_VERSION = "v1.4.3"
CRICTL_VERSION = "v1.36.0"
CNI_PLUGINS_VERSION = "v1.9.1"
# kubeadm v1.36's CoreDNS (cmd/kubeadm/app/constants: CoreDNSVersion).
COREDNS_VERSION = "v1.14.2"

KIND = Component(
    name="kind",
    module="sigs.k8s.io/kind",
    version=KIND_VERSION,
    binaries={"kind": "sigs.k8s.io/kind"},
    go_dir=GO_DIR,
)

# k8s.io/kubernetes' go.mod replaces its staging modules with ./staging/…; the wrapper restates
# them with their published versions (e2e/cluster/gomod.py), as for the control plane.
NODE = Component(
    name="kubernetes-node",
    module="k8s.io/kubernetes",
    version=KUBERNETES_VERSION,
    binaries={
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kubeadm": "k8s.io/kubernetes/cmd/kubeadm",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    },
    ldflags=_kubernetes_ldflags(),
    go_dir=GO_DIR,
)

_CONTAINERD = "github.com/containerd/containerd/v2"
CONTAINERD = Component(
    name="containerd",
    module=_CONTAINERD,
    version=CONTAINERD_VERSION,
    binaries={
        "containerd": f"{_CONTAINERD}/cmd/containerd",
        "containerd-shim-runc-v2": f"{_CONTAINERD}/cmd/containerd-shim-runc-v2",
        "ctr": f"{_CONTAINERD}/cmd/ctr",
    },
    ldflags=[
        f"-X {_CONTAINERD}/version.Version={CONTAINERD_VERSION}",
        f"-X {_CONTAINERD}/version.Package={_CONTAINERD}",
    ],
    # kind's own build tags: none of the optional snapshotters.
    tags=("no_aufs", "no_zfs", "no_btrfs", "no_devmapper"),
    go_dir=GO_DIR,
)

# runc applies seccomp profiles (RuntimeDefault) only when built with libseccomp: cgo.
RUNC = Component(
    name="runc",
    module="github.com/opencontainers/runc",
    version=RUNC_VERSION,
    binaries={"runc": "github.com/opencontainers/runc"},
    tags=("seccomp", "urfave_cli_no_docs"),
    cgo=True,
    go_dir=GO_DIR,
)

CRICTL = Component(
    name="cri-tools",
    module="sigs.k8s.io/cri-tools",
    version=CRICTL_VERSION,
    binaries={"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"},
    ldflags=[f"-X sigs.k8s.io/cri-tools/pkg/version.Version={CRICTL_VERSION}"],
    go_dir=GO_DIR,
)

_CNI = "github.com/containernetworking/plugins"
CNI_PLUGINS = Component(
    name="cni-plugins",
    module=_CNI,
    version=CNI_PLUGINS_VERSION,
    binaries={
        "host-local": f"{_CNI}/plugins/ipam/host-local",
        "loopback": f"{_CNI}/plugins/main/loopback",
        "ptp": f"{_CNI}/plugins/main/ptp",
        "portmap": f"{_CNI}/plugins/meta/portmap",
    },
    ldflags=[f"-X {_CNI}/pkg/utils/buildversion.BuildVersion={CNI_PLUGINS_VERSION}"],
    go_dir=GO_DIR,
)

# CoreDNS with the plugins kubeadm's Corefile uses (go/coredns/main.go).
COREDNS = Component(
    name="coredns",
    module="github.com/coredns/coredns",
    version=COREDNS_VERSION,
    binaries={"coredns": "paraserve.dev/e2e/kind/coredns"},
    ldflags=[f"-X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}"],
    go_dir=GO_DIR,
)

# The device plugin stand-in that advertises the fake GPUs (go/fakegpu/main.go).
FAKEGPU = Component(
    name="fakegpu",
    module="k8s.io/kubelet",
    version="v0." + KUBERNETES_VERSION.split(".", 1)[1],
    binaries={"fakegpu": "paraserve.dev/e2e/kind/fakegpu"},
    go_dir=GO_DIR,
)

# Built in this order, one at a time (two cores, shared).
COMPONENTS: tuple[Component, ...] = (
    KIND,
    FAKEGPU,
    CNI_PLUGINS,
    CRICTL,
    RUNC,
    CONTAINERD,
    COREDNS,
    NODE,
)
