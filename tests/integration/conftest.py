"""Integration tests run against the local control plane from e2e/cluster (no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.cluster.fixtures import cluster
from operator_fixtures import inference_crd, operator

__all__ = ["cluster", "inference_crd", "operator"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)
