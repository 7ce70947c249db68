"""The Helm chart as `helm lint` and `helm template` see it: what manifests/ installs, and more.

helm comes from the local cluster's build (`python -m e2e.cluster build`, which `make test`
runs first); these tests fail, not skip, without it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
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
    helm_template_error,
    operator_container,
    rbac_grants,
)

from paraserve.api import DEFAULT_WORKER_IMAGE
from paraserve.controller.admission import options as webhook_options
from paraserve.controller.admission import server as webhook_server
from paraserve.controller.admission.options import WebhookOptions
from paraserve.controller.running import operator_flags

# Every value the chart has, switched away from its default at once.
EVERYTHING_ON: dict[str, Any] = {
    "replicaCount": 2,
    "watchNamespaces": ["team-a", "team-b"],
    "metrics.serviceMonitor.enabled": True,
    "metrics.serviceMonitor.labels": {"release": "prometheus"},
    "webhook.enabled": True,
    "webhook.certManager.enabled": True,
    "image.digest": "sha256:" + "a" * 64,
    "operator.verbose": True,
    "operator.extraArgs": ["--workers=8"],
    "podAnnotations": {"example.com/team": "ml"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
}


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return helm_template()


def parse_operator_args(args: list[str]) -> argparse.Namespace:
    """The chart's args through `paraserve operator`'s own parser: every flag must exist."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    operator_flags.add_arguments(parser)
    try:
        parsed, unknown = parser.parse_known_args(args)
    except SystemExit as exit_:  # argparse exits on a bad value even with exit_on_error=False
        raise AssertionError(f"paraserve operator rejects {args}") from exit_
    assert not unknown, f"flags `paraserve operator` does not have: {unknown}"
    return parsed


def test_chart_crd_is_the_generated_crd() -> None:
    # The chart carries a copy (Helm installs only its own crds/); `make crd` writes both.
    assert install.CHART_CRD.read_text() == install.CRD.read_text(), (
        "charts/paraserve/crds/ differs from crds/: run `make crd`"
    )


