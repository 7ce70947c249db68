"""kopf authenticates with the operator's own client credentials, so --kubeconfig governs both."""

from __future__ import annotations

from pathlib import Path

import yaml

from paraserve.controller.running.cluster_io import load_api_client
from paraserve.controller.running.operator_process import kopf_login


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_login_uses_the_given_kubeconfig_not_the_environment(tmp_path: Path, monkeypatch) -> None:
    elsewhere = write_kubeconfig(tmp_path / "env", "https://127.0.0.1:1", "from-env")
    monkeypatch.setenv("KUBECONFIG", str(elsewhere))
    given = write_kubeconfig(tmp_path / "given", "https://127.0.0.1:6443", "s3cret")

    info = kopf_login(load_api_client(str(given)).configuration)()

    assert info.server == "https://127.0.0.1:6443"
    assert (info.scheme, info.token) == ("Bearer", "s3cret")
