"""Unit tests: no cluster. The chart and manifest tests render with helm and kubectl, which
`make unit` builds first; without them those tests are skipped, with the reason."""

from __future__ import annotations

import pytest
from e2e import install


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*tools): the test runs helm or kubectl (skipped when not built)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("needs"):
        for tool in marker.args:
            try:
                install.tool(tool)
            except FileNotFoundError:
                pytest.skip(f"{tool} is not built: `make cluster-binaries` (`make unit` does it)")
