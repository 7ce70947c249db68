"""Serving the admission webhook: kopf's HTTPS server, its certificate, and its registration.

kopf's own managed mode writes `timeoutSeconds: 30` and cannot be told otherwise, so in
self-managed mode we write the ValidatingWebhookConfiguration ourselves, each time the server
reports a new client config (at start, and when mounted certificate files change).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, Final

import kopf

from paraserve.api import GROUP, PLURAL, VERSION
from paraserve.controller.admission.options import WebhookOptions
from paraserve.controller.admission.review import HANDLER_ID, PoolWatch, register
from paraserve.controller.reconciling.reconcile import Reconciler

logger = logging.getLogger("paraserve.webhook")

CONFIGURATION_NAME: Final = "paraserve.dev"
WEBHOOK_NAME: Final = f"{HANDLER_ID}.{PLURAL}.{GROUP}"
#: Short: a hung operator delays a write by at most this long, then it is admitted (Ignore).
TIMEOUT_SECONDS: Final = 5
#: Self-signed certificates live in memory and are made anew at every start.
CERTIFICATE_DAYS: Final = 3650
_RETRY_MAX: Final = 30.0
_LITERAL_NAMESPACE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def client_config_for(served: kopf.WebhookClientConfig, options: WebhookOptions) -> dict[str, Any]:
    """How the API server reaches our handler: kopf's URL, or the Service, plus the CA."""
    config: dict[str, Any] = {}
    if options.service is not None:
        namespace, name = options.service
        config["service"] = {
            "namespace": namespace,
            "name": name,
            "port": options.service_port,
            "path": f"/{HANDLER_ID}",
        }
    else:
        config["url"] = f"{str(served.get('url', '')).rstrip('/')}/{HANDLER_ID}"
    if served.get("caBundle"):
        config["caBundle"] = served["caBundle"]
    return config


def namespace_selector(namespaces: Sequence[str]) -> dict[str, Any] | None:
    """Only the namespaces served, when they are plain names (kopf's globs cannot be matched)."""
    if not namespaces or not all(_LITERAL_NAMESPACE.match(ns) for ns in namespaces):
        return None
    return {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(namespaces)}
        ]
    }


#: The webhook's match condition (CEL, Kubernetes 1.30 and later): a create, or a new spec.
SPEC_WRITTEN: Final = "spec-written"
SPEC_WRITTEN_EXPRESSION: Final = (
    "request.operation == 'CREATE' || !has(oldObject.spec) || !has(object.spec)"
    " || object.spec != oldObject.spec"
)


def validating_configuration(
    client_config: dict[str, Any], namespaces: Sequence[str] = ()
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration: CREATE/UPDATE of the spec only, failing open."""
    webhook: dict[str, Any] = {
        "name": WEBHOOK_NAME,
        "clientConfig": client_config,
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                # The resource alone: writes to /status and /scale are not intercepted.
                "resources": [PLURAL],
                # Never DELETE: a stopped operator must not be able to block a delete.
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ],
        # Only what the review reads: an UPDATE that leaves the spec as it was (the gang
        # annotation, finalizers, labels) is admitted by the API server without a round-trip.
        "matchConditions": [{"name": SPEC_WRITTEN, "expression": SPEC_WRITTEN_EXPRESSION}],
        # The reconcile re-checks every spec, so an unreachable webhook admits.
        "failurePolicy": "Ignore",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "admissionReviewVersions": ["v1"],
    }
    selector = namespace_selector(namespaces)
    if selector is not None:
        webhook["namespaceSelector"] = selector
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": CONFIGURATION_NAME,
            "labels": {
                "app.kubernetes.io/name": "paraserve",
                "app.kubernetes.io/component": "webhook",
                "app.kubernetes.io/managed-by": "paraserve-operator",
            },
        },
        "webhooks": [webhook],
    }


class SelfSignedServer(kopf.WebhookServer):
    """kopf's server, with its self-signed certificate made by `cryptography`.

    kopf makes one with `certbuilder`, a development-only extra; `cryptography` is what
    production images carry anyway.
    """

    @staticmethod
    def build_certificate(
        hostnames: Collection[str], password: str | None = None
    ) -> tuple[bytes, bytes]:
        return self_signed_certificate(hostnames, password)


def self_signed_certificate(
    hostnames: Collection[str], password: str | None = None
) -> tuple[bytes, bytes]:
    """A self-signed serving certificate (PEM) and its key for `hostnames` (names and IPs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for hostname in dict.fromkeys(hostnames):  # ordered and without duplicates
        try:
            ip = ipaddress.ip_address(hostname)
        except ValueError:
            names.append(hostname)
        else:
            if not ip.is_unspecified:  # 0.0.0.0 can be listened on, never connected to
                ips.append(ip)
    common_name = names[0] if names else str(ips[0])
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ip) for ip in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # Its own CA: the caBundle given to the API server is this very certificate.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def build_server(options: WebhookOptions) -> kopf.WebhookServer:
    """kopf's HTTPS server, with the certificate given, else a self-signed one that fits."""
    extra_sans: list[str] = []
    host = options.host
    if options.service is not None:
        namespace, name = options.service
        host = f"{name}.{namespace}.svc"
        extra_sans = [name, f"{name}.{namespace}", f"{host}.cluster.local"]
    return SelfSignedServer(
        addr=options.address,
        port=options.port,
        host=host,
        certfile=options.certfile,
        pkeyfile=options.pkeyfile,
        cafile=options.cafile,
        extra_sans=extra_sans,
    )


Register = Callable[[kopf.WebhookClientConfig], Awaitable[None]]


class RegisteringServer:
    """A kopf webhook server that also (re)registers itself whenever its client config changes.

    Registration retries in the background: the server keeps serving meanwhile, and an API
    error (say, missing RBAC) is logged, never fatal, as the reconcile still checks every spec.
    """

    def __init__(self, server: kopf.WebhookServer, register: Register) -> None:
        self.server = server
        self.register = register
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        try:
            async for client_config in self.server(fn):
                self._restart(client_config)
                yield client_config
        finally:
            if self._task is not None:
                self._task.cancel()

    def _restart(self, client_config: kopf.WebhookClientConfig) -> None:
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._register(client_config), name="webhook-register")

    async def _register(self, client_config: kopf.WebhookClientConfig) -> None:
        delay = 1.0
        while True:
            try:
                await self.register(client_config)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.error(
                    "could not register the admission webhook (retry in %.0fs): %s", delay, error
                )
                await asyncio.sleep(delay)
                delay = min(_RETRY_MAX, delay * 2)
            else:
                logger.info("admission webhook registered: %s", CONFIGURATION_NAME)
                return


def install(
    options: WebhookOptions,
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    reconciler: Reconciler,
    write_configuration: Callable[[dict[str, Any]], Awaitable[None]],
    namespaces: Sequence[str] = (),
) -> None:
    """Add the webhook to an operator: its handlers, its server, and (maybe) its registration.

    `write_configuration` creates or updates the ValidatingWebhookConfiguration (the API
    call is the running room's: Cluster.write_webhook_configuration).
    """
    register(registry, reconciler, PoolWatch())
    server = build_server(options)
    if not options.manages_configuration:
        settings.admission.server = server
        return

    async def write(client_config: kopf.WebhookClientConfig) -> None:
        served = client_config_for(client_config, options)
        await write_configuration(validating_configuration(served, namespaces))

    settings.admission.server = RegisteringServer(server, write)
