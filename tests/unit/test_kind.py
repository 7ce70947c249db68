"""The kind cluster of the end-to-end suite, its node image and the scripts that drive it.

`make e2e-kind` runs all of it for real (docs/kind.md); these check, without Docker, what keeps
it consistent: the cluster's GPU workers, the pins of the node image's Go modules, the images
built from the product's own Dockerfiles. shellcheck lints the scripts (`make lint`).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from e2e.cluster.components import KUBERNETES_VERSION
from e2e.kind import components

from paraserve.api.constants import WORKER_IMAGE_REPOSITORY

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "e2e" / "kind"
GFD_LABELS = ("nvidia.com/gpu.present", "nvidia.com/gpu.product", "nvidia.com/gpu.memory")


def test_cluster_is_a_control_plane_and_two_gpu_pool_workers() -> None:
    config = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    for worker in config["nodes"][1:]:
        labels = worker["labels"]
        assert labels["paraserve.dev/pool"] == "e2e"
        # The device plugin stand-in advertises as many GPUs as this label says.
        assert labels["nvidia.com/gpu.count"] == "4"
        for label in GFD_LABELS:
            assert label in labels, label
    # kindnet is not to be had: the node image's pod network service replaces it.
    assert config["networking"]["disableDefaultCNI"] is True
    patches = [yaml.safe_load(p) for p in config["kubeadmConfigPatches"]]
    assert {"kind": "KubeletConfiguration", "failCgroupV1": False} in patches


def test_node_components_match_the_local_control_plane() -> None:
    assert components.NODE.version == KUBERNETES_VERSION
    assert components.FAKEGPU.version == "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    for component in components.COMPONENTS:
        go_mod = (component.module_dir / "go.mod").read_text()
        assert f"module {component.wrapper_module}\n" in go_mod, component.name
        required = re.search(
            rf"^\s*(?:require\s+)?{re.escape(component.module)} (\S+)", go_mod, re.M
        )
        assert required and required.group(1) == component.version, component.name
        assert (component.module_dir / "go.sum").is_file(), component.name


def test_node_image_carries_the_fake_gpu_plugin_and_the_pod_network() -> None:
    dockerfile = (KIND / "node" / "Dockerfile").read_text()
    for unit in ("paraserve-cni.service", "paraserve-fakegpu.service", "kubelet.service"):
        assert unit in dockerfile, unit
        if unit.startswith("paraserve"):
            assert (KIND / "node" / "files" / "etc" / "systemd" / "system" / unit).is_file()
    plugin = (components.FAKEGPU.module_dir / "main.go").read_text()
    assert '"nvidia.com/gpu"' in plugin and '"nvidia.com/gpu.count"' in plugin


def test_images_build_from_the_products_dockerfiles_on_a_base_argument() -> None:
    images = (KIND / "images.sh").read_text()
    built = re.findall(r'^build_image "\$\{\w+\}" (\S+)', images, re.M)
    assert built == ["operator/Dockerfile", "images/worker.Dockerfile"]
    for dockerfile in built:
        text = (ROOT / dockerfile).read_text()
        # The default stays the public image users pull; the local base is only passed.
        assert "ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm" in text, dockerfile
    lib = (KIND / "lib.sh").read_text()
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


def test_up_runs_the_shared_suite_in_kind_mode_under_one_lock() -> None:
    up = (KIND / "up.sh").read_text()
    assert "PARASERVE_E2E_CLUSTER=kind python -m pytest e2e/tests" in up
    e2e = (KIND / "e2e.sh").read_text()
    assert "flock" in e2e and 'up.sh"' in e2e and 'down.sh"' in e2e
    for script in ("up.sh", "down.sh", "e2e.sh", "engine.sh", "images.sh", "if-warm.sh"):
        assert (KIND / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_make_test_says_why_when_it_skips_kind() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\be2e-kind-if-warm\b", makefile, re.M)
    skip_lines = re.findall(r'echo "kind e2e: skipped[^"]*"', (KIND / "if-warm.sh").read_text())
    assert len(skip_lines) >= 3, skip_lines


def test_every_kind_function_the_scripts_call_is_defined() -> None:
    lib = (KIND / "lib.sh").read_text()
    defined = set(re.findall(r"^(kind_\w+)\(\)", lib, re.M))
    for script in [*KIND.glob("*.sh"), ROOT / "examples" / "demo.sh"]:
        called = set(re.findall(r"\b(kind_[a-z_]+)\b", script.read_text()))
        assert called <= defined, f"{script.name} calls {sorted(called - defined)}"
