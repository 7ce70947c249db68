"""The real engines, installed (or reused) by the tests themselves, and the tiny local model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e.engines import install, tiny_model
from tests.engines.layouts import Runner

OFFLINE = Path(install.__file__).with_name("vllm_offline.py")
SGLANG_OFFLINE = Path(install.__file__).with_name("sglang_offline.py")


def _runner(python: Path, script: Path) -> Runner:
    """Run cases through an engine's own code in one process (its import takes ~15–40 s)."""

    def run(cases: list[dict[str, Any]]) -> dict[str, Any]:
        done = subprocess.run(
            [str(python), str(script)],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    return run


@pytest.fixture(scope="session")
def vllm_env() -> install.EngineEnv:
    return install.install_vllm()


@pytest.fixture(scope="session")
def tiny_llama(vllm_env: install.EngineEnv) -> Path:
    return tiny_model.ensure(install.engines_root(), vllm_env.python)


@pytest.fixture(scope="session")
def run_vllm_offline(vllm_env: install.EngineEnv) -> Runner:
    return _runner(vllm_env.python, OFFLINE)


@pytest.fixture(scope="session")
def sglang_env() -> install.EngineEnv:
    return install.install_sglang()


@pytest.fixture(scope="session")
def run_sglang_offline(sglang_env: install.EngineEnv) -> Runner:
    return _runner(sglang_env.python, SGLANG_OFFLINE)
