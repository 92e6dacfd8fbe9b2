"""Push signatures (billing_service.domain.event_signing): sign, verify, rotate, derive.

Also checks that the receivers' copy in the client package and Stripe's own verifier accept
what the service signs, so "verifiable like Stripe's" is a tested claim.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
import stripe
from billing_client import push
from hypothesis import given
from hypothesis import strategies as st

from billing_service.domain import event_signing as sig
from billing_service.domain.event_signing import SecretSlot, SignatureVerificationError

NOW = 1_764_633_600
BODY = b'{"id":"bev_01","type":"payment.succeeded"}'
OLD = "whsec_old_secret_for_tests_only_0000000000000"
NEW = "whsec_new_secret_for_tests_only_1111111111111"


def reason_of(call: object) -> str:
    assert callable(call)
    with pytest.raises(SignatureVerificationError) as caught:
        call()
    return caught.value.reason


# -- sign and verify -------------------------------------------------------------------


def test_a_signed_body_verifies_and_the_header_has_the_documented_shape() -> None:
    header = sig.sign(BODY, [NEW], timestamp=NOW)
    expected = hmac.new(NEW.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert sig.verify(BODY, header, [NEW], now=NOW) == NOW


def test_rotation_one_signature_per_active_secret_newest_first() -> None:
    header = sig.sign(BODY, [NEW, OLD], timestamp=NOW)
    t, signatures = sig.parse_header(header)
    assert t == NOW
    assert signatures == (sig.compute_signature(NEW, NOW, BODY), sig.compute_signature(OLD, NOW, BODY))
    # A receiver that still holds only the old secret, one that switched already, one with both.
    for accepted in ([OLD], [NEW], [NEW, OLD], [OLD, "whsec_unrelated"]):
        assert sig.verify(BODY, header, accepted, now=NOW) == NOW


def test_a_receiver_whose_secret_was_rotated_out_refuses() -> None:
    header = sig.sign(BODY, [NEW], timestamp=NOW)
    assert reason_of(lambda: sig.verify(BODY, header, [OLD], now=NOW)) == "signature_mismatch"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, header: (body + b" ", header),  # body changed
        lambda body, header: (body.replace(b"succeeded", b"failed"), header),
        lambda body, header: (body, header.replace(f"t={NOW}", f"t={NOW + 1}")),  # time moved
        lambda body, header: (body, header[:-1] + ("0" if header[-1] != "0" else "1")),  # one hex digit
        lambda body, header: (body, header.upper().replace("T=", "t=").replace("V1=", "v1=")),  # upper-case hex
    ],
    ids=["appended", "replaced", "timestamp", "digit", "uppercase"],
)
def test_tampering_is_refused(tamper: object) -> None:
    assert callable(tamper)
    body, header = tamper(BODY, sig.sign(BODY, [NEW], timestamp=NOW))
    assert reason_of(lambda: sig.verify(body, header, [NEW], now=NOW)) in {"signature_mismatch", "malformed_header"}


@pytest.mark.parametrize(("offset", "ok"), [(-300, True), (300, True), (-301, False), (301, False), (-86400, False)])
def test_the_timestamp_must_be_within_the_tolerance_either_way(offset: int, ok: bool) -> None:
    header = sig.sign(BODY, [NEW], timestamp=NOW)
    if ok:
        assert sig.verify(BODY, header, [NEW], now=NOW - offset) == NOW
    else:
        assert reason_of(lambda: sig.verify(BODY, header, [NEW], now=NOW - offset)) == "timestamp_outside_tolerance"


def test_a_stale_replay_is_refused_even_with_a_valid_signature_and_a_custom_tolerance_admits_it() -> None:
    header = sig.sign(BODY, [NEW], timestamp=NOW)
    later = NOW + 3600
    assert reason_of(lambda: sig.verify(BODY, header, [NEW], now=later)) == "timestamp_outside_tolerance"
    assert sig.verify(BODY, header, [NEW], now=later, tolerance_seconds=3600) == NOW


def test_a_forged_header_is_refused_before_its_time_is_looked_at() -> None:
    forged = f"t={NOW - 10_000},v1={'0' * 64}"
    assert reason_of(lambda: sig.verify(BODY, forged, [NEW], now=NOW)) == "signature_mismatch"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "malformed_header"),
        ("garbage", "malformed_header"),
        (f"v1={'a' * 64}", "malformed_header"),  # no t
        (f"t=1,t=2,v1={'a' * 64}", "malformed_header"),  # two t
        (f"t=-5,v1={'a' * 64}", "malformed_header"),
        (f"t=12abc,v1={'a' * 64}", "malformed_header"),
        (f"t=1234567890123,v1={'a' * 64}", "malformed_header"),  # more than 12 digits
        ("t=1,v1=abc", "malformed_header"),  # not a sha256
        (f"t=1,v1={'g' * 64}", "malformed_header"),
        ("t=1", "no_signatures"),
        (f"t=1,v0={'a' * 64}", "no_signatures"),  # only an unknown scheme
        ("t=1," + ",".join([f"v1={'a' * 64}"] * 9), "malformed_header"),  # too many
        ("t=1,v1=" + "a" * 5000, "malformed_header"),  # too long
    ],
)
def test_malformed_headers_are_refused_with_a_reason(header: str, reason: str) -> None:
    assert reason_of(lambda: sig.verify(BODY, header, [NEW], now=NOW)) == reason


def test_unknown_schemes_and_spaces_are_tolerated() -> None:
    good = sig.compute_signature(NEW, NOW, BODY)
    header = f" t={NOW} , v0=legacy , v2={'b' * 10} , v1={good} "
    assert sig.verify(BODY, header, [NEW], now=NOW) == NOW


def test_bad_arguments_are_programming_errors() -> None:
    header = sig.sign(BODY, [NEW], timestamp=NOW)
    with pytest.raises(ValueError):
        sig.verify(BODY, header, [], now=NOW)
    with pytest.raises(ValueError):
        sig.verify(BODY, header, [""], now=NOW)
    with pytest.raises(ValueError):
        sig.verify(BODY, header, [NEW], now=NOW, tolerance_seconds=0)
    for secrets in ([], [NEW, NEW], ["a", "b", "c", "d"], [""]):
        with pytest.raises(ValueError):
            sig.sign(BODY, secrets, timestamp=NOW)
    with pytest.raises(ValueError):
        sig.sign(BODY, [NEW], timestamp=-1)


@given(body=st.binary(max_size=2048), secret=st.text(min_size=1, max_size=80), t=st.integers(0, 10**12 - 1))
def test_any_body_and_secret_round_trip_and_a_one_byte_change_breaks_it(body: bytes, secret: str, t: int) -> None:
    header = sig.sign(body, [secret], timestamp=t)
    assert sig.verify(body, header, [secret], now=t) == t
    with pytest.raises(SignatureVerificationError):
        sig.verify(body + b"\x00", header, [secret], now=t)


# -- the same scheme as Stripe's, and the receivers' copy agrees -------------------------


def test_stripes_own_verifier_accepts_our_signatures() -> None:
    body = BODY.decode()
    header = sig.sign(BODY, [NEW, OLD], timestamp=NOW)
    for secret in (NEW, OLD):
        stripe.WebhookSignature.verify_header(body, header, secret, tolerance=None)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, header, "whsec_other", tolerance=None)
    # ...and ours accepts Stripe's.
    stripe_header = stripe.WebhookSignature.generate_signature_header(body, NEW, timestamp=NOW)
    assert sig.verify(BODY, stripe_header, [NEW], now=NOW) == NOW


@given(body=st.binary(max_size=512), t=st.integers(0, 10**12 - 1), two=st.booleans())
def test_the_client_helper_agrees_with_the_service(body: bytes, t: int, two: bool) -> None:
    secrets = [NEW, OLD] if two else [NEW]
    header = sig.sign(body, secrets, timestamp=t)
    assert push.verify_signature(body, header, OLD if two else NEW, now=t) == t
    with pytest.raises(push.SignatureVerificationError) as caught:
        push.verify_signature(body + b"x", header, secrets, now=t)
    assert caught.value.reason == "signature_mismatch"


@pytest.mark.parametrize(
    "header",
    ["", "t=1", f"t=1,v1={'a' * 64}", f"t=x,v1={'a' * 64}", "t=1,v1=zz", f"t={NOW},v1={'a' * 64}"],
)
def test_the_client_helper_refuses_what_the_service_refuses_with_the_same_reason(header: str) -> None:
    with pytest.raises(SignatureVerificationError) as ours:
        sig.verify(BODY, header, [NEW], now=NOW)
    with pytest.raises(push.SignatureVerificationError) as theirs:
        push.verify_signature(BODY, header, [NEW], now=NOW)
    assert ours.value.reason == theirs.value.reason


# -- secrets: derivation and rotation ---------------------------------------------------

KEY = bytes(range(32))


def test_derived_secrets_are_stable_distinct_and_shaped_like_stripes() -> None:
    a = sig.derive_secret(KEY, "ep_1", "whsk_1")
    assert a == sig.derive_secret(KEY, "ep_1", "whsk_1")
    assert a.startswith("whsec_") and len(a) == 49
    others = {
        sig.derive_secret(KEY, "ep_2", "whsk_1"),
        sig.derive_secret(KEY, "ep_1", "whsk_2"),
        sig.derive_secret(bytes(32), "ep_1", "whsk_1"),
        sig.derive_secret(KEY, "ep_1x", "whsk_1"),
    }
    assert a not in others and len(others) == 4
    assert sig.secret_hint(a) == a[-4:]


@pytest.mark.parametrize(
    ("key", "endpoint_id", "secret_id"),
    [(b"short", "ep_1", "whsk_1"), (KEY, "", "whsk_1"), (KEY, "ep_1", ""), (KEY, "ep\x00", "whsk_1")],
)
def test_derivation_refuses_a_short_key_and_bad_ids(key: bytes, endpoint_id: str, secret_id: str) -> None:
    with pytest.raises(ValueError):
        sig.derive_secret(key, endpoint_id, secret_id)


T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_rotation_keeps_the_old_secret_signing_for_the_overlap() -> None:
    slots = [SecretSlot("s1", T0)]
    later = T0 + timedelta(days=30)
    rotated = sig.rotate_secrets(slots, "s2", now=later, overlap=timedelta(hours=24))
    assert [s.id for s in rotated] == ["s2", "s1"]
    assert rotated[0].expires_at is None and rotated[1].expires_at == later + timedelta(hours=24)
    assert [s.id for s in sig.active_secrets(rotated, later + timedelta(hours=23))] == ["s2", "s1"]
    assert [s.id for s in sig.active_secrets(rotated, later + timedelta(hours=24))] == ["s2"]


def test_a_zero_overlap_stops_the_old_secret_at_once_and_expired_ones_are_dropped() -> None:
    rotated = sig.rotate_secrets([SecretSlot("s1", T0)], "s2", now=T0, overlap=timedelta(0))
    assert [s.id for s in sig.active_secrets(rotated, T0)] == ["s2"]
    again = sig.rotate_secrets(rotated, "s3", now=T0 + timedelta(seconds=1), overlap=timedelta(hours=1))
    assert [s.id for s in again] == ["s3", "s2"]


def test_at_most_three_secrets_sign_and_an_earlier_end_is_kept() -> None:
    slots = [SecretSlot("s1", T0)]
    slots = sig.rotate_secrets(slots, "s2", now=T0 + timedelta(hours=1), overlap=timedelta(hours=2))
    slots = sig.rotate_secrets(slots, "s3", now=T0 + timedelta(hours=2), overlap=timedelta(days=7))
    by_id = {s.id: s for s in slots}
    assert by_id["s1"].expires_at == T0 + timedelta(hours=3)  # not pushed out to 7 days
    slots = sig.rotate_secrets(slots, "s4", now=T0 + timedelta(hours=2, minutes=1), overlap=timedelta(days=1))
    assert [s.id for s in slots] == ["s4", "s3", "s2"]


def test_rotation_refuses_a_bad_overlap_or_a_reused_id() -> None:
    slots = [SecretSlot("s1", T0)]
    for overlap in (timedelta(seconds=-1), timedelta(days=7, seconds=1)):
        with pytest.raises(ValueError):
            sig.rotate_secrets(slots, "s2", now=T0, overlap=overlap)
    with pytest.raises(ValueError):
        sig.rotate_secrets(slots, "s1", now=T0, overlap=timedelta(hours=1))


def test_signing_with_the_active_secrets_of_a_rotation_verifies_for_both_receivers() -> None:
    key = bytes(range(100, 132))
    slots = sig.rotate_secrets([SecretSlot("s1", T0)], "s2", now=T0, overlap=timedelta(hours=24))
    at = T0 + timedelta(hours=1)
    secrets = [sig.derive_secret(key, "ep_1", s.id) for s in sig.active_secrets(slots, at)]
    header = sig.sign(BODY, secrets, timestamp=int(at.timestamp()))
    for receiver in secrets:
        push.verify_signature(BODY, header, receiver, now=at.timestamp())
