"""Signatures of pushed events: HMAC-SHA256 over ``"<unix time>.<body>"``, as Stripe signs webhooks.

Every POST to a push endpoint carries one header::

    Billing-Signature: t=1764633600,v1=5257a869...e0b3,v1=0b1f...9c2d

``t`` is the sending time in Unix seconds; each ``v1`` is the lower-case hex HMAC-SHA256 of
``f"{t}.".encode() + body`` under one of the endpoint's active secrets, the newest first
(during a rotation the old and the new secret both sign). The key is the whole secret string
(``whsec_...``) in UTF-8, as with Stripe, so a receiver may verify with Stripe's own library.
A receiver accepts the request when any ``v1`` matches any secret it holds and ``t`` is
within its tolerance (5 minutes by default) of its clock; schemes other than ``v1`` are
ignored, so a future scheme can be added next to it.

Endpoint secrets are never stored: each is derived from the deployment's key
(``BILLING_EVENTS_SECRET_KEY``) and the endpoint's and secret's ids (:func:`derive_secret`),
so a copy of the database alone cannot forge a delivery.

Pure: the caller passes the time; nothing here reads a clock, the environment or the network.
The receivers' copy of :func:`verify` lives in the client package
(``clients/python/billing_client/push.py``); ``tests/unit/test_event_signing.py`` checks that
the two agree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "MAX_ACTIVE_SECRETS",
    "MAX_OVERLAP",
    "SCHEME",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "SecretSlot",
    "SignatureVerificationError",
    "active_secrets",
    "compute_signature",
    "derive_secret",
    "parse_header",
    "rotate_secrets",
    "secret_hint",
    "sign",
    "signed_payload",
    "verify",
]

SIGNATURE_HEADER: Final = "Billing-Signature"
SCHEME: Final = "v1"
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the prefix of every secret, not a secret
DEFAULT_TOLERANCE_SECONDS: Final = 300
#: A rotation that would leave more secrets signing ends the oldest at once.
MAX_ACTIVE_SECRETS: Final = 3
#: The longest overlap a rotation may ask for (the API refuses more).
MAX_OVERLAP: Final = timedelta(days=7)

# Bounds on what a verifier parses, so a hostile header cannot cost much CPU or memory.
_MAX_HEADER_LENGTH: Final = 4096
_MAX_SIGNATURES: Final = 8
_MIN_KEY_BYTES: Final = 32
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_DERIVATION_LABEL: Final = b"billing.v1 event endpoint secret"


class SignatureVerificationError(Exception):
    """A pushed event's signature did not verify.

    Attributes:
        reason: Why, as a short code: ``malformed_header``, ``no_signatures``,
            ``signature_mismatch`` or ``timestamp_outside_tolerance``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def signed_payload(timestamp: int, body: bytes) -> bytes:
    """The bytes that are signed: the decimal timestamp, a dot, then the raw body."""
    return f"{timestamp}.".encode("ascii") + body


def compute_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The lower-case hex HMAC-SHA256 of :func:`signed_payload` under ``secret``."""
    return hmac.new(secret.encode("utf-8"), signed_payload(timestamp, body), hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: Sequence[str], *, timestamp: int) -> str:
    """Builds the ``Billing-Signature`` header value for one delivery.

    Args:
        body: The exact bytes that will be POSTed.
        secrets: The endpoint's active secrets, newest first (1 to :data:`MAX_ACTIVE_SECRETS`).
        timestamp: The sending time in Unix seconds.

    Returns:
        ``t=<timestamp>,v1=<hex>[,v1=<hex>...]``, one ``v1`` per secret, in the given order.

    Raises:
        ValueError: No secret, too many, an empty or repeated one, or a negative timestamp.
    """
    if not 1 <= len(secrets) <= MAX_ACTIVE_SECRETS:
        raise ValueError(f"sign with 1 to {MAX_ACTIVE_SECRETS} secrets, not {len(secrets)}")
    if any(not s for s in secrets) or len(set(secrets)) != len(secrets):
        raise ValueError("secrets must be non-empty and distinct")
    if timestamp < 0:
        raise ValueError("timestamp must not be negative")
    parts = [f"t={timestamp}"] + [f"{SCHEME}={compute_signature(s, timestamp, body)}" for s in secrets]
    return ",".join(parts)


def parse_header(header: str) -> tuple[int, tuple[str, ...]]:
    """Splits a ``Billing-Signature`` value into its timestamp and its ``v1`` signatures.

    Items of other schemes (``v0``, ``v2``, ...) are skipped; spaces around items are allowed.

    Raises:
        SignatureVerificationError: ``malformed_header`` (too long, no or several ``t``, a
            ``t`` that is not a decimal number, a ``v1`` that is not 64 hex digits, too
            many signatures) or ``no_signatures`` (no ``v1`` at all).
    """
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
        elif key == SCHEME:
            if not _HEX_SHA256.fullmatch(value):
                raise SignatureVerificationError("malformed_header", "a v1 signature must be 64 hex digits")
            signatures.append(value)
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise SignatureVerificationError("malformed_header", "signature header needs exactly one numeric t")
    if not signatures:
        raise SignatureVerificationError("no_signatures", f"signature header has no {SCHEME} signature")
    if len(signatures) > _MAX_SIGNATURES:
        raise SignatureVerificationError("malformed_header", "signature header has too many signatures")
    return int(timestamps[0]), tuple(signatures)


def verify(
    body: bytes,
    header: str,
    secrets: Sequence[str],
    *,
    now: int,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Checks a delivery's signature; returns its timestamp when it verifies.

    Args:
        body: The raw request body, exactly as received (not re-serialized JSON).
        header: The ``Billing-Signature`` header value.
        secrets: Every secret the receiver currently accepts (several during a rotation).
        now: The receiver's time in Unix seconds.
        tolerance_seconds: How far ``t`` may be from ``now``, either way (clock skew one
            way, replays of an old request the other).

    Raises:
        SignatureVerificationError: The header is malformed, no signature matches any
            secret (``signature_mismatch``), or ``t`` is outside the tolerance.
        ValueError: No secret given, an empty one, or a tolerance that is not positive.
    """
    if not secrets or any(not s for s in secrets):
        raise ValueError("verify needs at least one non-empty secret")
    if tolerance_seconds <= 0:
        raise ValueError("tolerance_seconds must be positive")
    timestamp, signatures = parse_header(header)
    expected = [compute_signature(secret, timestamp, body) for secret in secrets]
    # compare_digest takes the same time wherever two digests differ; every pair is tried.
    matched = False
    for signature in signatures:
        for candidate in expected:
            matched |= hmac.compare_digest(signature, candidate)
    if not matched:
        raise SignatureVerificationError("signature_mismatch", "no signature matches the secret(s)")
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureVerificationError(
            "timestamp_outside_tolerance", f"signature timestamp is more than {tolerance_seconds}s from now"
        )
    return timestamp


