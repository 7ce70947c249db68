"""model.architectureFrom on the local control plane: a ConfigMap made with `kubectl create
configmap … --from-file=config.json`, read by the operator and by its webhook.

One operator with `--webhook self-managed` (URL mode) serves one namespace and a pool of
1 node × 8 A100-80GB. Its resync is 10 minutes, so every re-plan seen here comes from a watch
event. The tests run in file order.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.local import LocalCluster
from operator_fixtures import OperatorProcess, dump, env_of, infd, inference_crd, pods_of, wait

__all__ = ["inference_crd"]

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "examples" / "configs"
CONFIGURATION = "paraserve.dev"
WEBHOOK = "validate-spec.inferencedeployments.paraserve.dev"
POOL = "archfrom-a100"
#: Far longer than any wait below: a re-plan seen here was queued by a watch event.
RESYNC_SECONDS = "600"
BROKEN = '{"model_type": "llama", "hidden_size": 4096,'
LLAMA_70B_ARITHMETIC = (
    "MemoryLimitExceeded: worst rank (stage 0): 141.11 GB weights + 5.37 GB KV cache"
    " + 2.75 GB activations + 1.07 GB overhead = 150.3 GB; 150.3 GB / 80 GB = 187.9 %"
    " > 85 % maxMemoryUtilization"
)


@dataclass
class Setup:
    cluster: LocalCluster
    namespace: str
    operator: OperatorProcess
    files: Path

    def kubectl(self, *args: str, input: str | None = None) -> Any:
        return self.cluster.kubectl(*args, "-n", self.namespace, check=False, input=input)

    def apply(self, body: dict[str, Any]) -> Any:
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))

    def config_json(self, model: str, text: str | None = None) -> Path:
        """A file named config.json, as a user has it: a shipped config (or this text)."""
        folder = self.files / f"{model}-{time.monotonic_ns()}"
        folder.mkdir()
        path = folder / "config.json"
        if text is None:
            shutil.copy(CONFIGS / f"{model}.json", path)
        else:
            path.write_text(text)
        return path

    def create_config_map(self, name: str, model: str, text: str | None = None) -> None:
        """`kubectl create configmap NAME --from-file=config.json`: all a user does."""
        path = self.config_json(model, text)
        created = self.kubectl("create", "configmap", name, f"--from-file={path}")
        assert created.returncode == 0, created.stderr

    def replace_config_map(self, name: str, model: str, text: str | None = None) -> None:
        """The same ConfigMap with another config.json (create --dry-run | replace)."""
        path = self.config_json(model, text)
        rendered = self.kubectl(
            "create", "configmap", name, f"--from-file={path}", "--dry-run=client", "-o", "yaml"
        )
        replaced = self.kubectl("replace", "-f", "-", input=rendered.stdout)
        assert replaced.returncode == 0, replaced.stderr

    def status(self, name: str) -> dict[str, Any]:
        return infd(self.cluster, self.namespace, name).get("status") or {}


def deployment(name: str, config_map: str, tensor: int = 1) -> dict[str, Any]:
    """Llama 3.1 at PP=1 × TP=`tensor`, its architecture in ConfigMap `config_map`."""
    return {
        "apiVersion": "paraserve.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "meta-llama/Llama-3.1",
                "architectureFrom": {"configMapKeyRef": {"name": config_map}},
            },
            "parallelism": {"pipeline": 1, "tensor": tensor},
            "serving": {"maxBatchSize": 4, "maxSequenceLength": 4096},
            "gpu": {"memory": "80G"},
            "placement": {"nodeSelector": {"paraserve.dev/pool": POOL}},
        },
    }


def validated(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == "Validated")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def setup(
    cluster: LocalCluster, inference_crd: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    with cluster.namespace() as namespace, cluster.gpu_pool("1 x 8 x A100-80GB", name=POOL):
        operator = OperatorProcess(
            cluster,
            tmp_path_factory.mktemp("archfrom-operator"),
            "--namespace",
            namespace,
            "--leader-election-id",
            "paraserve-archfrom-tests",
            "--identity",
            "archfrom-tests",
            "--log-format",
            "plain",
            "--resync",
            RESYNC_SECONDS,
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
        state = Setup(cluster, namespace, operator, tmp_path_factory.mktemp("configs"))
        try:
            operator.wait_healthy()
            # The webhook is up and knows the pool once it refuses 16 GPUs on 8.
            probe = deployment("probe", "none")
            probe["spec"]["model"] = {"name": "m", "parameters": "7B"}
            probe["spec"]["parallelism"] = {"pipeline": 16, "tensor": 1}
            text = yaml.safe_dump(probe)

            def refusing() -> bool:
                assert operator.alive(), operator.log_tail()
                attempt = state.kubectl("apply", "--dry-run=server", "-f", "-", input=text)
                return attempt.returncode != 0 and "InsufficientGPUs" in attempt.stderr

            cluster.wait_for(refusing, timeout=90, what="the webhook refusing 16 GPUs")
            yield state
        finally:
            operator.stop()
            cluster.kubectl(
                "delete", "validatingwebhookconfiguration", CONFIGURATION, "--ignore-not-found"
            )


def test_a_deployment_waits_for_its_config_map_then_is_planned_exactly(setup: Setup) -> None:
    applied = setup.apply(deployment("llama", "llama"))
    print(f"$ kubectl apply -f llama.yaml   # architectureFrom: llama, no such ConfigMap yet\n"
          f"{applied.stderr}{applied.stdout}")  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert "Warning: ConfigMapNotFound: model.architectureFrom: ConfigMap 'llama' not found" in (
        applied.stderr
    )
    wait(setup.cluster, lambda: setup.status("llama").get("phase") == "Waiting", "llama Waiting")
    waiting = setup.status("llama")
    assert validated(waiting)["reason"] == "ConfigMapNotFound"
    assert "plan" not in waiting and not pods_of(setup.cluster, setup.namespace, "llama")

    started = time.monotonic()
    setup.create_config_map("llama", "llama-3.1-8b")

    def planned() -> dict[str, Any] | None:
        status = setup.status("llama")
        return status if status.get("phase") in ("Running", "Ready") else None

    try:
        status = wait(setup.cluster, planned, "llama Running", timeout=60)
    except TimeoutError as error:
        raise AssertionError(dump(setup.cluster, setup.namespace)) from error
    print(f"ConfigMap created → Running in {time.monotonic() - started:.1f} s")
    plan = status["plan"]
    assert plan["mode"] == "exact"
    assert plan["memory"]["weightsBytes"] == 16_060_522_496  # 8.03B parameters × 2 B
    assert plan["stages"] == [{"index": 0, "layers": [0, 32], "firstRank": 0, "lastRank": 0}]
    assert "worst rank uses 25.9 % of its GPU" in validated(status)["message"]
    print(setup.kubectl("get", "infd", "llama").stdout)
    (pod,) = pods_of(setup.cluster, setup.namespace, "llama")
    assert env_of(pod)["PARASERVE_STAGE_LAYERS"] == "0:32"


def test_the_webhook_refuses_an_impossible_one_with_the_arithmetic(setup: Setup) -> None:
    setup.create_config_map("llama-70b", "llama-3.1-70b")
    refused = setup.apply(deployment("llama-70b", "llama-70b"))
    print(f"$ kubectl apply -f llama-70b.yaml   # Llama 3.1 70B at TP=1 on 80 GB\n{refused.stderr}")
    assert refused.returncode != 0
    assert f'admission webhook "{WEBHOOK}" denied the request' in refused.stderr
    assert LLAMA_70B_ARITHMETIC in refused.stderr
    assert setup.kubectl("get", "infd", "llama-70b").returncode != 0  # nothing stored

    # A ConfigMap that exists but holds no config.json the parser reads: refused too.
    setup.create_config_map("broken", "broken", BROKEN)
    refused = setup.apply(deployment("broken", "broken"))
    print(f"$ kubectl apply -f broken.yaml\n{refused.stderr}")
    assert refused.returncode != 0
    assert (
        "InvalidModelConfig: model.architectureFrom: ConfigMap 'broken' key 'config.json':"
        " not JSON: Expecting property name enclosed in double quotes at line 1"
    ) in refused.stderr


def test_a_changed_config_map_is_re_planned(setup: Setup) -> None:
    setup.create_config_map("replan", "llama-3.1-8b")
    applied = setup.apply(deployment("replan", "replan", tensor=4))
    assert applied.returncode == 0 and "Warning" not in applied.stderr, applied.stderr

    def serving(weights: int, layers: str) -> list[dict[str, Any]] | None:
        status = setup.status("replan")
        pods = pods_of(setup.cluster, setup.namespace, "replan")
        ok = (
            status.get("phase") in ("Running", "Ready")
            and (status.get("plan") or {}).get("memory", {}).get("weightsBytes") == weights
            and len(pods) == 4
            and all(p["status"].get("phase") == "Running" for p in pods)
            and all(not p["metadata"].get("deletionTimestamp") for p in pods)
            and all(env_of(p)["PARASERVE_STAGE_LAYERS"] == layers for p in pods)
        )
        return pods if ok else None

    try:
        first = wait(setup.cluster, lambda: serving(4_015_529_984, "0:32"), "8B at TP=4")
        # Llama 3.1 70B in the same ConfigMap: re-planned (70.55B × 2 B / 4), ranks re-created.
        started = time.monotonic()
        setup.replace_config_map("replan", "llama-3.1-70b")
        second = wait(
            setup.cluster, lambda: serving(35_278_831_616, "0:80"), "70B at TP=4", timeout=90
        )
    except TimeoutError as error:
        raise AssertionError(dump(setup.cluster, setup.namespace)) from error
    took = time.monotonic() - started
    print(f"ConfigMap replaced (8B → 70B) → re-planned, 4 ranks re-created in {took:.1f} s")
    assert took < float(RESYNC_SECONDS) / 4
    hash_label = "paraserve.dev/template-hash"
    assert {p["metadata"]["labels"][hash_label] for p in first}.isdisjoint(
        p["metadata"]["labels"][hash_label] for p in second
    )
    status = setup.status("replan")
    assert status["plan"]["mode"] == "exact" and status["plan"]["stages"][0]["layers"] == [0, 80]
    print(setup.kubectl("get", "infd", "replan").stdout)

    # A broken config.json: Validated=False with one line; the running ranks keep serving.
    setup.replace_config_map("replan", "broken", BROKEN)

    def rejected() -> dict[str, Any] | None:
        status = setup.status("replan")
        return status if validated(status).get("reason") == "InvalidModelConfig" else None

    status = wait(setup.cluster, rejected, "replan Validated=False InvalidModelConfig", timeout=30)
    print(f"broken config.json: {validated(status)['reason']}: {validated(status)['message']}")
    assert validated(status)["message"].startswith(
        "model.architectureFrom: ConfigMap 'replan' key 'config.json': not JSON: "
    )
    assert {p["metadata"]["uid"] for p in pods_of(setup.cluster, setup.namespace, "replan")} == {
        p["metadata"]["uid"] for p in second
    }
    assert status["phase"] in ("Running", "Ready")

    # The ConfigMap deleted: the deployment says so; still nothing is torn down.
    assert setup.kubectl("delete", "configmap", "replan").returncode == 0

    def missing() -> dict[str, Any] | None:
        status = setup.status("replan")
        return status if validated(status).get("reason") == "ConfigMapNotFound" else None

    wait(setup.cluster, missing, "replan Validated=False ConfigMapNotFound", timeout=30)
    assert len(pods_of(setup.cluster, setup.namespace, "replan")) == 4
