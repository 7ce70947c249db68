"""paraserve is installed: the CRD, the operator with its Lease, the webhook."""

from __future__ import annotations

from e2e.tests.conftest import Target


def test_crd_is_established(target: Target) -> None:
    crd = target.kube.get("crd", "inferencedeployments.paraserve.dev")
    assert any(
        c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"]
    )
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["infd"] and names["kind"] == "InferenceDeployment"


def test_operator_holds_its_lease(target: Target) -> None:
    kube = target.kube
    deployment = kube.get("deployment", "paraserve", namespace=target.operator_namespace)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "paraserve"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    if target.runs_containers:
        assert deployment["status"].get("readyReplicas", 0) >= 1, deployment["status"]

    def held() -> str:
        lease = kube.items("leases", namespace=target.operator_namespace)
        ours = [item for item in lease if item["metadata"]["name"] == "paraserve-operator"]
        return str(ours[0]["spec"].get("holderIdentity") or "") if ours else ""

    kube.wait_for(held, timeout=60, what="the operator's Lease", explain=target.operator_log_tail)


def test_webhook_is_registered(target: Target) -> None:
    kube = target.kube

    def registered() -> bool:
        result = kube.kubectl("get", "validatingwebhookconfiguration", "paraserve.dev", check=False)
        return result.returncode == 0

    kube.wait_for(
        registered, timeout=90, what="webhook paraserve.dev", explain=target.operator_log_tail
    )
