"""Push delivery's pure rules: the retry schedule, endpoint backoff, URLs, ids, and its settings."""

from __future__ import annotations

import base64
import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from billing_service.config import ConfigError, Secret, Settings
from billing_service.domain.errors import InvalidArgument
from billing_service.domain.event_signing import SecretSlot
from billing_service.domain.push import (
    RETRY_STEPS,
    RETRY_WINDOW,
    EventEndpoint,
    delivery_id,
    endpoint_backoff,
    next_attempt_at,
    validate_url,
)

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _schedule(jitter: float) -> list[datetime]:
    """Attempt times of a delivery that always fails."""
    attempts = [T0]
    step = 0
    while True:
        step += 1
        following = next_attempt_at(T0, step, now=attempts[-1], jitter=jitter)
        if following is None:
            return attempts
        attempts.append(following)


@pytest.mark.parametrize("jitter", [-0.1, 0.0, 0.1])
def test_a_failing_delivery_is_tried_on_the_schedule_for_three_days_then_given_up(jitter: float) -> None:
    attempts = _schedule(jitter)
    waits = [b - a for a, b in itertools.pairwise(attempts)]
    assert waits[: len(RETRY_STEPS)] == [s * (1 + jitter) for s in RETRY_STEPS]
    assert attempts[-1] == T0 + RETRY_WINDOW  # the last attempt is made when the window ends
    assert all(w <= timedelta(hours=12) * 1.1 for w in waits)
    assert 15 <= len(attempts) <= 17


def test_jitter_is_bounded_and_never_passes_the_window() -> None:
    rng = random.Random(3)
    for step in range(1, 30):
        now = T0 + timedelta(hours=step * 3)
        at = next_attempt_at(T0, step, now=now, jitter=rng.uniform(-0.1, 0.1))
        if now >= T0 + RETRY_WINDOW:
            assert at is None
        else:
            assert at is not None and now < at <= T0 + RETRY_WINDOW
    with pytest.raises(ValueError):
        next_attempt_at(T0, 1, now=T0, jitter=0.5)


def test_an_endpoint_backs_off_from_its_fifth_failure_in_a_row_up_to_an_hour() -> None:
    assert [endpoint_backoff(n) for n in range(5)] == [None] * 5
    assert endpoint_backoff(5) == timedelta(seconds=30)
    assert endpoint_backoff(6) == timedelta(seconds=60)
    assert endpoint_backoff(12) == timedelta(hours=1)
    assert endpoint_backoff(10_000) == timedelta(hours=1)


def test_delivery_ids_are_deterministic_per_endpoint_event_and_replay() -> None:
    assert delivery_id("ep_1", 7) == delivery_id("ep_1", 7)
    ids = {delivery_id("ep_1", 7), delivery_id("ep_2", 7), delivery_id("ep_1", 8), delivery_id("ep_1", 7, "rpl_1")}
    assert len(ids) == 4
    assert all(i.startswith("dlv_") and len(i) == 30 for i in ids)


@pytest.mark.parametrize(
    ("url", "allow_http"),
    [
        ("https://hooks.example.com/billing", False),
        ("https://hooks.example.com:8443/billing?team=x", False),
        ("http://localhost:8080/hook", True),
    ],
)
def test_urls_accepted(url: str, allow_http: bool) -> None:
    assert validate_url(url, "url", allow_http=allow_http) == url


@pytest.mark.parametrize(
    ("url", "allow_http", "why"),
    [
        ("", False, "is required"),
        ("http://hooks.example.com/x", False, "https"),
        ("ftp://hooks.example.com/x", True, "https"),
        ("https://user:pw@hooks.example.com/x", False, "user name or password"),
        ("https:///x", False, "host"),
        ("https://169.254.169.254/latest/meta-data", False, "link-local"),
        ("https://[fe80::1]/x", False, "link-local"),
        ("https://[::ffff:169.254.169.254]/x", False, "link-local"),
        ("https://hooks.example.com/" + "x" * 2048, False, "2048"),
        ("https://hooks.example.com/a b", False, "spaces"),
        ("https://hooks.example.com:99999/x", False, "valid URL"),
        ("https://hooks.example.com/x#frag", False, "fragment"),
    ],
)
def test_urls_refused(url: str, allow_http: bool, why: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_url(url, "url", allow_http=allow_http)
    assert why in caught.value.message


def test_an_endpoint_wants_matching_events_that_entered_the_log_after_it_existed() -> None:
    endpoint = EventEndpoint(
        id="ep_1", url="https://x.example", event_types=["payment.*", "refund.succeeded"],
        secrets=[SecretSlot("sk_1", T0)], created_at=T0, updated_at=T0,
    )  # fmt: skip
    later = T0 + timedelta(seconds=1)
    assert endpoint.wants("payment.failed", later) and endpoint.wants("refund.succeeded", T0)
    assert not endpoint.wants("refund.failed", later)
    assert not endpoint.wants("payment.failed", T0 - timedelta(milliseconds=1))
    endpoint.disabled = True
    assert not endpoint.wants("payment.failed", later)


def _key(n: int) -> str:
    return base64.b64encode(bytes(range(n))).decode()


def test_the_events_key_is_base64_of_at_least_32_bytes() -> None:
    assert Settings(events_secret_key=Secret(_key(32))).events_key == bytes(range(32))
    assert Settings(events_secret_key=Secret(_key(48).rstrip("="))).events_key == bytes(range(48))
    assert Settings().events_key == b""
    for bad in (_key(16), "not base64!"):
        with pytest.raises(ConfigError) as caught:
            Settings(events_secret_key=Secret(bad)).validate()
        assert bad not in str(caught.value)


def test_live_mode_refuses_push_delivery_without_a_key() -> None:
    env = {
        "STRIPE_SECRET_KEY": "sk_live_" + "a1B2c3D4" * 4, "STRIPE_WEBHOOK_SECRET": "whsec_x",
        "BILLING_ENABLE_FAKE": "false", "BILLING_PROCESSOR": "stripe", "MONGODB_URI": "mongodb://db",
        "BILLING_AUTH_MODE": "mtls", "BILLING_TLS_CERT": "c", "BILLING_TLS_KEY": "k", "BILLING_TLS_CLIENT_CA": "ca",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="BILLING_EVENTS_SECRET_KEY"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "BILLING_EVENTS_PUSH": "false"}).live
    settings = Settings.from_env({**env, "BILLING_EVENTS_SECRET_KEY": _key(32)})
    assert settings.events_key == bytes(range(32))
    assert not settings.push_allows_http
    assert "a1B2" not in repr(settings) and _key(32) not in repr(settings)
    assert Settings().push_allows_http
