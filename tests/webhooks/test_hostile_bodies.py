"""Signed deliveries whose bodies are hostile: each is a 400, counted as rejected, stored nowhere.

The signature is valid in every case (the sender holds the secret, or the attacker found a
way to get a body signed), so only the parser stands between the body and the inbox. Stripe
and PayPal endpoints alike; never an HTTP 500, never a traceback in the response.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.webhooks.conftest import RunningSidecar, paypal_event, stripe_event, stripe_headers

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

DEEP = 20_000  # well past the JSON parser's recursion limit, well under the 64 KiB body cap


def _stripe_valid() -> dict[str, Any]:
    return stripe_event("payment_intent.succeeded")


def _paypal_valid() -> dict[str, Any]:
    return paypal_event("PAYMENT.CAPTURE.COMPLETED")


def hostile_bodies(valid: dict[str, Any]) -> dict[str, bytes]:
    """Bodies a signer could send: unparseable, pathological or not an event."""
    event_json = json.dumps(valid)
    nested_in_event = dict(valid)
    deep_value: Any = "x"
    for _ in range(200):
        deep_value = {"a": deep_value}
    nested_in_event["extra"] = deep_value
    return {
        "deep-arrays": b"[" * DEEP + b"]" * DEEP,
        "deep-objects": b'{"a":' * (DEEP // 2) + b"1" + b"}" * (DEEP // 2),
        "deep-unclosed": b"[" * (DEEP * 2),
        "deep-inside-event": event_json[:-1].encode() + b',"x":' + b"[" * DEEP + b"]" * DEEP + b"}",
        "nested-200-in-event": json.dumps(nested_in_event).encode(),
        "empty": b"",
        "whitespace": b"  \n ",
        "null": b"null",
        "array": b"[]",
        "string": b'"evt"',
        "number": b"12",
        "truncated": event_json[: len(event_json) // 2].encode(),
        "not-utf8": b'{"id": "\xff\xfe"}',
        "utf16": event_json.encode("utf-16"),
        "bom": b"\xef\xbb\xbf" + event_json.encode(),
        "huge-int": event_json[:-1].encode() + b',"n":' + b"9" * 5000 + b"}",
        "nan": event_json[:-1].encode() + b',"n":NaN}',
        "lone-surrogate-id": event_json.replace(valid["id"], "evt_\\ud800").encode(),
        "nul-in-id": event_json.replace(valid["id"], "evt_\\u0000x").encode(),
        "control-in-id": event_json.replace(valid["id"], "evt\\nx").encode(),
        "id-not-string": event_json.replace(json.dumps(valid["id"]), "12345").encode(),
        "id-too-long": event_json.replace(valid["id"], "evt_" + "a" * 400).encode(),
    }


async def _post(sidecar: RunningSidecar, processor: str, body: bytes) -> Any:
    if processor == "stripe":
        headers = stripe_headers(body) if _utf8(body) else _stripe_headers_raw(body)
    else:
        headers = sidecar.pki.sign(body)
    return await sidecar.http.post(f"{sidecar.url}/webhooks/{processor}", content=body, headers=headers)


def _utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def _stripe_headers_raw(body: bytes) -> dict[str, str]:
    # The SDK's generator wants text; sign the bytes the way Stripe does (HMAC over t.body).
    import hashlib
    import hmac
    import time

    from tests.webhooks.conftest import WHSEC

    t = int(time.time())
    mac = hmac.new(WHSEC.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


def _rejected(sidecar: RunningSidecar, processor: str) -> float:
    total = 0.0
    for family in sidecar.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "billing_webhooks_rejected_total" and sample.labels["processor"] == processor:
                total += sample.value
    return total


@pytest.mark.parametrize("processor", ["stripe", "paypal"])
async def test_hostile_signed_bodies_are_400_counted_and_stored_nowhere(
    sidecar: RunningSidecar, processor: str
) -> None:
    valid = _stripe_valid() if processor == "stripe" else _paypal_valid()
    bodies = hostile_bodies(valid)
    answers: dict[str, tuple[int, str]] = {}
    for name, body in bodies.items():
        response = await _post(sidecar, processor, body)
        answers[name] = (response.status_code, response.text)
    assert {name: status for name, (status, _) in answers.items()} == dict.fromkeys(bodies, 400)
    assert {text for _, text in answers.values()} == {"bad request"}  # no traceback, no details
    assert _rejected(sidecar, processor) == len(bodies)
    assert await sidecar.stored() == 0
    # The endpoint still works afterwards.
    assert (await _post(sidecar, processor, json.dumps(valid).encode())).status_code == 200
    assert await sidecar.stored() == 1
