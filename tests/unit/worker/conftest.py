"""The worker's tests need torch (the `worker` extra); without it each module shows as skipped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _has_torch() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # ValueError: torch blocked in sys.modules
        return False


HAS_TORCH = _has_torch()


class _NeedsTorch(pytest.Module):
    """A test module not imported (its imports need torch), reported as one skip."""

    def collect(self) -> list[pytest.Item]:
        pytest.skip(
            "torch is not installed: pip install -e '.[worker]' (the worker's extra)",
            allow_module_level=True,
        )


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    if HAS_TORCH or not module_path.name.startswith("test_"):
        return None
    return _NeedsTorch.from_parent(parent, path=module_path)


def pytest_configure(config: pytest.Config) -> None:
    # torch warns on import when numpy is absent; the worker does not use numpy.
    config.addinivalue_line("filterwarnings", "ignore:Failed to initialize NumPy")
