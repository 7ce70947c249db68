"""manifests/ as `kubectl kustomize` builds it: the same product as the chart's defaults.

kubectl comes from the local cluster's build (`python -m e2e.cluster build`); these tests fail,
not skip, without it.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from e2e import install
from e2e.install import (
    CLUSTER_GRANTS,
    LEADER_ELECTION_GRANTS,
    NAMESPACE,
    NAMESPACED_GRANTS,
    WEBHOOK_GRANTS,
    expand,
    find,
    helm_template,
    kustomize_build,
    operator_container,
    rbac_grants,
)
from test_chart import parse_operator_args

from paraserve.controller.admission import options as webhook_options
from paraserve.controller.admission import server as webhook_server
from paraserve.controller.admission.options import WebhookOptions


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return kustomize_build()


@pytest.mark.needs("kubectl")
def test_objects(manifests: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in manifests)
    assert kinds == [
        ("ClusterRole", "paraserve-edit"),
        ("ClusterRole", "paraserve-operator"),
        ("ClusterRole", "paraserve-operator-workloads"),
        ("ClusterRole", "paraserve-view"),
        ("ClusterRoleBinding", "paraserve-operator"),
        ("ClusterRoleBinding", "paraserve-operator-workloads"),
        ("CustomResourceDefinition", "inferencedeployments.paraserve.dev"),
        ("Deployment", "paraserve-operator"),
        ("Namespace", NAMESPACE),
        ("Role", "paraserve-operator-leader-election"),
        ("RoleBinding", "paraserve-operator-leader-election"),
        ("Service", "paraserve-operator-metrics"),
        ("Service", "paraserve-operator-webhook"),
        ("ServiceAccount", "paraserve-operator"),
    ]


@pytest.mark.needs("kubectl")
def test_crd_is_the_generated_one(manifests: list[dict[str, Any]]) -> None:
    crd = find(manifests, "CustomResourceDefinition")
    assert crd == yaml.safe_load(install.CRD.read_text())


@pytest.mark.needs("kubectl")
def test_namespace_enforces_restricted_pod_security(manifests: list[dict[str, Any]]) -> None:
    labels = find(manifests, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.needs("kubectl")
def test_rbac_is_exactly_what_the_operator_uses(manifests: list[dict[str, Any]]) -> None:
    assert rbac_grants(manifests) == (
        expand("cluster", NAMESPACED_GRANTS)
        | expand("cluster", CLUSTER_GRANTS)
        | expand(NAMESPACE, LEADER_ELECTION_GRANTS)
        | expand("cluster", WEBHOOK_GRANTS)
    )
    for obj in manifests:
        for rule in obj.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), rule


def _without_webhook(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if "webhook" not in o["metadata"]["name"]]


@pytest.mark.needs("helm", "kubectl")
def test_same_operator_as_the_chart(manifests: list[dict[str, Any]]) -> None:
    chart = helm_template({"webhook.enabled": True})
    ours, theirs = operator_container(manifests), operator_container(chart)
    for field in ("securityContext", "livenessProbe", "readinessProbe", "resources", "ports"):
        assert ours[field] == theirs[field], field
    assert ours["image"] == theirs["image"]
    ours_pod = find(manifests, "Deployment")["spec"]["template"]["spec"]
    theirs_pod = find(chart, "Deployment")["spec"]["template"]["spec"]
    assert ours_pod["securityContext"] == theirs_pod["securityContext"]
    assert ours_pod["volumes"] == theirs_pod["volumes"]

    def grants(objects: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
        return {(scope, *rest) for scope, *rest in rbac_grants(objects)}  # type: ignore[misc]

    assert grants(manifests) == grants(chart)

    ours_args = parse_operator_args(ours["args"])
    theirs_args = parse_operator_args(theirs["args"])
    for flag in ("leader_elect", "health_port", "metrics_port", "webhook", "webhook_port"):
        assert getattr(ours_args, flag) == getattr(theirs_args, flag), flag
    ours_options = webhook_options.from_args(ours_args)
    assert ours_options is not None
    assert ours_options.service == (NAMESPACE, "paraserve-operator-webhook")


@pytest.mark.needs("kubectl")
def test_cert_manager_overlay() -> None:
    overlay = install.MANIFESTS / "overlays" / "cert-manager"
    objects = kustomize_build(overlay)
    certificate = find(objects, "Certificate")
    assert "paraserve-operator-webhook.paraserve-system.svc" in certificate["spec"]["dnsNames"]
    configuration = find(objects, "ValidatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/paraserve-operator-webhook"
    )
    (webhook,) = configuration["webhooks"]
    assert webhook["clientConfig"]["service"]["name"] == "paraserve-operator-webhook"
    args = parse_operator_args(operator_container(objects)["args"])
    assert args.webhook == webhook_options.EXTERNAL
    vwc = "admissionregistration.k8s.io/validatingwebhookconfigurations"
    assert not any(g[1] == vwc for g in rbac_grants(objects))
    # The certificate is the mounted Secret's.
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-certs")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    # The same webhook the operator registers itself in self-managed mode.
    served = webhook_server.client_config_for(
        {"url": "https://unused"},
        WebhookOptions(service=(NAMESPACE, "paraserve-operator-webhook")),
    )
    assert webhook == webhook_server.validating_configuration(served)["webhooks"][0]
    # Everything else is the base's.
    base = {(o["kind"], o["metadata"]["name"]) for o in _without_webhook(kustomize_build())}
    assert base <= {(o["kind"], o["metadata"]["name"]) for o in objects}


def test_kubectl_apply_f_crds_reads_only_the_crd() -> None:
    # kubectl apply -f <dir> reads files ending .yaml, .yml or .json; the kustomization that
    # lets manifests/ include the CRD is named so that it is not one of them.
    read = [p for p in install.CRD.parent.iterdir() if p.suffix in (".yaml", ".yml", ".json")]
    assert read == [install.CRD]
    assert [yaml.safe_load(p.read_text())["kind"] for p in read] == ["CustomResourceDefinition"]
    assert (install.CRD.parent / "Kustomization").is_file()
