"""Render and install paraserve (chart or manifests) and run the operator as its ServiceAccount.

Shared by the unit tests of the chart and manifests, the install integration tests, the
end-to-end suite and the demo, so that all of them install paraserve the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "paraserve"
MANIFESTS = REPO / "manifests"
CRD = REPO / "crds" / "inferencedeployments.paraserve.dev.yaml"
CHART_CRD = CHART / "crds" / CRD.name

NAMESPACE = "paraserve-system"
RELEASE = "paraserve"
#: The ServiceAccount that `kubectl apply -k manifests/` creates.
MANIFESTS_SERVICE_ACCOUNT = "paraserve-operator"


#: Every permission the operator holds, as (apiGroup/resource, resourceName or "*", verbs):
#: in each served namespace (cluster-wide by default) …
NAMESPACED_GRANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("paraserve.dev/inferencedeployments", "*", ("list", "watch", "patch")),
    ("paraserve.dev/inferencedeployments/status", "*", ("patch",)),
    ("paraserve.dev/inferencedeployments/finalizers", "*", ("update",)),
    ("/pods", "*", ("get", "list", "watch", "create", "delete")),
    ("/services", "*", ("get", "list", "watch", "create", "patch")),
    ("/configmaps", "*", ("get", "list", "watch", "create", "patch", "delete")),
    ("/events", "*", ("create",)),
)
#: … on cluster-scoped resources …
CLUSTER_GRANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/nodes", "*", ("list", "watch")),
    ("/namespaces", "*", ("get",)),
    ("apiextensions.k8s.io/customresourcedefinitions", "*", ("list", "watch")),
)
#: … with the self-managed webhook, its configuration …
WEBHOOK_GRANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("admissionregistration.k8s.io/validatingwebhookconfigurations", "*", ("create",)),
    ("admissionregistration.k8s.io/validatingwebhookconfigurations", "paraserve.dev", ("patch",)),
)
#: … and in its own namespace, for leader election.
LEADER_ELECTION_GRANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("coordination.k8s.io/leases", "*", ("create",)),
    ("coordination.k8s.io/leases", "paraserve-operator", ("get", "update")),
)


def expand(
    scope: str, grants: Sequence[tuple[str, str, tuple[str, ...]]]
) -> set[tuple[str, str, str, str]]:
    """Grants as `rbac_grants` returns them."""
    return {(scope, resource, name, verb) for resource, name, verbs in grants for verb in verbs}


def tool(name: str) -> Path:
    """kubectl or helm: from PATH when set up by the caller, else the local cluster's build."""
    from e2e.cluster import build

    built = build.binary_path(name)
    if built.is_file():
        return built
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / name
        if directory and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        f"{name} not found: run `python -m e2e.cluster build` (or `make cluster-binaries`)"
    )


