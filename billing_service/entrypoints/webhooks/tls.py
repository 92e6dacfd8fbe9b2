"""HTTPS for the webhook sidecar: ``BILLING_WEBHOOK_TLS_CERT`` and ``BILLING_WEBHOOK_TLS_KEY``.

Processors deliver webhooks only to ``https://`` URLs. Either the sidecar terminates TLS
itself (these settings) or a load balancer / ingress in front of it does and forwards
plain HTTP on a private network; docs/WEBHOOKS.md describes both.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from billing_service.config import ConfigError, Settings


def check_tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """Returns (certificate, key) when the sidecar serves HTTPS, after loading them once.

    Loading them here makes a missing or mismatched file a configuration error at start
    rather than a failure at the first handshake. Messages name the variable and path,
    never key material.

    Raises:
        ConfigError: A file is unreadable, not PEM, or the key does not match the certificate.
    """
    cert, key = settings.webhook_tls_cert, settings.webhook_tls_key
    if cert is None or key is None:
        return None
    for variable, path in (("BILLING_WEBHOOK_TLS_CERT", cert), ("BILLING_WEBHOOK_TLS_KEY", key)):
        if not path.is_file():
            raise ConfigError(f"{variable}: cannot read {path}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError):
        raise ConfigError(
            "BILLING_WEBHOOK_TLS_CERT and BILLING_WEBHOOK_TLS_KEY must be a PEM certificate chain and its "
            "unencrypted private key"
        ) from None
    return cert, key
