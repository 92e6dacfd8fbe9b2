"""The PCI redaction filter on the root handler: every pattern, from any logger, everywhere in a record."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from billing_service.observability.context import current_caller
from billing_service.observability.logging import current_request_id, redact, setup_logging

VISA = "4242424242424242"
AMEX_SPACED = "3782 822463 10005"
MC_DASHED = "5555-5555-5555-4444"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Installs the JSON root handler on a buffer; restores the root logger afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    handler = setup_logging("DEBUG", stream=buffer)
    for h in saved_handlers:  # only our handler, so the buffer sees exactly what is emitted
        root.removeHandler(h)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (f"card {VISA} declined", VISA, "****4242"),
        (f"amex {AMEX_SPACED}!", AMEX_SPACED, "****0005"),
        (f"mc={MC_DASHED}", MC_DASHED, "****4444"),
        ("cvc=123 and more", "123", "cvc="),
        ('{"cvv": "9876", "x": 1}', "9876", '"cvv": "'),
        ("security_code: 555", "555", "security_code: "),
        ("'cvc2': '321'", "321", "'cvc2': '"),
        ("key sk_live_51HxYzAbCdEf0123", "51HxYzAbCdEf0123", "sk_live_"),
        ("key sk_test_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc", "sk_test_"),
        ("restricted rk_live_abcdEFGH1234", "abcdEFGH1234", "rk_live_"),
        ("restricted rk_test_abcdEFGH1234", "abcdEFGH1234", "rk_test_"),
        ("webhook whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "eyJhbGciOiJIUzI1NiJ9", "Authorization: Bearer "),
        ("authorization=Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA==", "authorization=Basic "),
        ("sent bearer abcdefgh12345678", "abcdefgh12345678", "bearer "),
        ("pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH", "YrKJUKribcBjcG8HVhfZluoGH", "_secret_"),
        ("seti_1Mm8s8LkdIwHu7ix0OXBfTRG_secret_NXDnBbEZiUTSdIdVOfLlZ5G", "NXDnBbEZiUTSdIdVOfLlZ5G", "seti_"),
        ('{"client_secret": "abc123xyz"}', "abc123xyz", '"client_secret": "'),
    ],
)
def test_each_pattern_is_masked_through_a_real_logger(captured: io.StringIO, text: str, secret: str, kept: str) -> None:
    logging.getLogger("some.third.party").warning(text)
    [line] = lines(captured)
    message = str(line["message"])
    assert secret not in message
    assert kept in message


def test_ordinary_text_is_left_alone() -> None:
    text = "payment pay_01HX succeeded for 5000 USD, request 123e4567-e89b-12d3-a456-426614174000, pm_card_visa"
    assert redact(text) == text
    assert redact("order 1234567890123") == "order 1234567890123"  # 13 digits, not Luhn-valid


def test_args_extra_fields_and_nested_values_are_masked(captured: io.StringIO) -> None:
    logging.getLogger("billing_service.x").info(
        "charging %s with key %s",
        VISA,
        "sk_live_abcdef123456",
        extra={
            "card": MC_DASHED,
            "headers": {"Authorization": "Bearer abcdefgh12345678", "X-Other": "fine"},
            "cvc": "123",
            "items": [f"pan {VISA}", 7],
        },
    )
    [line] = lines(captured)
    dumped = json.dumps(line)
    for secret in (VISA, "5555-5555-5555-4444", "abcdef123456", "abcdefgh12345678"):
        assert secret not in dumped
    assert line["cvc"] == "[REDACTED]"
    assert line["headers"] == {"Authorization": "[REDACTED]", "X-Other": "fine"}
    assert line["items"] == ["pan [PAN ****4242]", 7]


def test_exception_text_is_masked(captured: io.StringIO) -> None:
    log = logging.getLogger("billing_service.y")
    try:
        raise ValueError(f"processor said: card {VISA} cvc=999 key whsec_abcdefgh1234")
    except ValueError:
        log.exception("boom")
    [line] = lines(captured)
    exception = str(line["exception"])
    assert "Traceback" in exception and "ValueError" in exception
    assert VISA not in exception and "999" not in exception and "abcdefgh1234" not in exception


def test_stack_info_is_masked(captured: io.StringIO) -> None:
    def inner(card: str) -> None:
        logging.getLogger("z").warning("here", stack_info=True)

    inner(VISA)
    [line] = lines(captured)
    assert "stack" in line


def test_json_line_carries_request_id_caller_and_trace_id(captured: io.StringIO) -> None:
    rid_token = current_request_id.set("req-42")
    caller_token = current_caller.set("orders-service")
    try:
        logging.getLogger("billing_service.z").info("hello", extra={"payment_id": "pay_1"})
    finally:
        current_request_id.reset(rid_token)
        current_caller.reset(caller_token)
    [line] = lines(captured)
    assert line["message"] == "hello"
    assert line["level"] == "INFO"
    assert line["logger"] == "billing_service.z"
    assert line["request_id"] == "req-42"
    assert line["caller"] == "orders-service"
    assert line["trace_id"] == ""
    assert line["payment_id"] == "pay_1"
    assert str(line["ts"]).endswith("+00:00")


def test_a_broken_format_string_still_logs(captured: io.StringIO) -> None:
    logging.getLogger("w").info("value %d", f"not a number {VISA}")
    [line] = lines(captured)
    assert VISA not in str(line["message"])
