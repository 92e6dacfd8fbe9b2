"""The one card-number detector: what it must refuse and what it must let through.

Both sides are tables: every way we know of writing a Luhn-valid card number (other
separators, Unicode digits and spaces, zero-width characters) must be found, and the
strings that look numeric but are not cards (order numbers, phone numbers, timestamps,
UUIDs, ISO dates) must not be.
"""

from __future__ import annotations

import pytest

from billing_service.domain.card_data import contains_card_number, find_card_numbers, luhn_valid
from billing_service.domain.errors import CardDataNotAllowed
from billing_service.observability.logging import redact
from billing_service.service_layer.idempotency import validate_request_id

VISA = "4242424242424242"

MUST_REFUSE = [
    # the plain forms
    VISA,
    "4242 4242 4242 4242",
    "4242-4242-4242-4242",
    "3782 822463 10005",  # Amex 4-6-5
    "5555555555554444",
    "2223003122003222",  # Mastercard 2-series
    "6011111111111117",  # Discover
    "4000056655665556",
    # the 12 separators the probe got through, and more
    "4242.4242.4242.4242",
    "4242/4242/4242/4242",
    "4242_4242_4242_4242",
    "4242\t4242\t4242\t4242",
    "4242\n4242\n4242\n4242",
    "4242\r\n4242\r\n4242\r\n4242",
    "4242  4242  4242  4242",
    "4242 - 4242 - 4242 - 4242",
    "4242\u00a04242\u00a04242\u00a04242",  # no-break space
    "card4242 4242 4242 4242",  # glued to a label on the left
    "4242x4242424242424242",  # an unseparated card inside an identifier
    "36227206271667",  # Diners, 14 digits
    "4242\u202f4242\u202f4242\u202f4242",  # narrow no-break space
    "4242\u200b4242\u200b4242\u200b4242",  # zero-width space
    "4242\u200d4242\ufeff4242\u20604242",  # zero-width joiner, BOM, word joiner
    "42\u00ad42424242424242",  # soft hyphen
    "4242\u20134242\u20144242\u20124242",  # en dash, em dash, figure dash
    "\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12",  # fullwidth
    "\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662",  # Arabic-Indic
    "4 2 4 2 4 2 4 2 4 2 4 2 4 2 4 2",
    # inside other text
    f"card {VISA} please",
    f"x{VISA}",
    f"req-{VISA}",
    f"{VISA}x",
    f"{VISA} 123",  # followed by a CVC
    "4242 4242 4242 4242 exp 12/34",
    f"note:{VISA};",
    f"order 123 then {VISA}",
]

MUST_ACCEPT = [
    "",
    "pm_card_visa",
    "cus_fake_12",
    "4242",  # last 4 only
    "424242424242425",  # 15 digits, not Luhn-valid
    "4242424242424241",  # 16 digits, Luhn fails
    "0000000000000000",  # Luhn-valid but one repeated digit
    "12345678901234567890",  # 20 digits: too long for a card
    # Luhn-valid, yet no card number starts like these
    "order 2024011512345674",  # led by a date: no card range starts with 2024
    "ORD-1000234567898",
    "invoice 10000000000000000005",
    "+1 415 555 0132",
    "+44 20 7946 0958",
    "+49 30 901820 12349",  # Luhn-valid and starts with 4, but a phone number (+)
    "(415) 555-0132 / (415) 555-0199",
    "415.555.0132",
    "1718000000006",  # epoch milliseconds (Luhn-valid)
    "1718000000000001",  # epoch microseconds (Luhn-valid)
    "1718000000000000006",  # epoch nanoseconds (Luhn-valid)
    "2024-01-15T10:30:00Z",
    "2024-01-15 10:30:00.123456",
    "2024-01-15 2024-02-15 2024-03-15",
    "2024-01-15 2024-02-14",  # 2024011520240214 is Luhn-valid
    "15.01.2024 16.02.2024",
    "01/15/2024 02/15/2024",
    "2024/01/15 2024/02/15",
    "550e8400-e29b-41d4-a716-446655440000",
    "123e4567-e89b-12d3-a456-426614174007",  # 456 426614174007 is Luhn-valid
    "12345678-1234-4234-8234-123456789012",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "507f1f77bcf86cd799439011",
    "192.168.100.200 192.168.100.201",
    "v1.2.3.4.5.6.7.8.9.10.11.12",
    "amount 1234.56 EUR",
    "5,234,567,890,124",  # an amount: commas are not card separators
    # an identifier's tail digits glued to the next number (found by the probe, ~2 % of
    # random hex prefixes): 26-1718000000000001 and a4-192.168... are Luhn-valid
    "probe-5e0bea26-1718000000000001",
    "probe-c4c00b25-192.168.100.200 192.168.100.201",
    "42424242424242426",  # Luhn-valid, 17 digits: Visa issues 13, 16 or 19
    "555555555555444426",  # Luhn-valid, 18 digits: Mastercard issues 16
]


