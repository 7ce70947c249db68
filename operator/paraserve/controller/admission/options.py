"""The `paraserve operator --webhook…` flags: how the admission webhook is served and registered.

Only the standard library here: the flags are parsed for every `paraserve` command, and kopf
is imported only when the operator runs.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

OFF: Final = "off"
#: Serve, and create/patch the ValidatingWebhookConfiguration (with its caBundle) ourselves.
SELF_MANAGED: Final = "self-managed"
#: Serve only; the configuration is installed by manifests (e.g. cert-manager injects the CA).
EXTERNAL: Final = "external"
MODES: Final = (OFF, SELF_MANAGED, EXTERNAL)

DEFAULT_PORT: Final = 9443
DEFAULT_SERVICE_PORT: Final = 443
#: File names of a kubernetes.io/tls Secret (cert-manager adds ca.crt) mounted as a directory.
CERT_FILE: Final = "tls.crt"
KEY_FILE: Final = "tls.key"
CA_FILE: Final = "ca.crt"


@dataclass(frozen=True)
class WebhookOptions:
    """Where the webhook listens, how the API server reaches it, and which certificate it uses."""

    mode: str = SELF_MANAGED
    address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    #: URL mode: the API server calls https://HOST:PORT/… (e.g. 127.0.0.1 for a local apiserver).
    host: str | None = None
    #: Service mode: (namespace, name) of the Service in front of the operator.
    service: tuple[str, str] | None = None
    service_port: int = DEFAULT_SERVICE_PORT
    #: tls.crt and tls.key (and ca.crt, if any) provided from outside; else a self-signed pair.
    cert_dir: Path | None = None

    @property
    def manages_configuration(self) -> bool:
        return self.mode == SELF_MANAGED

    @property
    def certfile(self) -> Path | None:
        return self.cert_dir / CERT_FILE if self.cert_dir else None

    @property
    def pkeyfile(self) -> Path | None:
        return self.cert_dir / KEY_FILE if self.cert_dir else None

    @property
    def cafile(self) -> Path | None:
        ca = self.cert_dir / CA_FILE if self.cert_dir else None
        return ca if ca is not None and ca.is_file() else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("admission webhook")
    group.add_argument(
        "--webhook",
        choices=MODES,
        default=os.environ.get("PARASERVE_WEBHOOK", OFF),
        help="off; self-managed: serve and register the ValidatingWebhookConfiguration "
        "(with its CA); external: serve only, the configuration comes from manifests "
        "(env PARASERVE_WEBHOOK; default: off)",
    )
    group.add_argument("--webhook-address", default="0.0.0.0", help="listen address")
    group.add_argument("--webhook-port", type=int, default=DEFAULT_PORT, help="listen port")
    group.add_argument(
        "--webhook-host",
        default=None,
        metavar="HOST",
        help="URL mode: the API server calls https://HOST:PORT (e.g. 127.0.0.1)",
    )
    group.add_argument(
        "--webhook-service",
        default=None,
        metavar="NAMESPACE/NAME",
        help="Service mode: the API server calls this Service (e.g. paraserve-system/"
        "paraserve-webhook)",
    )
    group.add_argument("--webhook-service-port", type=int, default=DEFAULT_SERVICE_PORT)
    group.add_argument(
        "--webhook-cert-dir",
        default=None,
        metavar="DIR",
        help="tls.crt, tls.key (and ca.crt) to serve with, e.g. a mounted cert-manager "
        "Secret; default: a self-signed certificate made at start",
    )


def from_args(args: argparse.Namespace) -> WebhookOptions | None:
    """The webhook's options, None when off; ValueError with one line when they do not fit."""
    if args.webhook == OFF:
        return None
    service = _service(args.webhook_service) if args.webhook_service else None
    cert_dir = Path(args.webhook_cert_dir) if args.webhook_cert_dir else None
    for name, port in (
        ("--webhook-port", args.webhook_port),
        ("--webhook-service-port", args.webhook_service_port),
    ):
        if not 1 <= port <= 65535:
            raise ValueError(f"{name} {port}: a port is 1–65535")
    if args.webhook == SELF_MANAGED and (service is None) == (args.webhook_host is None):
        raise ValueError(
            "--webhook self-managed needs exactly one of --webhook-host HOST (URL mode) "
            "and --webhook-service NAMESPACE/NAME (Service mode)"
        )
    if args.webhook == EXTERNAL and cert_dir is None:
        # A configuration installed by manifests cannot know a CA made at start.
        raise ValueError("--webhook external needs --webhook-cert-dir DIR (tls.crt, tls.key)")
    if cert_dir is not None:
        missing = [f for f in (CERT_FILE, KEY_FILE) if not (cert_dir / f).is_file()]
        if missing:
            raise ValueError(f"--webhook-cert-dir {cert_dir}: missing {', '.join(missing)}")
    return WebhookOptions(
        mode=args.webhook,
        address=args.webhook_address,
        port=args.webhook_port,
        host=args.webhook_host,
        service=service,
        service_port=args.webhook_service_port,
        cert_dir=cert_dir,
    )


def _service(text: str) -> tuple[str, str]:
    namespace, slash, name = text.partition("/")
    if not (slash and namespace and name) or "/" in name:
        raise ValueError(f"--webhook-service {text!r}: expected NAMESPACE/NAME")
    return namespace, name
