"""The admission webhook on the local control plane: refusals at the prompt, and failing open.

One operator with `--webhook self-managed` in URL mode (the API server runs on this machine and
calls https://127.0.0.1:PORT) serves one namespace and a pool of 1 node × 8 GPUs. The tests run
in file order: the last one stops the operator.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.local import LocalCluster
from operator_fixtures import OperatorProcess, inference_crd

__all__ = ["inference_crd"]

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
IMPOSSIBLE = REPO / "examples" / "review-pp8-tp2-sp2.yaml"  # PP=8 × TP=2 × SP=2: 16 GPUs
FITTING = REPO / "examples" / "review-pp4-tp2-sp2.yaml"  # PP=4 × TP=2 × SP=2: 8 GPUs
CONFIGURATION = "paraserve.dev"
WEBHOOK = "validate-spec.inferencedeployments.paraserve.dev"
ARITHMETIC = 'PP=8 × TP=2 = 16 GPUs required; pool "a100-80g" has 8 allocatable (1 node × 8)'


@dataclass
class Setup:
    cluster: LocalCluster
    namespace: str
    operator: OperatorProcess

    def kubectl(self, *args: str, input: str | None = None) -> Any:
        return self.cluster.kubectl(*args, "-n", self.namespace, check=False, input=input)

    def apply(self, path: Path | None = None, text: str | None = None, *extra: str) -> Any:
        source = str(path) if path is not None else "-"
        return self.kubectl("apply", *extra, "-f", source, input=text)

    def exists(self, name: str) -> bool:
        return self.kubectl("get", "infd", name).returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _manifest(path: Path, name: str, **spec: Any) -> str:
    body = yaml.safe_load(path.read_text())
    body["metadata"]["name"] = name
    body["spec"].update(spec)
    return yaml.safe_dump(body)


@pytest.fixture(scope="module")
def setup(
    cluster: LocalCluster, inference_crd: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    with (
        cluster.namespace() as namespace,
        cluster.gpu_pool("1 x 8 x A100-80GB", name="a100-80g"),
    ):
        operator = OperatorProcess(
            cluster,
            tmp_path_factory.mktemp("webhook-operator"),
            "--namespace",
            namespace,
            # Its own Lease: it never waits for, nor takes over, another test's operator.
            "--leader-election-id",
            "paraserve-webhook-tests",
            "--identity",
            "webhook-tests",
            "--log-format",
            "plain",
            "--webhook",
            "self-managed",
            "--webhook-address",
            "127.0.0.1",
            "--webhook-host",
            "127.0.0.1",
            "--webhook-port",
            str(_free_port()),
        )
        operator.start()
        try:
            operator.wait_healthy()
            state = Setup(cluster, namespace, operator)

            def refusing() -> bool:
                # Admitted (with a warning) until the operator has loaded the node pool.
                assert operator.alive(), operator.log_tail()
                dry_run = state.apply(IMPOSSIBLE, None, "--dry-run=server")
                return dry_run.returncode != 0 and "denied the request" in dry_run.stderr

            cluster.wait_for(refusing, timeout=90, what="the webhook refusing PP=8")
            yield state
        finally:
            operator.stop()
            cluster.kubectl(
                "delete", "validatingwebhookconfiguration", CONFIGURATION, "--ignore-not-found"
            )


def test_the_configuration_registered_fails_open(setup: Setup) -> None:
    configuration = setup.cluster.get("validatingwebhookconfiguration", CONFIGURATION)
    (webhook,) = configuration["webhooks"]
    assert webhook["name"] == WEBHOOK
    assert webhook["failurePolicy"] == "Ignore" and webhook["timeoutSeconds"] == 5
    assert webhook["sideEffects"] == "None" and webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert webhook["rules"][0]["resources"] == ["inferencedeployments"]
    assert webhook["clientConfig"]["url"].startswith("https://127.0.0.1:")
    assert webhook["clientConfig"]["caBundle"]
    selector = webhook["namespaceSelector"]["matchExpressions"][0]
    assert selector["values"] == [setup.namespace]


def test_the_reviews_impossible_strategy_is_refused_at_the_prompt(setup: Setup) -> None:
    result = setup.apply(IMPOSSIBLE)
    print(f"$ kubectl apply -f {IMPOSSIBLE.relative_to(REPO)}\n{result.stderr}")
    assert result.returncode != 0
    assert f'admission webhook "{WEBHOOK}" denied the request' in result.stderr
    assert f"InsufficientGPUs: {ARITHMETIC}" in result.stderr
    assert not setup.exists("review-pp8-tp2-sp2")  # nothing stored
    metrics = setup.operator.get(setup.operator.metrics_port, "/metrics")
    assert (
        'paraserve_operator_admission_reviews_total{code="InsufficientGPUs",result="refused"}'
        in metrics
    )


def test_the_reviews_fitting_strategy_is_admitted(setup: Setup) -> None:
    result = setup.apply(FITTING)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr
    assert setup.exists("review-pp4-tp2-sp2")


def test_waiting_for_free_gpus_is_admitted_with_a_warning(setup: Setup) -> None:
    second = _manifest(FITTING, "second")

    def warned() -> Any:
        # Once the first deployment's 8 ranks hold the node's 8 GPUs.
        dry_run = setup.apply(None, second, "--dry-run=server")
        assert dry_run.returncode == 0, dry_run.stderr
        return "Warning: InsufficientFreeGPUs: " in dry_run.stderr and dry_run

    setup.cluster.wait_for(warned, timeout=120, what="the InsufficientFreeGPUs warning")
    result = setup.apply(None, second)
    print(f"$ kubectl apply -f - (a second PP=4 × TP=2 × SP=2)\n{result.stderr}{result.stdout}")
    assert result.returncode == 0 and "Warning: InsufficientFreeGPUs: " in result.stderr
    assert setup.exists("second")
    assert setup.kubectl("delete", "infd", "second").returncode == 0


def test_spec_mistakes_are_refused_with_the_field_named(setup: Setup) -> None:
    # A misspelt field: the API server's strict field validation names it before any webhook.
    typo = _manifest(FITTING, "typo", parallelism={"pipeline": 4, "tensr": 2})
    result = setup.apply(None, typo)
    assert result.returncode != 0
    assert 'unknown field "spec.parallelism.tensr"' in result.stderr
    # A value the schema cannot judge (a quantity): the webhook names the field and the fix.
    unit = _manifest(FITTING, "unit", gpu={"memory": "80GB"})
    result = setup.apply(None, unit)
    print(f"$ kubectl apply -f - (gpu.memory: 80GB)\n{result.stderr}")
    assert result.returncode != 0
    assert f'admission webhook "{WEBHOOK}" denied the request' in result.stderr
    assert "InvalidSpec: spec.gpu.memory: '80GB': unknown unit 'GB'" in result.stderr
    assert not setup.exists("typo") and not setup.exists("unit")


def test_a_spec_update_is_checked_and_scaling_is_not(setup: Setup) -> None:
    name = "review-pp4-tp2-sp2"
    grow = '{"spec": {"parallelism": {"pipeline": 8}}}'
    result = setup.kubectl("patch", "infd", name, "--type", "merge", "-p", grow)
    assert result.returncode != 0 and ARITHMETIC in result.stderr
    stored = setup.cluster.get("infd", name, namespace=setup.namespace)
    assert stored["spec"]["parallelism"]["pipeline"] == 4
    # /scale is a subresource the webhook does not register: the reconcile alone judges it.
    assert setup.kubectl("scale", "infd", name, "--replicas=2").returncode == 0
    assert setup.kubectl("scale", "infd", name, "--replicas=1").returncode == 0
    # A metadata-only update never reaches the webhook: its match condition keeps it at the API
    # server (the operator's gang annotation is written without a round-trip to itself).
    reviews = _reviews(setup)
    assert setup.kubectl("label", "infd", name, "team=llm").returncode == 0
    assert setup.kubectl("annotate", "infd", name, "note=metadata only").returncode == 0
    assert _reviews(setup) == reviews
    # A spec change still does (a dry run: nothing stored).
    same_size = '{"spec": {"parallelism": {"pipeline": 2}}}'
    patch = ("patch", "infd", name, "--type", "merge", "-p", same_size, "--dry-run=server")
    assert setup.kubectl(*patch).returncode == 0
    assert _reviews(setup) == reviews + 1


def _reviews(setup: Setup) -> float:
    """Admission reviews the operator has answered, whatever their result."""
    metrics = setup.operator.get(setup.operator.metrics_port, "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("paraserve_operator_admission_reviews_total{")
    )


def test_with_the_operator_down_deletes_and_creates_are_not_blocked(setup: Setup) -> None:
    setup.operator.stop()
    # The configuration stays behind, pointing at a closed port: this is failurePolicy at work.
    assert setup.cluster.kubectl("get", "validatingwebhookconfiguration", CONFIGURATION)
    started = time.monotonic()
    deleted = setup.kubectl("delete", "infd", "review-pp4-tp2-sp2", "--timeout=60s")
    assert deleted.returncode == 0, deleted.stderr
    created = setup.apply(IMPOSSIBLE)
    assert created.returncode == 0, created.stderr
    assert time.monotonic() - started < 30
    assert setup.exists("review-pp8-tp2-sp2")  # the reconcile, when back, rejects it
