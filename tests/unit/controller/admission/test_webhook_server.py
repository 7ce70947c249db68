"""The webhook's server: flags, certificate, the configuration it registers, a real TLS call."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import kopf
import pytest
from cryptography import x509

from paraserve.api import GROUP, PLURAL, VERSION
from paraserve.controller.admission import options as webhook_options
from paraserve.controller.admission.options import WebhookOptions
from paraserve.controller.admission.review import HANDLER_ID
from paraserve.controller.admission.server import (
    CONFIGURATION_NAME,
    RegisteringServer,
    build_server,
    client_config_for,
    namespace_selector,
    self_signed_certificate,
    validating_configuration,
)

pytestmark = pytest.mark.timeout(60)


def parse(*argv: str) -> WebhookOptions | None:
    parser = argparse.ArgumentParser()
    webhook_options.add_arguments(parser)
    return webhook_options.from_args(parser.parse_args(argv))


# -- flags ---------------------------------------------------------------------------------


def test_the_webhook_is_off_unless_asked_for() -> None:
    assert parse() is None


def test_url_mode_and_service_mode() -> None:
    url = parse("--webhook", "self-managed", "--webhook-host", "127.0.0.1", "--webhook-port", "1")
    assert url == WebhookOptions(host="127.0.0.1", port=1)
    service = parse("--webhook", "self-managed", "--webhook-service", "paraserve/paraserve-webhook")
    assert service is not None and service.service == ("paraserve", "paraserve-webhook")
    assert service.port == 9443 and service.service_port == 443


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--webhook", "self-managed"], "exactly one of"),
        (["--webhook", "self-managed", "--webhook-host", "h", "--webhook-service", "a/b"], "one"),
        (["--webhook", "self-managed", "--webhook-service", "b"], "NAMESPACE/NAME"),
        (["--webhook", "external"], "--webhook-cert-dir"),
        (["--webhook", "external", "--webhook-cert-dir", "/nonexistent"], "missing tls.crt"),
        (["--webhook", "self-managed", "--webhook-host", "h", "--webhook-port", "0"], "1–65535"),
    ],
)
def test_flags_that_do_not_fit_are_one_line(argv: list[str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse(*argv)


def test_a_certificate_directory_with_its_ca(tmp_path: Path) -> None:
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    options = parse("--webhook", "external", "--webhook-cert-dir", str(tmp_path))
    assert options is not None and not options.manages_configuration
    assert (options.certfile, options.pkeyfile, options.cafile) == (
        tmp_path / "tls.crt",
        tmp_path / "tls.key",
        tmp_path / "ca.crt",
    )


# -- the configuration ---------------------------------------------------------------------


def test_the_configuration_fails_open_and_never_sees_deletes() -> None:
    configuration = validating_configuration({"url": "https://127.0.0.1:9443/x"})
    assert configuration["metadata"]["name"] == CONFIGURATION_NAME == "paraserve.dev"
    (webhook,) = configuration["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["timeoutSeconds"] == 5
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    (rule,) = webhook["rules"]
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert rule["resources"] == [PLURAL]  # no /status, no /scale
    assert (rule["apiGroups"], rule["apiVersions"]) == ([GROUP], [VERSION])
    assert "namespaceSelector" not in webhook and "objectSelector" not in webhook


def test_client_config_in_url_and_service_mode() -> None:
    served = kopf.WebhookClientConfig(url="https://127.0.0.1:9443", caBundle="Q0E=")
    url = client_config_for(served, WebhookOptions(host="127.0.0.1"))
    assert url == {"url": f"https://127.0.0.1:9443/{HANDLER_ID}", "caBundle": "Q0E="}
    service = client_config_for(served, WebhookOptions(service=("ops", "paraserve-webhook")))
    assert service == {
        "service": {
            "namespace": "ops",
            "name": "paraserve-webhook",
            "port": 443,
            "path": f"/{HANDLER_ID}",
        },
        "caBundle": "Q0E=",
    }


def test_a_namespaced_operator_checks_only_its_namespaces() -> None:
    selector = namespace_selector(["b", "a"])
    assert selector == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}
        ]
    }
    assert namespace_selector(["team-*"]) is None  # kopf globs cannot be a selector
    assert namespace_selector([]) is None


# -- the certificate and a real HTTPS round-trip -------------------------------------------


def test_the_self_signed_certificate_names_the_hosts() -> None:
    cert_pem, key_pem = self_signed_certificate(["svc.ns.svc", "127.0.0.1", "0.0.0.0"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["svc.ns.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" in key_pem


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_server_registers_itself_and_answers_over_verified_tls() -> None:
    options = WebhookOptions(address="127.0.0.1", host="127.0.0.1", port=_free_port())
    registered: list[kopf.WebhookClientConfig] = []

    async def register(config: kopf.WebhookClientConfig) -> None:
        registered.append(config)

    async def webhookfn(request: Any, **kwargs: Any) -> Any:
        return {"seen": request["ping"], "webhook": kwargs.get("webhook")}

    def call(url: str, ca: bytes) -> Any:
        context = ssl.create_default_context(cadata=ca.decode())  # hostname checked: 127.0.0.1
        request = urllib.request.Request(url, data=json.dumps({"ping": 1}).encode(), method="POST")
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return json.loads(response.read())

    async def scenario() -> Any:
        server = RegisteringServer(build_server(options), register)
        configs = server(webhookfn)
        try:
            config = await asyncio.wait_for(configs.__anext__(), timeout=20)
            for _ in range(100):
                if registered:
                    break
                await asyncio.sleep(0.05)
            url = client_config_for(config, options)["url"]
            ca = base64.b64decode(config["caBundle"])
            return registered, url, await asyncio.to_thread(call, url, ca)
        finally:
            await configs.aclose()  # type: ignore[attr-defined]

    seen, url, answer = asyncio.run(scenario())
    assert len(seen) == 1 and seen[0]["url"] == f"https://127.0.0.1:{options.port}"
    assert url == f"https://127.0.0.1:{options.port}/{HANDLER_ID}"
    assert answer == {"seen": 1, "webhook": HANDLER_ID}


def test_service_mode_certificates_name_the_service() -> None:
    server = build_server(WebhookOptions(service=("ops", "paraserve-webhook")))
    assert server.host == "paraserve-webhook.ops.svc"
    assert list(server.extra_sans) == [
        "paraserve-webhook",
        "paraserve-webhook.ops",
        "paraserve-webhook.ops.svc.cluster.local",
    ]


def test_a_mounted_certificate_is_served_and_becomes_the_ca_bundle(tmp_path: Path) -> None:
    cert_pem, key_pem = self_signed_certificate(["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    options = WebhookOptions(
        mode="external", address="127.0.0.1", host="127.0.0.1", port=_free_port(), cert_dir=tmp_path
    )

    async def webhookfn(request: Any, **_: Any) -> Any:
        return {}

    async def first_config() -> Any:
        configs = build_server(options)(webhookfn)
        try:
            return await asyncio.wait_for(configs.__anext__(), timeout=20)
        finally:
            await configs.aclose()  # type: ignore[attr-defined]

    config = asyncio.run(first_config())
    assert base64.b64decode(config["caBundle"]) == cert_pem
