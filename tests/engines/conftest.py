"""The real engines, installed (or reused) by the tests themselves, and the tiny local model."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e.engines import install, tiny_model

OFFLINE = Path(install.__file__).with_name("vllm_offline.py")


@pytest.fixture(scope="session")
def vllm_env() -> install.EngineEnv:
    return install.install_vllm()


@pytest.fixture(scope="session")
def tiny_llama(vllm_env: install.EngineEnv) -> Path:
    return tiny_model.ensure(install.engines_root(), vllm_env.python)


@pytest.fixture(scope="session")
def run_vllm_offline(
    vllm_env: install.EngineEnv,
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Run cases through vLLM's parser and config in one process (its import takes ~30 s)."""

    def run(cases: list[dict[str, Any]]) -> dict[str, Any]:
        done = subprocess.run(
            [str(vllm_env.python), str(OFFLINE)],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    return run
