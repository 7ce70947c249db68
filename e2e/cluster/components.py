"""The pinned control-plane components: which Go module builds which binary, with which flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.21.4"

_K8S_MAJOR, _K8S_MINOR = KUBERNETES_VERSION.lstrip("v").split(".")[:2]


def _kubernetes_ldflags() -> list[str]:
    # Without these /version reports v0.0.0-master and Helm's kubeVersion checks break.
    values = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": _K8S_MAJOR,
        "gitMinor": _K8S_MINOR,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    return [
        f"-X k8s.io/{pkg}.{key}={value}"
        for pkg in ("component-base/version", "client-go/pkg/version")
        for key, value in values.items()
    ]


def _helm_ldflags() -> list[str]:
    # helm template assumes this Kubernetes version when it is not talking to a cluster.
    return [
        f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={_K8S_MAJOR}",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={_K8S_MINOR}",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={_K8S_MAJOR}",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={_K8S_MINOR}",
    ]


@dataclass(frozen=True)
class Component:
    """One Go wrapper module under go/ and the binaries it builds."""

    name: str
    module: str
    version: str
    # binary name -> Go package path
    binaries: dict[str, str]
    ldflags: list[str] = field(default_factory=list)
    # envtest variable that points at a ready binary, per binary
    envtest_vars: dict[str, str] = field(default_factory=dict)
    # Where its wrapper module's folder is (e2e/kind keeps its own).
    go_dir: Path = GO_DIR
    # Build tags, and cgo for the binaries that link a C library (runc: libseccomp).
    tags: tuple[str, ...] = ()
    cgo: bool = False

    @property
    def module_dir(self) -> Path:
        return self.go_dir / self.name

    @property
    def wrapper_module(self) -> str:
        """The wrapper's own module path: paraserve.dev/e2e/cluster/NAME, …/e2e/kind/NAME."""
        return f"paraserve.dev/e2e/{self.go_dir.parent.name}/{self.name}"

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.version}"


KUBERNETES = Component(
    name="kubernetes",
    module="k8s.io/kubernetes",
    version=KUBERNETES_VERSION,
    binaries={
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    },
    ldflags=_kubernetes_ldflags(),
    envtest_vars={
        "kube-apiserver": "TEST_ASSET_KUBE_APISERVER",
        "kube-controller-manager": "TEST_ASSET_KUBE_CONTROLLER_MANAGER",
        "kube-scheduler": "TEST_ASSET_KUBE_SCHEDULER",
        "kubectl": "TEST_ASSET_KUBECTL",
    },
)

ETCD = Component(
    name="etcd",
    module="go.etcd.io/etcd/server/v3",
    version=ETCD_VERSION,
    binaries={"etcd": "go.etcd.io/etcd/server/v3"},
    envtest_vars={"etcd": "TEST_ASSET_ETCD"},
)

KWOK = Component(
    name="kwok",
    module="sigs.k8s.io/kwok",
    version=KWOK_VERSION,
    binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    envtest_vars={"kwok": "TEST_ASSET_KWOK"},
)

HELM = Component(
    name="helm",
    module="helm.sh/helm/v3",
    version=HELM_VERSION,
    binaries={"helm": "helm.sh/helm/v3/cmd/helm"},
    ldflags=_helm_ldflags(),
    envtest_vars={"helm": "TEST_ASSET_HELM"},
)

# Built in this order, one at a time: the machine has two cores and others share it.
COMPONENTS: tuple[Component, ...] = (ETCD, KUBERNETES, KWOK, HELM)

# kwok Stage files in its module (the build copies kustomize/stage/): nodes become Ready and
# keep heartbeating with a lease, as kwok's default; pods bound to them run and can be deleted.
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
