"""Detection of card data in free text, so it is refused before anything is stored.

A primary account number is 13 to 19 digits (spaces or dashes allowed between them) that
pass the Luhn check. Processor tokens (``pm_...``) never match.
"""

from __future__ import annotations

import re

from billing_service.domain.errors import CardDataNotAllowed, FieldViolation

_CANDIDATE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (only 0-9) pass the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def find_card_numbers(text: str) -> list[tuple[int, int]]:
    """Returns (start, end) spans of card-number-like, Luhn-valid digit runs in ``text``."""
    spans = []
    for match in _CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            spans.append(match.span())
    return spans


def contains_card_number(text: str) -> bool:
    """True when ``text`` holds something that looks like a card number."""
    return bool(find_card_numbers(text)) if len(text) >= 13 else False


def refuse_card_data(fields: list[tuple[str, str]]) -> None:
    """Raises ``CardDataNotAllowed`` naming every field that carries a card number.

    Args:
        fields: (field path, value) pairs of a request's free-text fields.
    """
    bad = [path for path, value in fields if contains_card_number(value)]
    if bad:
        raise CardDataNotAllowed(
            "card numbers must never be sent to the billing service; send a processor token (pm_..., vault id) instead",
            violations=[FieldViolation(path, "looks like a card number") for path in bad],
        )
