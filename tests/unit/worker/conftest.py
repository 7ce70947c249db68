"""The worker's tests need torch (the `worker` extra); without it they are not collected."""

import importlib.util

import pytest

if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    # torch warns on import when numpy is absent; the worker does not use numpy.
    config.addinivalue_line("filterwarnings", "ignore:Failed to initialize NumPy")
