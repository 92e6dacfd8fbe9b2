"""Stored webhook events keep no client secrets."""

from __future__ import annotations

import json
from pathlib import Path

from billing_service.service_layer.event_intake import scrub_payload

FIXTURES = Path(__file__).parent.parent / "fixtures" / "stripe"


def test_client_secrets_are_scrubbed_and_everything_else_kept() -> None:
    raw = (FIXTURES / "payment_intent.succeeded.json").read_bytes()
    assert b"_secret_" in raw
    stored = scrub_payload(raw)
    assert b"_secret_" not in stored
    original, kept = json.loads(raw), json.loads(stored)
    assert kept["id"] == original["id"]
    assert kept["data"]["object"]["client_secret"] == "[scrubbed]"
    assert kept["data"]["object"]["amount"] == original["data"]["object"]["amount"]