@pytest.mark.parametrize("text", MUST_REFUSE, ids=repr)
def test_card_numbers_are_found_however_they_are_written(text: str) -> None:
    assert contains_card_number(text)
    spans = find_card_numbers(text)
    assert spans
    masked = redact(text)
    digits = "".join(ch for ch in masked if ch.isdigit())
    assert "4242424242" not in digits and "5555555555" not in digits, masked


@pytest.mark.parametrize("text", MUST_ACCEPT, ids=repr)
def test_numbers_that_are_not_cards_pass(text: str) -> None:
    assert not contains_card_number(text)
    assert redact(text) == text


def test_luhn() -> None:
    assert luhn_valid(VISA)
    assert not luhn_valid("4242424242424241")


def test_redaction_keeps_the_text_around_and_the_last_four() -> None:
    text = "pay with 4242\u200b4242\u200b4242\u200b4242 today"
    assert redact(text) == "pay with [PAN ****4242] today"


@pytest.mark.parametrize("request_id", [f"x{VISA}", f"req-{VISA}", VISA, "4242-4242-4242-4242", f"{VISA}.retry"])
def test_request_id_carrying_a_card_number_is_refused(request_id: str) -> None:
    with pytest.raises(CardDataNotAllowed) as err:
        validate_request_id(request_id)
    assert VISA not in str(err.value) and "4242-4242" not in str(err.value)


@pytest.mark.parametrize(
    "request_id", ["550e8400-e29b-41d4-a716-446655440000", "order-2024-01-15-000123", "retry.1718000000000"]
)
def test_ordinary_request_ids_pass(request_id: str) -> None:
    assert validate_request_id(request_id) == request_id


def test_the_fake_processor_uses_the_same_detector() -> None:
    import billing_service.adapters.processors._fake_records as records

    assert not hasattr(records, "looks_like_card_number")


def test_log_lines_redact_the_request_id_and_caller_they_carry() -> None:
    import io
    import json
    import logging

    from billing_service.observability.context import current_caller
    from billing_service.observability.logging import current_request_id, setup_logging

    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    handler = setup_logging("INFO", stream=buffer)
    request_token = current_request_id.set(f"req-{VISA}")
    caller_token = current_caller.set(f"svc-{VISA}")
    try:
        logging.getLogger("billing_service.test").info("something happened")
    finally:
        current_request_id.reset(request_token)
        current_caller.reset(caller_token)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        handler.close()
    line = json.loads(buffer.getvalue())
    assert (line["request_id"], line["caller"]) == ("req-[PAN ****4242]", "svc-[PAN ****4242]")


def test_large_inputs_stay_fast_enough_to_scan() -> None:
    # A megabyte of digit groups must not make the scan quadratic.
    text = "1234 " * 200_000
    assert not contains_card_number(text)