def derive_secret(key: bytes, endpoint_id: str, secret_id: str) -> str:
    """The signing secret of one endpoint secret, derived from the deployment's key.

    ``whsec_`` plus the unpadded URL-safe base64 of HMAC-SHA256(key, label, endpoint id,
    secret id): 49 characters. The same inputs always give the same secret, so nothing
    secret is stored, a retried create or rotate request returns the same secret again, and
    every replica signs alike.

    Raises:
        ValueError: A key shorter than 32 bytes, or an empty or NUL-containing id.
    """
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"the events secret key must be at least {_MIN_KEY_BYTES} bytes")
    for name, value in (("endpoint_id", endpoint_id), ("secret_id", secret_id)):
        if not value or "\x00" in value:
            raise ValueError(f"{name} must be non-empty and contain no NUL")
    message = b"\x00".join((_DERIVATION_LABEL, endpoint_id.encode("utf-8"), secret_id.encode("utf-8")))
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def secret_hint(secret: str) -> str:
    """The last four characters of a secret, shown to tell secrets apart."""
    return secret[-4:]


@dataclass(frozen=True)
class SecretSlot:
    """One secret of an endpoint, as stored (the secret itself is derived, never stored).

    Attributes:
        id: The secret's id, an input of :func:`derive_secret`.
        created_at: When it was created.
        expires_at: When it stops signing; None for the newest secret.
    """

    id: str
    created_at: datetime
    expires_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        """True while the secret signs deliveries."""
        return self.expires_at is None or now < self.expires_at


def active_secrets(slots: Sequence[SecretSlot], now: datetime) -> list[SecretSlot]:
    """The secrets that sign a delivery sent at ``now``, newest first."""
    live = [s for s in slots if s.active(now)]
    return sorted(live, key=lambda s: s.created_at, reverse=True)


def rotate_secrets(slots: Sequence[SecretSlot], new_id: str, *, now: datetime, overlap: timedelta) -> list[SecretSlot]:
    """Adds a new newest secret; the others keep signing until ``now + overlap`` at most.

    A secret already due to expire earlier keeps its earlier end. Secrets that no longer
    sign are dropped, and when more than :data:`MAX_ACTIVE_SECRETS` would sign, the oldest
    end at once.

    Args:
        slots: The endpoint's current secrets.
        new_id: The id of the new secret (fresh and random).
        now: The rotation time.
        overlap: How long the current secrets keep signing: 0 to :data:`MAX_OVERLAP`.

    Returns:
        The endpoint's secrets after the rotation, newest first.

    Raises:
        ValueError: The overlap is out of range or ``new_id`` is already used.
    """
    if not timedelta(0) <= overlap <= MAX_OVERLAP:
        raise ValueError(f"overlap must be between 0 and {MAX_OVERLAP.days} days")
    if any(s.id == new_id for s in slots):
        raise ValueError("new_id is already used by this endpoint")
    until = now + overlap
    kept = [
        replace(s, expires_at=until if s.expires_at is None or s.expires_at > until else s.expires_at)
        for s in active_secrets(slots, now)
    ]
    kept = [s for s in kept if s.active(now)]
    return [SecretSlot(new_id, now), *kept][:MAX_ACTIVE_SECRETS]