@pytest.mark.needs("helm")
@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    result = subprocess.run(
        [
            str(install.tool("helm")),
            "lint",
            "--strict",
            str(install.CHART),
            *install.set_flags(values),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.needs("helm")
def test_default_install_objects(default: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default)
    assert kinds == [
        ("ClusterRole", "paraserve"),
        ("ClusterRole", "paraserve-edit"),
        ("ClusterRole", "paraserve-view"),
        ("ClusterRole", "paraserve-workloads"),
        ("ClusterRoleBinding", "paraserve"),
        ("ClusterRoleBinding", "paraserve-workloads"),
        ("Deployment", "paraserve"),
        ("Role", "paraserve-leader-election"),
        ("RoleBinding", "paraserve-leader-election"),
        ("Service", "paraserve-metrics"),
        ("Service", "paraserve-webhook"),
        ("ServiceAccount", "paraserve"),
    ]
    for obj in default:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "paraserve"


@pytest.mark.needs("helm")
def test_crd_is_installed_from_the_chart_crds_directory() -> None:
    objects = helm_template(include_crds=True)
    crd = find(objects, "CustomResourceDefinition", "inferencedeployments.paraserve.dev")
    assert crd == yaml.safe_load(install.CHART_CRD.read_text())


@pytest.mark.needs("helm")
def test_operator_pod_meets_the_restricted_pod_security_standard(
    default: list[dict[str, Any]],
) -> None:
    pod = find(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True
    container = operator_container(default)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # A read-only root needs a writable /tmp.
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume


@pytest.mark.needs("helm")
def test_operator_container_probes_resources_and_flags(default: list[dict[str, Any]]) -> None:
    container = operator_container(default)
    assert container["image"] == "ghcr.io/paraserve/operator:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 8000, "webhook": 9443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert container["resources"]["limits"] == {"memory": "512Mi"}
    args = parse_operator_args(container["args"])
    assert args.health_port == 8080 and args.metrics_port == 8000
    assert args.leader_elect is True and args.leader_election_id == "paraserve-operator"
    assert args.namespaces == []  # all namespaces
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The chart leaves the rank image to the operator, whose default is this release's worker.
    assert "PARASERVE_WORKER_IMAGE" not in env
    assert args.worker_image == DEFAULT_WORKER_IMAGE == "ghcr.io/paraserve/worker:0.1.0"


@pytest.mark.needs("helm")
def test_rbac_is_exactly_what_the_operator_uses(default: list[dict[str, Any]]) -> None:
    assert rbac_grants(default) == (
        expand("cluster", NAMESPACED_GRANTS)
        | expand("cluster", CLUSTER_GRANTS)
        | expand("cluster", WEBHOOK_GRANTS)
        | expand(NAMESPACE, LEADER_ELECTION_GRANTS)
    )
    no_webhook = helm_template({"webhook.enabled": False})
    assert rbac_grants(no_webhook) == (
        expand("cluster", NAMESPACED_GRANTS)
        | expand("cluster", CLUSTER_GRANTS)
        | expand(NAMESPACE, LEADER_ELECTION_GRANTS)
    )


@pytest.mark.needs("helm")
@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_rbac_has_no_wildcards_and_no_escalation(values: dict[str, Any]) -> None:
    for obj in helm_template(values):
        if obj["kind"] in ("Role", "ClusterRole"):
            for rule in obj["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), (obj["metadata"]["name"], rule)
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
                assert "secrets" not in rule["resources"], rule
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert obj["roleRef"]["name"] not in ("cluster-admin", "admin", "edit"), obj


@pytest.mark.needs("helm")
def test_watch_namespaces_bind_namespaced_permissions_only_there() -> None:
    objects = helm_template({"watchNamespaces": ["team-a", "team-b"]})
    grants = rbac_grants(objects)
    assert grants == (
        expand("team-a", NAMESPACED_GRANTS)
        | expand("team-b", NAMESPACED_GRANTS)
        | expand("cluster", CLUSTER_GRANTS)
        | expand("cluster", (("/namespaces", "*", ("list", "watch")),))
        | expand("cluster", WEBHOOK_GRANTS)
        | expand(NAMESPACE, LEADER_ELECTION_GRANTS)
    )
    args = parse_operator_args(operator_container(objects)["args"])
    assert args.namespaces == ["team-a", "team-b"]


@pytest.mark.needs("helm")
def test_replicas_and_leader_election() -> None:
    objects = helm_template(
        {"replicaCount": 3, "leaderElection": {"enabled": True, "leaseName": "ps-lease"}}
    )
    assert find(objects, "Deployment")["spec"]["replicas"] == 3
    args = parse_operator_args(operator_container(objects)["args"])
    assert args.leader_elect is True and args.leader_election_id == "ps-lease"
    role = find(objects, "Role")
    assert {"resourceNames": ["ps-lease"]}.items() <= role["rules"][1].items()

    alone = helm_template({"leaderElection.enabled": False})
    assert parse_operator_args(operator_container(alone)["args"]).leader_elect is False
    assert not [o for o in alone if o["kind"] in ("Role", "RoleBinding")]
    assert not any("leases" in grant[1] for grant in rbac_grants(alone))

    error = helm_template_error({"replicaCount": 2, "leaderElection.enabled": False})
    assert "needs leaderElection.enabled" in error


@pytest.mark.needs("helm")
def test_image_options() -> None:
    digest = "sha256:" + "b" * 64
    pinned = helm_template({"image.digest": digest, "image.pullPolicy": "Always"})
    container = operator_container(pinned)
    assert container["image"] == f"ghcr.io/paraserve/operator@{digest}"
    assert container["imagePullPolicy"] == "Always"
    tagged = helm_template(
        {
            "image.repository": "registry.example/ps",
            "image.tag": "dev",
            "workerImage.repository": "ghcr.io/paraserve/worker",
            "workerImage.tag": "dev",
        }
    )
    container = operator_container(tagged)
    assert container["image"] == "registry.example/ps:dev"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PARASERVE_WORKER_IMAGE"] == "ghcr.io/paraserve/worker:dev"


@pytest.mark.needs("helm")
def test_resources_are_configurable() -> None:
    resources = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    container = operator_container(helm_template({"resources": resources}))
    assert container["resources"] == resources


@pytest.mark.needs("helm")
def test_metrics_service_and_optional_service_monitor(default: list[dict[str, Any]]) -> None:
    service = find(default, "Service", "paraserve-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = find(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not [o for o in default if o["kind"] == "ServiceMonitor"]

    monitored = helm_template(
        {"metrics.serviceMonitor.enabled": True, "metrics.serviceMonitor.labels": {"r": "p"}}
    )
    monitor = find(monitored, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["r"] == "p"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )

    off = helm_template({"metrics.enabled": False})
    assert not [
        o for o in off if "metrics" in o["metadata"]["name"] or o["kind"] == "ServiceMonitor"
    ]
    assert parse_operator_args(operator_container(off)["args"]).metrics_port == 0


@pytest.mark.needs("helm")
def test_webhook_can_be_turned_off() -> None:
    objects = helm_template({"webhook.enabled": False})
    assert not [o for o in objects if "webhook" in o["metadata"]["name"]]
    container = operator_container(objects)
    assert parse_operator_args(container["args"]).webhook == webhook_options.OFF
    assert "webhook" not in {p["name"] for p in container["ports"]}


@pytest.mark.needs("helm")
def test_self_managed_webhook_registers_itself() -> None:
    objects = helm_template({"webhook.enabled": True})
    service = find(objects, "Service", "paraserve-webhook")
    assert service["spec"]["ports"][0] == {
        "name": "webhook",
        "port": 443,
        "targetPort": "webhook",
        "protocol": "TCP",
    }
    # The operator writes the configuration (with the CA it made), so the chart does not.
    assert not [o for o in objects if o["kind"] == "ValidatingWebhookConfiguration"]
    assert not [o for o in objects if o["kind"] in ("Certificate", "Issuer")]
    container = operator_container(objects)
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    args = parse_operator_args(container["args"])
    options = webhook_options.from_args(args)
    assert options is not None and options.manages_configuration
    assert options.service == (NAMESPACE, "paraserve-webhook") and options.port == 9443
    vwc = "admissionregistration.k8s.io/validatingwebhookconfigurations"
    assert {g for g in rbac_grants(objects) if g[1] == vwc} == {
        ("cluster", vwc, "*", "create"),
        ("cluster", vwc, webhook_server.CONFIGURATION_NAME, "patch"),
    }


@pytest.mark.needs("helm")
def test_cert_manager_webhook_configuration_and_certificate(tmp_path: Path) -> None:
    objects = helm_template(
        {"webhook.enabled": True, "webhook.certManager.enabled": True, "watchNamespaces": ["a"]}
    )
    configuration = find(objects, "ValidatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == webhook_server.CONFIGURATION_NAME
    annotations = configuration["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/paraserve-webhook"
    (webhook,) = configuration["webhooks"]
    # The same webhook the operator registers when it manages the configuration itself.
    served = webhook_server.client_config_for(
        {"url": "https://unused"}, WebhookOptions(service=(NAMESPACE, "paraserve-webhook"))
    )
    expected = webhook_server.validating_configuration(served, ["a"])["webhooks"][0]
    assert webhook == expected
    certificate = find(objects, "Certificate")
    assert "paraserve-webhook.paraserve-system.svc" in certificate["spec"]["dnsNames"]
    assert find(objects, "Issuer")["spec"] == {"selfSigned": {}}
    assert not any("webhookconfigurations" in g[1] for g in rbac_grants(objects))
    container = operator_container(objects)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-certs")
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-certs")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    args = parse_operator_args(container["args"])
    assert args.webhook == webhook_options.EXTERNAL
    assert args.webhook_cert_dir == mount["mountPath"]
    # The Secret's files are the ones the operator reads.
    for name in (webhook_options.CERT_FILE, webhook_options.KEY_FILE):
        (tmp_path / name).write_text("x")
    args.webhook_cert_dir = str(tmp_path)
    assert webhook_options.from_args(args) is not None


@pytest.mark.needs("helm")
@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"webhook.failurePolicy": "Sometimes"}, "/webhook/failurePolicy"),
        ({"image.pullPolicy": "Sometimes"}, "/image/pullPolicy"),
        ({"image.digest": "latest"}, "/image/digest"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"operator.workers": 0}, "/operator/workers"),
        ({"operator.logFormat": "xml"}, "/operator/logFormat"),
        ({"metrics.serviceMonitor.interval": "soon"}, "/metrics/serviceMonitor/interval"),
        ({"typo": True}, "typo"),
        ({"workerImage.tag": "dev"}, "workerImage.tag needs workerImage.repository"),
    ],
)
def test_values_schema_rejects_bad_values(values: dict[str, Any], complaint: str) -> None:
    assert complaint in helm_template_error(values)


def test_values_schema_is_valid_json_and_covers_every_value() -> None:
    schema = json.loads((install.CHART / "values.schema.json").read_text())
    values = yaml.safe_load((install.CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
    assert schema["additionalProperties"] is False
