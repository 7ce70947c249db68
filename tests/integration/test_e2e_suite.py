"""The end-to-end suite (e2e/tests) in `local` mode, as part of the integration run.

It brings up its own local control plane, installs the chart and runs the operator as the
chart's ServiceAccount, so it runs as a child pytest: nothing it does touches the session's
cluster, and `make e2e` runs exactly the same thing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(1500)


def test_end_to_end_suite_passes_on_the_local_control_plane(tmp_path: Path) -> None:
    env = {**os.environ, "PARASERVE_E2E_CLUSTER": "local", "PYTHONUNBUFFERED": "1"}
    env.pop("KUBECONFIG", None)
    command = [
        sys.executable, "-m", "pytest", "e2e/tests", "-q", "-p", "no:cacheprovider",
        f"--basetemp={tmp_path / 'e2e'}", "--timeout=900",
    ]  # fmt: skip
    child = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = child.communicate(timeout=1400)
    finally:
        if child.poll() is None:  # SIGTERM lets the child stop its control plane in order
            child.send_signal(signal.SIGTERM)
            try:
                child.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                child.kill()
    result = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
    summary = result.stdout.strip().splitlines()[-1:] if result.stdout.strip() else []
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]
    assert summary and " passed" in summary[0] and "failed" not in summary[0], summary
