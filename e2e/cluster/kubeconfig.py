"""Write self-contained kubeconfig files for the local cluster."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from e2e.cluster.pki import Pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    pki: Pki,
    context: str = "paraserve-e2e",
    client: tuple[Path, Path] | None = None,
    user: str = "admin",
) -> Path:
    """A kubeconfig with its certificates embedded, so it still works when copied.

    The admin's by default; `client` is another (certificate, key) pair, e.g. one user per
    operator process so the audit log tells their requests apart.
    """
    cert, key = client or (pki.admin_cert, pki.admin_key)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(cert),
                    "client-key-data": _b64(key),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