def _run(args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
    return result.stdout


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def set_flags(values: Mapping[str, Any]) -> list[str]:
    """`--set-json key=value` flags for nested values given as a flat dotted mapping."""
    flags: list[str] = []
    for key, value in values.items():
        flags += ["--set-json", f"{key}={json.dumps(value)}"]
    return flags


def helm_template(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """The chart's objects as `helm template` renders them; values as dotted keys."""
    args = [str(tool("helm")), "template", release, str(CHART), "--namespace", namespace]
    args += ["--include-crds"] if include_crds else []
    return _documents(_run([*args, *set_flags(values or {})]))


def helm_template_error(values: Mapping[str, Any]) -> str:
    """The error `helm template` stops with for these values (raises if it renders)."""
    args = [str(tool("helm")), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    result = subprocess.run([*args, *set_flags(values)], capture_output=True, text=True)
    if result.returncode == 0:
        raise AssertionError(f"helm template accepted {dict(values)}")
    return result.stderr


def kustomize_build(directory: Path = MANIFESTS) -> list[dict[str, Any]]:
    """What `kubectl apply -k` would send."""
    return _documents(_run([str(tool("kubectl")), "kustomize", str(directory)]))


def find(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> Any:
    """The one object of this kind (and name); AssertionError if none or several."""
    found = [
        o
        for o in objects
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {[o['kind'] for o in objects]}"
    return found[0]


def operator_container(objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    deployment = find(objects, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


def rbac_grants(objects: Sequence[Mapping[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(scope, apiGroup/resource, resourceName or '*', verb) granted to the operator's account.

    scope is "cluster" for a ClusterRole bound cluster-wide, else the binding's namespace.
    """
    deployment = find(objects, "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    namespace = deployment["metadata"]["namespace"]
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objects
        if o.get("kind") in ("Role", "ClusterRole")
    }
    grants: set[tuple[str, str, str, str]] = set()
    for binding in objects:
        if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = binding.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == account
            and s.get("namespace") == namespace
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        bound_in = binding["metadata"].get("namespace")
        role_namespace = bound_in if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_namespace, ref["name"])]
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else bound_in
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for name in rule.get("resourceNames") or ["*"]:
                        for verb in rule.get("verbs") or []:
                            grants.add((scope, f"{group}/{resource}", name, verb))
    return grants


# -- installing and running ------------------------------------------------------------------


def service_account_kubeconfig(
    kubeconfig: Path,
    namespace: str,
    account: str,
    out: Path,
    *,
    env: Mapping[str, str] | None = None,
    duration: str = "2h",
) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest token), nothing else.

    The server and CA come from `kubeconfig`; the user is the account's bound token, as a pod
    of that account would get it.
    """
    kubectl = str(tool("kubectl"))
    run_env = {**(env or os.environ), "KUBECONFIG": str(kubeconfig)}
    token = _run(
        [kubectl, "create", "token", account, "-n", namespace, f"--duration={duration}"],
        env=run_env,
    ).strip()
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config.get("current-context") or config["contexts"][0]["name"]
    context = next(c for c in config["contexts"] if c["name"] == context_name)["context"]
    cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"]
    cluster = dict(cluster)
    if "certificate-authority" in cluster:  # inline it: the file may not outlive the cluster
        ca = Path(cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    user = f"system:serviceaccount:{namespace}:{account}"
    out.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "cluster", "cluster": cluster}],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "operator",
                        "context": {"cluster": "cluster", "user": user, "namespace": namespace},
                    }
                ],
                "current-context": "operator",
            }
        )
    )
    out.chmod(0o600)
    return out


def operator_command(
    kubeconfig: Path,
    *,
    lease_namespace: str = NAMESPACE,
    extra: Sequence[str] = (),
) -> list[str]:
    """`paraserve operator` as a local process: ports 0 (none), plain logs, leader election on."""
    return [
        sys.executable,
        "-m",
        "paraserve.cli",
        "operator",
        f"--kubeconfig={kubeconfig}",
        "--leader-elect",
        f"--leader-election-namespace={lease_namespace}",
        "--health-port=0",
        "--metrics-port=0",
        "--log-format=plain",
        "--resync=10",
        "--restart-backoff=1",
        *extra,
    ]


@contextlib.contextmanager
def local_operator(
    kubeconfig: Path,
    log: Path,
    *,
    lease_namespace: str = NAMESPACE,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `paraserve operator` in the background for the `with` block; stop it after."""
    command = operator_command(kubeconfig, lease_namespace=lease_namespace, extra=extra)
    # $KUBECONFIG too (kopf logs in from --kubeconfig): nothing falls back to ~/.kube/config.
    run_env = {**(env or os.environ), "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=run_env,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m e2e.install sa-kubeconfig NAMESPACE ACCOUNT OUT`: a kubeconfig ($KUBECONFIG's
    server) that authenticates as that ServiceAccount with a TokenRequest token."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or args[0] != "sa-kubeconfig" or not os.environ.get("KUBECONFIG"):
        print(main.__doc__, file=sys.stderr)
        return 2
    _, namespace, account, out = args
    kubeconfig = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
    print(service_account_kubeconfig(kubeconfig, namespace, account, Path(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
