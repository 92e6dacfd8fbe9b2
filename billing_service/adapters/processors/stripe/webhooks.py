"""Verification of Stripe webhook deliveries (``Stripe-Signature``) and their envelope.

Uses the SDK's own verifier (``stripe.WebhookSignature.verify_header``, the check behind
``stripe.Webhook.construct_event``) against every configured endpoint secret, so a secret
can be rolled: Stripe signs with both the old and the new secret while they overlap, and
we accept a signature made with any configured one. The event is parsed only after the
signature matched, and never through the SDK's global client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import stripe

from billing_service.domain.common import Processor
from billing_service.domain.processor_events import BadEvent, SignatureError, VerifiedEvent, load_json_object


@dataclass(frozen=True, repr=False)
class StripeWebhookVerifier:
    """Checks ``Stripe-Signature`` headers (a ``WebhookVerifier`` of its own, and the one the
    adapter's ``verify_webhook`` uses).

    Args:
        secrets: Endpoint signing secrets (``whsec_...``); several while rotating.
        tolerance_seconds: Maximum age of the signed timestamp (replay window).
    """

    secrets: Sequence[str] = field(default=())
    tolerance_seconds: int = 300
    name = Processor.STRIPE

    @property
    def verifies_webhooks(self) -> bool:
        """True once a signing secret is configured."""
        return bool(self.secrets)

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """Checks ``Stripe-Signature`` against every configured secret, then reads the envelope."""
        self.verify(body, headers.get("stripe-signature"))
        return read_envelope(body)

    def __repr__(self) -> str:
        return f"StripeWebhookVerifier(secrets=<{len(self.secrets)}>, tolerance_seconds={self.tolerance_seconds})"

    def verify(self, body: bytes, header: str | None) -> None:
        """Raises ``SignatureError`` unless one secret produced one of the header's v1 signatures.

        Besides the SDK's check (too old), a timestamp further than the tolerance in the
        future is refused too: it cannot come from Stripe's clock.
        """
        if not header or not self.secrets:
            raise SignatureError("missing signature or no secret configured")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("body is not UTF-8") from None
        for secret in self.secrets:
            try:
                stripe.WebhookSignature.verify_header(body, header, secret, self.tolerance_seconds)
            except stripe.SignatureVerificationError:
                continue
            timestamp = _timestamp(header)
            if timestamp is None or timestamp > time.time() + self.tolerance_seconds:
                raise SignatureError("timestamp in the future")
            return
        raise SignatureError("no signature matched")


def _timestamp(header: str) -> int | None:
    for item in header.split(","):
        key, _, value = item.partition("=")
        if key.strip() == "t":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def read_envelope(body: bytes) -> VerifiedEvent:
    """Reads a verified Stripe event's id, type and object.

    Raises:
        BadEvent: Not a JSON object with string ``id``/``type`` and a ``data.object``.
    """
    payload = load_json_object(body)
    if payload.get("object", "event") != "event":
        raise BadEvent("not an event")
    event_id, event_type = payload.get("id"), payload.get("type")
    data = payload.get("data")
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type):
        raise BadEvent("event without id or type")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise BadEvent("event without data.object")
    return VerifiedEvent(event_id=event_id, type=event_type, payload=payload)
