"""Installing paraserve for real on the local control plane: manifests, the chart, and its RBAC.

The RBAC proof runs `paraserve operator` as a local process (the local control plane runs no
containers) that authenticates as the chart's ServiceAccount with a TokenRequest token, and
shows a whole reconcile — refusal at admission, rank pods, Service, ConfigMap, status, Events,
leader election — works with exactly the chart's permissions.

The operators other test files start come later in file order; ours serves every namespace
while it runs, as an installed operator does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e import gpunodes, install
from e2e.cluster.local import LocalCluster
from e2e.install import (
    CLUSTER_GRANTS,
    LEADER_ELECTION_GRANTS,
    NAMESPACED_GRANTS,
    kustomize_build,
)

pytestmark = pytest.mark.timeout(300)

EXAMPLES = install.REPO / "examples"
WEBHOOK_CONFIGURATION = "paraserve.dev"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def can_i(cluster: LocalCluster, account: str, verb: str, resource: str, *where: str) -> bool:
    """`kubectl auth can-i` as a ServiceAccount, asked of the API server's authorizer."""
    result = cluster.kubectl("auth", "can-i", verb, resource, "--as", account, *where, check=False)
    return result.stdout.strip() == "yes"


def assert_holds_exactly_its_grants(cluster: LocalCluster, account: str, own: str) -> None:
    """Every verb of the expected grants is allowed, and a sample of others is not."""
    for grants, where in (
        (NAMESPACED_GRANTS, ("-n", "default")),
        (CLUSTER_GRANTS, ()),
        (LEADER_ELECTION_GRANTS, ("-n", own)),
    ):
        for group_resource, name, verbs in grants:
            group, _, resource = group_resource.partition("/")
            resource, _, subresource = resource.partition("/")
            target = f"{resource}.{group}" if group else resource
            if name != "*":
                target = f"{target}/{name}"
            sub = (f"--subresource={subresource}",) if subresource else ()
            for verb in verbs:
                allowed = can_i(cluster, account, verb, target, *where, *sub)
                assert allowed, (verb, target, subresource, where)
    for verb, target, where in (
        ("get", "secrets", ("-n", own)),
        ("list", "secrets", ("-A",)),
        ("create", "deployments.apps", ("-n", "default")),
        ("delete", "inferencedeployments.paraserve.dev", ("-n", "default")),
        ("update", "pods", ("-n", "default")),
        ("patch", "nodes", ()),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", ()),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", ()),
        ("update", "leases.coordination.k8s.io/someone-elses-lease", ("-n", own)),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", ()),
    ):
        assert not can_i(cluster, account, verb, target, *where), (verb, target, where)


@contextlib.contextmanager
def loopback_pool(cluster: LocalCluster, spec: str) -> Iterator[dict[str, str]]:
    """kwok GPU nodes whose pods get 127.x addresses (the operator scrapes ready ranks)."""
    name = f"install-{uuid.uuid4().hex[:6]}"
    cluster.apply(*gpunodes.pool_nodes(name, spec))
    selector = f"paraserve.dev/pool={name}"
    try:
        cluster.kubectl("wait", "node", "-l", selector, "--for=condition=Ready", "--timeout=60s")
        yield {"paraserve.dev/pool": name}
    finally:
        cluster.kubectl("delete", "node", "-l", selector, "--ignore-not-found")


