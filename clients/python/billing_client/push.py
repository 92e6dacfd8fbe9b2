"""Verify and parse the billing events the service POSTs to your push endpoint.

Every delivery carries the header ``Billing-Signature: t=<unix time>,v1=<hex>[,v1=<hex>]``:
``t`` is when it was sent, and each ``v1`` is the hex HMAC-SHA256 of ``"<t>." + body`` under
one of the endpoint's active secrets (two during a secret rotation). The scheme is Stripe's,
so Stripe's own ``WebhookSignature.verify_header`` accepts it too.

Example (any web framework: read the raw body, never re-serialized JSON)::

    from billing_client.push import SIGNATURE_HEADER, SignatureVerificationError, construct_event

    def handle(body: bytes, headers: Mapping[str, str]) -> int:
        try:
            event = construct_event(body, headers[SIGNATURE_HEADER], [current_secret, previous_secret])
        except (KeyError, SignatureVerificationError):
            return 400
        if already_processed(event.id):  # deliveries are at least once
            return 200
        enqueue(event)  # answer within 10 seconds; work afterwards
        return 200

During a rotation, pass both the new and the old secret until the old one expires.

This module runs on every Python and protobuf runtime the package declares (Python 3.9 on).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence

from billing.v1 import billing_event_pb2
from google.protobuf import json_format

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "SIGNATURE_HEADER",
    "SignatureVerificationError",
    "construct_event",
    "verify_signature",
]

#: The HTTP header that carries the signature.
SIGNATURE_HEADER = "Billing-Signature"
#: How far the signature's time may be from yours, either way, by default.
DEFAULT_TOLERANCE_SECONDS = 300

_MAX_HEADER_LENGTH = 4096
_MAX_SIGNATURES = 8
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class SignatureVerificationError(ValueError):
    """The delivery's signature did not verify: answer 400 and ignore the body.

    Attributes:
        reason: ``malformed_header``, ``no_signatures``, ``signature_mismatch`` or
            ``timestamp_outside_tolerance``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _parse(header: str) -> tuple[int, list[str]]:
    if len(header) > _MAX_HEADER_LENGTH:
        raise SignatureVerificationError("malformed_header", "signature header is too long")
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureVerificationError("malformed_header", "signature header items must be key=value")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            if not _HEX_SHA256.fullmatch(value):
                raise SignatureVerificationError("malformed_header", "a v1 signature must be 64 hex digits")
            signatures.append(value)
        # Other schemes (v0, v2, ...) are skipped: a newer server may add one next to v1.
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise SignatureVerificationError("malformed_header", "signature header needs exactly one numeric t")
    if not signatures:
        raise SignatureVerificationError("no_signatures", "signature header has no v1 signature")
    if len(signatures) > _MAX_SIGNATURES:
        raise SignatureVerificationError("malformed_header", "signature header has too many signatures")
    return int(timestamps[0]), signatures


def verify_signature(
    payload: bytes,
    header: str,
    secrets: str | Sequence[str],
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """Checks a delivery's ``Billing-Signature``; returns the signature's Unix time.

    Args:
        payload: The raw request body, exactly as received.
        header: The ``Billing-Signature`` header value.
        secrets: The endpoint's secret (``whsec_...``), or every secret you accept during a
            rotation.
        tolerance_seconds: How far the signature's time may be from ``now``, either way.
        now: Your time in Unix seconds; the system clock when omitted.

    Raises:
        SignatureVerificationError: Malformed header, no signature matching any secret, or a
            signature time outside the tolerance (a replayed or delayed request).
        ValueError: No secret, an empty secret, or a tolerance that is not positive.
    """
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys or any(not k for k in keys):
        raise ValueError("verify_signature needs at least one non-empty secret")
    if tolerance_seconds <= 0:
        raise ValueError("tolerance_seconds must be positive")
    timestamp, signatures = _parse(header)
    signed = str(timestamp).encode("ascii") + b"." + payload
    expected = [hmac.new(k.encode("utf-8"), signed, hashlib.sha256).hexdigest() for k in keys]
    matched = False
    for signature in signatures:
        for candidate in expected:
            matched |= hmac.compare_digest(signature, candidate)
    if not matched:
        raise SignatureVerificationError("signature_mismatch", "no signature matches the secret(s)")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureVerificationError(
            "timestamp_outside_tolerance", f"signature time is more than {tolerance_seconds}s from now"
        )
    return timestamp


def construct_event(
    payload: bytes,
    header: str,
    secrets: str | Sequence[str],
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> billing_event_pb2.BillingEvent:
    """Verifies a delivery (see :func:`verify_signature`) and parses its body.

    Fields this client version does not know yet (added by a newer server) are ignored.

    Raises:
        SignatureVerificationError: The signature did not verify.
        google.protobuf.json_format.ParseError: A verified body that is not a BillingEvent.
    """
    verify_signature(payload, header, secrets, tolerance_seconds=tolerance_seconds, now=now)
    event = billing_event_pb2.BillingEvent()
    json_format.Parse(payload.decode("utf-8"), event, ignore_unknown_fields=True)
    return event
