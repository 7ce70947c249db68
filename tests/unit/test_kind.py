"""The kind cluster of the end-to-end suite, and the scripts that drive it (shellcheck lints them).

kind cannot run here; these check what can be checked without Docker.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from paraserve.api.constants import WORKER_IMAGE_REPOSITORY

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "e2e" / "kind"


def test_cluster_is_a_control_plane_and_two_gpu_pool_workers() -> None:
    config = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    for worker in config["nodes"][1:]:
        assert worker["labels"] == {"paraserve.dev/pool": "e2e"}


def test_scripts_build_the_images_the_chart_runs() -> None:
    lib = (KIND / "lib.sh").read_text()
    for dockerfile in re.findall(r'-f "\$\{repo\}/([^"]+)"', lib):
        assert (ROOT / dockerfile).is_file(), dockerfile
    values = yaml.safe_load((ROOT / "charts" / "paraserve" / "values.yaml").read_text())
    assert f'OPERATOR_IMAGE="{values["image"]["repository"]}:' in lib
    # The chart leaves the worker image to the operator; kind builds its own tag of it.
    assert f'WORKER_REPOSITORY="{WORKER_IMAGE_REPOSITORY}"' in lib
    assert 'WORKER_IMAGE="${WORKER_REPOSITORY}:${IMAGE_TAG}"' in lib
    assert '--set "image.tag=${IMAGE_TAG}"' in lib
    assert (
        '--set "workerImage.repository=${WORKER_REPOSITORY}" --set "workerImage.tag=${IMAGE_TAG}"'
        in lib
    )


def test_fake_gpus_look_like_the_device_plugin_and_feature_discovery() -> None:
    lib = (KIND / "lib.sh").read_text()
    assert "--subresource=status" in lib and "nvidia.com/gpu" in lib
    for label in ("nvidia.com/gpu.present", "nvidia.com/gpu.product", "nvidia.com/gpu.memory"):
        assert label in lib, label


def test_up_runs_the_shared_suite_in_kind_mode() -> None:
    up = (KIND / "up.sh").read_text()
    assert "PARASERVE_E2E_CLUSTER=kind python -m pytest e2e/tests" in up
    for script in ("up.sh", "down.sh"):
        assert (KIND / script).stat().st_mode & 0o111, f"{script} is not executable"