def pods_of(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.get("pods", namespace=namespace)["items"]
    return [
        p for p in items if p["metadata"].get("labels", {}).get("paraserve.dev/deployment") == name
    ]


def example(path: Path, selector: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(path.read_text())
    body["spec"]["placement"]["nodeSelector"] = selector
    return body


def test_manifests_install(cluster: LocalCluster) -> None:
    objects = kustomize_build()
    applied = cluster.kubectl("apply", "-k", str(install.MANIFESTS))
    assert "deployment.apps/paraserve-operator created" in applied.stdout, applied.stdout
    try:
        namespace = install.NAMESPACE
        deployment = cluster.get("deployment", "paraserve-operator", namespace=namespace)
        wanted = install.find(objects, "Deployment")["spec"]["template"]["spec"]
        got = deployment["spec"]["template"]["spec"]
        assert got["serviceAccountName"] == "paraserve-operator"
        assert got["containers"][0]["args"] == wanted["containers"][0]["args"]
        assert got["containers"][0]["securityContext"] == wanted["containers"][0]["securityContext"]
        # The namespace enforces `restricted`: the ReplicaSet's pod is created only if it meets it.
        cluster.wait_for(
            lambda: cluster.get("pods", namespace=namespace)["items"],
            timeout=60,
            what="the operator pod admitted under Pod Security `restricted`",
        )
        replicasets = cluster.get("replicasets", namespace=namespace)["items"]
        for replicaset in replicasets:
            for condition in replicaset.get("status", {}).get("conditions") or []:
                assert condition["type"] != "ReplicaFailure", condition
        crd = cluster.get("crd", "inferencedeployments.paraserve.dev")
        assert any(
            c["type"] == "Established" and c["status"] == "True"
            for c in crd["status"]["conditions"]
        )
        account = f"system:serviceaccount:{namespace}:{install.MANIFESTS_SERVICE_ACCOUNT}"
        assert_holds_exactly_its_grants(cluster, account, namespace)
        assert can_i(cluster, account, "create", "validatingwebhookconfigurations")
    finally:
        # Everything but the CRD, which the rest of the session's tests use.
        rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
        cluster.kubectl(
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-f",
            "-",
            input=yaml.safe_dump_all(rest),
        )


@pytest.fixture
def chart_release(cluster: LocalCluster) -> Iterator[str]:
    """`helm install` of the chart (webhook on) into a namespace enforcing `restricted`."""
    namespace = "paraserve-chart"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    try:
        result = cluster.helm(
            "install",
            "paraserve",
            str(install.CHART),
            "--namespace",
            namespace,
            "--set",
            "webhook.enabled=true",
            "--wait=false",
        )
        assert "STATUS: deployed" in result.stdout, result.stdout + result.stderr
        assert "kubectl get infd" in result.stdout  # NOTES.txt
        yield namespace
    finally:
        cluster.helm("uninstall", "paraserve", "--namespace", namespace, check=False)
        cluster.kubectl(
            "delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
        )
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def test_chart_install_and_its_rbac_is_enough_for_a_full_reconcile(
    cluster: LocalCluster, chart_release: str, tmp_path: Path
) -> None:
    namespace = chart_release
    # The chart's Deployment, as rendered.
    deployment = cluster.get("deployment", "paraserve", namespace=namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/paraserve/operator:0.1.0"
    assert "--webhook=self-managed" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    cluster.wait_for(
        lambda: cluster.get("pods", namespace=namespace)["items"],
        timeout=60,
        what="the chart's operator pod admitted under Pod Security `restricted`",
    )
    # The CRD came from the chart's crds/ (or was there already: Helm never replaces one).
    cluster.get("crd", "inferencedeployments.paraserve.dev")

    account = f"system:serviceaccount:{namespace}:paraserve"
    assert_holds_exactly_its_grants(cluster, account, namespace)

    kubeconfig = install.service_account_kubeconfig(
        cluster.kubeconfig,
        namespace,
        "paraserve",
        tmp_path / "operator.kubeconfig",
        env=cluster.env,
    )
    whoami = cluster.run(
        "kubectl", "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json"
    ).stdout
    assert json.loads(whoami)["status"]["userInfo"]["username"] == account

    log = tmp_path / "operator.log"
    webhook_port = free_port()
    with (
        cluster.namespace() as workload,
        loopback_pool(cluster, "1 x 8 x A100-80GB") as selector,
        install.local_operator(
            kubeconfig,
            log,
            lease_namespace=namespace,
            extra=[
                # The local API server reaches a local process by URL, not through a Service.
                "--webhook=self-managed",
                "--webhook-host=127.0.0.1",
                f"--webhook-port={webhook_port}",
                "--webhook-address=127.0.0.1",
                "--worker-image=registry.invalid/paraserve/worker:test",
            ],
        ) as operator,
    ):

        def log_tail() -> str:
            return "\n".join(log.read_text(errors="replace").splitlines()[-30:])

        def registered() -> bool:
            assert operator.poll() is None, log_tail()
            result = cluster.kubectl(
                "get", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json",
                check=False,
            )  # fmt: skip
            if result.returncode != 0:
                return False
            webhooks = json.loads(result.stdout).get("webhooks") or []
            return bool(webhooks) and str(webhook_port) in webhooks[0]["clientConfig"].get(
                "url", ""
            )

        try:
            cluster.wait_for(registered, timeout=90, what="the webhook registered")
        except TimeoutError as error:
            raise AssertionError(log_tail()) from error

        # Refused at the prompt, with the arithmetic, once the webhook has seen the pool.
        impossible = yaml.safe_dump(example(EXAMPLES / "review-pp8-tp2-sp2.yaml", selector))

        def refused_in_dry_run() -> bool:
            attempt = cluster.kubectl(
                "apply", "--dry-run=server", "-n", workload, "-f", "-",
                input=impossible, check=False,
            )  # fmt: skip
            return attempt.returncode != 0

        cluster.wait_for(refused_in_dry_run, timeout=60, what="the webhook knowing the pool")
        refused = cluster.kubectl("apply", "-n", workload, "-f", "-", input=impossible, check=False)
        assert refused.returncode != 0, refused.stdout
        assert "PP=8 × TP=2 = 16 GPUs required" in refused.stderr, refused.stderr

        # Accepted and reconciled: 8 rank pods, the headless Service, the topology ConfigMap.
        fitting = example(EXAMPLES / "review-pp4-tp2-sp2.yaml", selector)
        name = fitting["metadata"]["name"]
        cluster.apply(fitting, namespace=workload)

        def reconciled() -> dict[str, Any] | None:
            assert operator.poll() is None, log_tail()
            body = cluster.get("infd", name, namespace=workload)
            status = body.get("status") or {}
            pods = pods_of(cluster, workload, name)
            running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
            if status.get("phase") in ("Running", "Ready") and len(running) == 8:
                return body
            return None

        try:
            body = cluster.wait_for(reconciled, timeout=120, what=f"{name} Running")
        except TimeoutError as error:
            raise AssertionError(log_tail()) from error
        status = body["status"]
        assert status["worldSize"] == 8 and status["gpusRequired"] == 8
        assert status["observedGeneration"] == body["metadata"]["generation"]
        cluster.get("service", name, namespace=workload)
        [mounted] = [
            v["configMap"]["name"]
            for v in pods_of(cluster, workload, name)[0]["spec"]["volumes"]
            if v.get("configMap")
        ]
        cluster.get("configmap", mounted, namespace=workload)
        events = cluster.get("events", namespace=workload)["items"]
        assert any(e["involvedObject"].get("name") == name for e in events)
        lease = cluster.get("lease", "paraserve-operator", namespace=namespace)
        assert lease["spec"]["holderIdentity"]

    # Nothing the operator tried was refused by RBAC.
    text = log.read_text(errors="replace")
    for refusal in ("HTTP 403", "Forbidden", "is forbidden"):
        assert refusal not in text, text[-3000:]


def test_chart_renders_what_helm_installs(cluster: LocalCluster) -> None:
    """`helm install --dry-run=server` renders what `helm template` does."""
    result = cluster.helm(
        "install", "paraserve", str(install.CHART), "-n", "default", "--dry-run=server"
    )
    manifest = result.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(manifest) if d)
    rendered = sorted(o["kind"] for o in install.helm_template(namespace="default"))
    assert kinds == rendered


def test_chart_rbac_for_watched_namespaces_only(cluster: LocalCluster, tmp_path: Path) -> None:
    """`watchNamespaces`: RoleBindings there only, still enough for a whole reconcile."""
    release_namespace = "paraserve-scoped"
    with cluster.namespace() as workload, cluster.namespace() as elsewhere:
        cluster.kubectl("create", "namespace", release_namespace)
        try:
            cluster.helm(
                "install", "paraserve", str(install.CHART), "--namespace", release_namespace,
                "--set", "replicaCount=0", "--set", "webhook.enabled=false",
                "--set-json", f'watchNamespaces=["{workload}"]',
            )  # fmt: skip
            account = f"system:serviceaccount:{release_namespace}:paraserve"
            assert can_i(cluster, account, "create", "pods", "-n", workload)
            assert not can_i(cluster, account, "create", "pods", "-n", elsewhere)
            assert not can_i(cluster, account, "list", "pods", "-A")
            assert can_i(cluster, account, "list", "namespaces")
            assert not can_i(cluster, account, "create", "validatingwebhookconfigurations")
            kubeconfig = install.service_account_kubeconfig(
                cluster.kubeconfig, release_namespace, "paraserve",
                tmp_path / "operator.kubeconfig", env=cluster.env,
            )  # fmt: skip
            log = tmp_path / "operator.log"
            with (
                loopback_pool(cluster, "1 x 8 x A100-80GB") as selector,
                install.local_operator(
                    kubeconfig, log, lease_namespace=release_namespace,
                    extra=[f"--namespace={workload}", "--webhook=off"],
                ) as operator,
            ):  # fmt: skip

                def log_tail() -> str:
                    return "\n".join(log.read_text(errors="replace").splitlines()[-30:])

                impossible = example(EXAMPLES / "review-pp8-tp2-sp2.yaml", selector)
                fitting = example(EXAMPLES / "review-pp4-tp2-sp2.yaml", selector)
                cluster.apply(impossible, fitting, namespace=workload)

                def settled() -> bool:
                    assert operator.poll() is None, log_tail()
                    items = cluster.get("infd", namespace=workload)["items"]
                    phases = {
                        d["metadata"]["name"]: d.get("status", {}).get("phase") for d in items
                    }
                    pods = pods_of(cluster, workload, fitting["metadata"]["name"])
                    return (
                        phases.get(impossible["metadata"]["name"]) == "Rejected"
                        and phases.get(fitting["metadata"]["name"]) in ("Running", "Ready")
                        and len(pods) == 8
                    )

                try:
                    cluster.wait_for(settled, timeout=120, what="Rejected and Running")
                except TimeoutError as error:
                    raise AssertionError(log_tail()) from error
                rejected = cluster.get("infd", impossible["metadata"]["name"], namespace=workload)
                validated = next(
                    c for c in rejected["status"]["conditions"] if c["type"] == "Validated"
                )
                assert "PP=8 × TP=2 = 16 GPUs required" in validated["message"], validated
            text = log.read_text(errors="replace")
            for refusal in ("HTTP 403", "Forbidden", "is forbidden"):
                assert refusal not in text, text[-3000:]
        finally:
            cluster.helm("uninstall", "paraserve", "--namespace", release_namespace, check=False)
            cluster.kubectl("delete", "namespace", release_namespace, "--wait=false")
