"""What the sidecar refuses: nothing is stored for a delivery it cannot trust or read."""

from __future__ import annotations

import json
import time

import pytest

from billing_service.adapters.processors.paypal.webhooks import CERT_SUBJECTS, PayPalWebhookVerifier, check_cert_url
from billing_service.domain.processor_events import SignatureError
from tests.webhooks.conftest import (
    PAYPAL_WEBHOOK_ID,
    WHSEC,
    WHSEC_NEXT,
    RunningSidecar,
    make_pki,
    paypal_event,
    stripe_event,
    stripe_headers,
)

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


async def test_health_and_readiness(sidecar: RunningSidecar) -> None:
    assert (await sidecar.http.get(f"{sidecar.url}/healthz")).json() == {"status": "ok"}
    ready = await sidecar.http.get(f"{sidecar.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert {"inbox_depth", "inbox_dead", "inbox_lag_seconds"} <= ready.json().keys()


async def test_signed_stripe_event_is_stored_once_and_acknowledged(sidecar: RunningSidecar) -> None:
    event = stripe_event("customer.subscription.trial_will_end")
    first = await sidecar.post_stripe(event)
    again = await sidecar.post_stripe(event)
    assert first.status_code == again.status_code == 200
    assert first.json() == {"received": True, "duplicate": False}
    assert again.json() == {"received": True, "duplicate": True}
    assert await sidecar.stored() == 1
    doc = await sidecar.inbox.collection.find_one({"event_id": event["id"]})
    assert doc is not None and doc["deliveries"] == 2
    assert json.loads(doc["payload"]) == event  # the raw body, as received


async def test_rotated_secret_is_accepted(sidecar: RunningSidecar) -> None:
    response = await sidecar.post_stripe(stripe_event("invoice.paid"), secret=WHSEC_NEXT)
    assert response.status_code == 200


async def _refused(sidecar: RunningSidecar, body: bytes, headers: dict[str, str], status: int) -> None:
    response = await sidecar.http.post(f"{sidecar.url}/webhooks/stripe", content=body, headers=headers)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.text == "bad request"  # no details for a bad signature or body


async def test_stripe_refusals_store_nothing(sidecar: RunningSidecar) -> None:
    body = json.dumps(stripe_event("payment_intent.succeeded")).encode()
    good = stripe_headers(body)
    forged = dict(good, **{"Stripe-Signature": good["Stripe-Signature"][:-6] + "abcdef"})
    await _refused(sidecar, body, forged, 400)
    await _refused(sidecar, body, stripe_headers(body, timestamp=int(time.time()) - 301), 400)  # stale
    await _refused(sidecar, body, stripe_headers(body, timestamp=int(time.time()) + 3600), 400)  # future
    await _refused(sidecar, body, stripe_headers(body, secret="whsec_someone_else"), 400)  # wrong secret
    await _refused(sidecar, body[:-20], good, 400)  # truncated body, signature of the whole one
    await _refused(sidecar, body, {"Content-Type": "application/json"}, 400)  # no signature
    not_json = b"type=payment_intent.succeeded&id=evt_1"
    await _refused(sidecar, not_json, stripe_headers(not_json), 400)  # validly signed, not JSON
    not_event = json.dumps({"hello": "world"}).encode()
    await _refused(sidecar, not_event, stripe_headers(not_event), 400)
    await _refused(sidecar, body, dict(good, **{"Content-Type": "text/plain"}), 415)
    big = json.dumps({**stripe_event("invoice.paid"), "padding": "x" * 70_000}).encode()
    await _refused(sidecar, big, stripe_headers(big), 413)  # Content-Length says too much

    async def chunks():  # no Content-Length: the cap applies while reading
        for _ in range(80):
            yield b"x" * 1024

    streamed = await sidecar.http.post(f"{sidecar.url}/webhooks/stripe", content=chunks(), headers=stripe_headers(b"x"))
    assert streamed.status_code == 413
    assert await sidecar.stored() == 0


async def test_paypal_self_verification_with_test_ca(sidecar: RunningSidecar) -> None:
    event = paypal_event("BILLING.SUBSCRIPTION.EXPIRED")
    response = await sidecar.post_paypal(event)
    assert response.status_code == 200, response.text
    assert await sidecar.stored() == 1
    await sidecar.post_paypal(paypal_event("BILLING.SUBSCRIPTION.EXPIRED"))
    assert sidecar.pki.fetched.count(sidecar.pki.fetched[0]) >= 1
    assert len(set(sidecar.pki.fetched)) == 1  # the verified certificate is cached per URL


async def test_paypal_refusals_store_nothing(sidecar: RunningSidecar) -> None:
    url = f"{sidecar.url}/webhooks/paypal"
    body = json.dumps(paypal_event("PAYMENT.CAPTURE.COMPLETED")).encode()
    cases = {
        "other webhook id": sidecar.pki.sign(body, webhook_id="WH-OTHER-MERCHANT"),
        "http cert url": sidecar.pki.sign(body, cert_url="http://api.sandbox.paypal.com/v1/notifications/certs/C"),
        "foreign host": sidecar.pki.sign(body, cert_url="https://evil.example.com/v1/notifications/certs/C"),
        "lookalike host": sidecar.pki.sign(body, cert_url="https://api.sandbox.paypal.com.evil.com/certs/C"),
        "userinfo": sidecar.pki.sign(body, cert_url="https://api.paypal.com@evil.com/certs/C"),
    }
    for name, headers in cases.items():
        response = await sidecar.http.post(url, content=body, headers=headers)
        assert response.status_code == 400, name
    tampered = await sidecar.http.post(url, content=body.replace(b"25.00", b"2.50"), headers=sidecar.pki.sign(body))
    assert tampered.status_code == 400
    headers = sidecar.pki.sign(body)
    del headers["PAYPAL-TRANSMISSION-SIG"]
    assert (await sidecar.http.post(url, content=body, headers=headers)).status_code == 400
    assert await sidecar.stored() == 0
    assert all(u.startswith("https://api.sandbox.paypal.com/") for u in sidecar.pki.fetched)


async def test_paypal_certificate_must_chain_to_a_trusted_root() -> None:
    trusted, rogue = make_pki(), make_pki()
    verifier = PayPalWebhookVerifier(
        PAYPAL_WEBHOOK_ID, environment="sandbox", trust_roots=[trusted.ca], fetch=rogue.fetch
    )
    body = b'{"id": "WH-1"}'
    headers = {k.lower(): v for k, v in rogue.sign(body).items()}
    with pytest.raises(SignatureError):
        await verifier.verify(body, headers)
    live = PayPalWebhookVerifier(PAYPAL_WEBHOOK_ID, environment="live", trust_roots=[trusted.ca], fetch=trusted.fetch)
    with pytest.raises(SignatureError):  # a sandbox certificate does not verify live deliveries
        await live.verify(body, {k.lower(): v for k, v in trusted.sign(body).items()})
    assert CERT_SUBJECTS["live"] == ("messageverificationcerts.paypal.com",)


def test_production_default_trusts_only_the_ca_bundle_and_paypal_hosts() -> None:
    verifier = PayPalWebhookVerifier(PAYPAL_WEBHOOK_ID)  # certifi roots, real https fetcher
    assert "sandbox" not in repr(verifier)
    for bad in (
        "http://api.paypal.com/x",
        "https://api.paypal.com:8443/x",
        "ftp://api.paypal.com/x",
        "https://paypal.com/x",
    ):
        with pytest.raises(SignatureError):
            check_cert_url(bad)
    check_cert_url("https://api-m.paypal.com/v1/notifications/certs/CERT-1")
    assert WHSEC.startswith("whsec_")
