"""The sidecar serves HTTPS itself when given a certificate and key (BILLING_WEBHOOK_TLS_*).

The certificate is generated in the test; the client trusts only it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from billing_service.config import ConfigError, Settings
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import process_env, start_process, stripe_event, stripe_headers

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "billing-webhooks")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "webhooks.pem", directory / "webhooks.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


async def test_sidecar_serves_https_with_its_certificate(
    tmp_path: Path, mongo_uri: str, stripe_api: StripeImitation
) -> None:
    cert, key = self_signed(tmp_path)
    env = process_env(
        mongo_uri, f"tls_{uuid.uuid4().hex}", stripe_api, BILLING_WEBHOOK_WORKERS="0",
        BILLING_WEBHOOK_TLS_CERT=str(cert), BILLING_WEBHOOK_TLS_KEY=str(key),
    )  # fmt: skip
    sidecar = start_process(env)
    try:
        assert sidecar.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        body = json.dumps(stripe_event("invoice.paid")).encode()
        async with httpx.AsyncClient(verify=trusted, timeout=10) as client:
            response = await client.post(f"{sidecar.url}/webhooks/stripe", content=body, headers=stripe_headers(body))
            assert (response.status_code, response.json()["received"]) == (200, True)
            assert (await client.get(f"{sidecar.url}/healthz")).json() == {"status": "ok"}
        # Plain HTTP on the TLS port gets no answer a client could mistake for success.
        plain = sidecar.url.replace("https://", "http://")
        async with httpx.AsyncClient(timeout=5) as client:
            try:
                answer = await client.get(f"{plain}/healthz")
            except httpx.HTTPError:
                pass
            else:
                assert answer.status_code == 400
        # A client that does not trust the certificate refuses to talk.
        async with httpx.AsyncClient(timeout=5) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{sidecar.url}/healthz")
    finally:
        sidecar.stop()


def test_tls_settings_are_checked_at_start(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    ok = Settings.from_env({"BILLING_WEBHOOK_TLS_CERT": str(cert), "BILLING_WEBHOOK_TLS_KEY": str(key)})
    assert (ok.webhook_tls_cert, ok.webhook_tls_key) == (cert, key)
    with pytest.raises(ConfigError, match="BILLING_WEBHOOK_TLS_CERT and BILLING_WEBHOOK_TLS_KEY"):
        Settings.from_env({"BILLING_WEBHOOK_TLS_CERT": str(cert)})
    done = subprocess.run(
        [sys.executable, "-m", "billing_service", "webhooks", "serve"],
        env={
            **os.environ,
            "BILLING_WEBHOOK_TLS_CERT": str(tmp_path / "missing.pem"),
            "BILLING_WEBHOOK_TLS_KEY": str(key),
            "BILLING_EMBEDDED_DATA_DIR": str(tmp_path / "db"),
        },
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "BILLING_WEBHOOK_TLS_CERT" in done.stderr
