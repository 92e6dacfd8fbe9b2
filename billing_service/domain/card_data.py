"""The one card-number detector of the code base: requests are refused, logs are masked.

A primary account number (PAN) is 13 to 19 digits that pass the Luhn check and start
like a payment card (see :func:`_plausible_issuer`). People and programs write them in
many ways, so the text is normalised first:

- Unicode: any decimal digit (fullwidth, Arabic-Indic...) counts as a digit; format
  characters (zero-width space/joiner, BOM, word joiner, soft hyphen) are dropped; every
  Unicode space (no-break, narrow, ideographic...) is a space and every dash a ``-``;
  other compatibility forms are folded with NFKC (a fullwidth full stop is ``.``).
- Separators: between digit groups, up to three of space, tab, newline, ``-``, ``.``,
  ``/`` and ``_`` (``4242.4242.4242.4242``, ``4242  4242``, ``4242 - 4242``).

A run of groups is searched for any consecutive groups holding 13-19 digits, so a card
followed by a CVC (``4242424242424242 123``) is found; a single group of more than 19
digits is never a card. To keep false positives rare, these are not cards: numbers led
by ``+`` (phone numbers), numbers starting outside the card ranges (``0``, ``1``,
``7``, ``9``, most of ``2``: epoch timestamps, dates, most order numbers), one repeated
digit, lengths the issuer's brand does not issue (a 17-digit number starting with 4),
digits inside ISO or European/US dates, IPv4 addresses, UUIDs and long hex strings, and
digit groups of identifiers that mix digits and letters (``5e0bea26``) joined to the next
number.
"""

from __future__ import annotations

import re
import unicodedata

from billing_service.domain.errors import CardDataNotAllowed, FieldViolation

__all__ = ["contains_card_number", "find_card_numbers", "luhn_valid", "mask_card_numbers", "refuse_card_data"]

MIN_DIGITS, MAX_DIGITS = 13, 19

_SEP = r"[ \t\n\r\v\f\-./_]"
# Maximal runs of digit groups joined by short separator runs (normalised text, ASCII).
_RUN = re.compile(rf"\d+(?:{_SEP}{{1,3}}\d+)*", re.ASCII)
_GROUP = re.compile(r"\d+", re.ASCII)
# One digit group, unseparated, of card length (searched even inside identifiers).
_UNSEPARATED = re.compile(rf"(?<!\d)\d{{{MIN_DIGITS},{MAX_DIGITS}}}(?!\d)", re.ASCII)
# Alphanumeric words; one with a letter between digits (a hex id, ``15T10``) is an identifier.
_WORD = re.compile(r"[A-Za-z0-9]+", re.ASCII)
# Numeric things that are not cards; their characters are blanked before the search.
_NOT_CARDS = re.compile(
    r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![0-9A-Za-z])"  # UUID
    r"|(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{24,}(?![0-9A-Za-z])"  # hex digests, ObjectIds
    r"|(?<!\d)(?:19|20)\d\d([-/.])(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])(?!\d)"  # 2024-01-15, 2024/01/15
    r"|(?<!\d)(?:0[1-9]|[12]\d|3[01])([./-])(?:0[1-9]|1[0-2])\2(?:19|20)\d\d(?!\d)"  # 15.01.2024
    r"|(?<!\d)(?:0[1-9]|1[0-2])([/.-])(?:0[1-9]|[12]\d|3[01])\3(?:19|20)\d\d(?!\d)"  # 01/15/2024
    # IPv4 addresses: card groups written with dots hold four digits, never an octet.
    r"|(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])",
    re.ASCII,
)


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


_ISSUER_FIRST = frozenset("234568")


def _plausible_issuer(digits: str) -> bool:
    """True when ``digits`` start inside a payment-card range and have a length it issues.

    ISO/IEC 7812 issuer prefixes with the lengths their brands issue: Visa 4 (13, 16, 19);
    Mastercard 51-55 and 2221-2720 (16); Amex 34/37 (15); Diners 30/36/38/39 (14-19); JCB 35
    (16-19); Mir 2200-2204 (16-19); Maestro 50/56-58 and everything starting with 6
    (Discover, UnionPay, Maestro, RuPay: 13-19); UnionPay and RuPay 81/82 (16-19). Airline
    (1), petroleum (7) and national (9) numbers are not payment cards under PCI DSS, and
    nothing issues cards starting with 0. The lengths keep a Luhn-valid 17- or 18-digit
    order number that starts with 4 or 5 from counting as a card.
    """
    n, first, two = len(digits), digits[0], int(digits[:2])
    if first == "4":
        return n in (13, 16, 19)
    if 51 <= two <= 55:
        return n == 16
    if first == "6" or two in (50, 56, 57, 58):
        return True  # 13-19, already the search's bounds
    if first == "3":
        if two in (34, 37):
            return n == 15
        if two in (30, 36, 38, 39):
            return n >= 14
        return two == 35 and n >= 16
    if first == "2":
        prefix = int(digits[:4])
        return (2200 <= prefix <= 2204 and n >= 16) or (2221 <= prefix <= 2720 and n == 16)
    if first == "8":
        return digits[1] in "12" and n >= 16
    return False


def _normalise(text: str) -> tuple[str, list[int] | None]:
    """Folds ``text`` to ASCII digits and separators (see the module docstring).

    Returns:
        The folded text and, when characters were dropped or replaced, the index in
        ``text`` of each folded character (None: the indexes are the same).
    """
    if text.isascii():
        return text, None
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ch.isascii():
            out.append(ch)
            index.append(i)
            continue
        category = unicodedata.category(ch)
        if category == "Cf":
            continue  # zero-width and other invisible format characters
        if category == "Nd":
            folded = chr(48 + unicodedata.decimal(ch))
        elif category[0] == "Z":
            folded = " "
        elif category == "Pd" or ch == "\u2212":
            folded = "-"
        else:
            nfkc = unicodedata.normalize("NFKC", ch)
            folded = nfkc if len(nfkc) == 1 and nfkc.isascii() else ch
        out.append(folded)
        index.append(i)
    return "".join(out), index


def _candidates(folded: str) -> list[tuple[int, int, str]]:
    """(start, end, digits) in ``folded`` of card numbers, left to right, not overlapping."""
    # Dates, UUIDs and hex strings are blanked (same length, so the indexes still hold).
    masked = _NOT_CARDS.sub(lambda m: "#" * len(m.group()), folded)
    # Digit groups are joined across separators only outside identifiers that mix digits
    # and letters (``5e0bea26``): their tail digits glued to the next number
    # (``ord-5e0bea26-1718000000000001``) are not the start of a card. A number glued to
    # letters on one side only (``x4242424242424242``, ``4242424242424242x``) is still
    # searched whole, and an unseparated run of 13-19 digits anywhere is searched below.
    joinable = _WORD.sub(_blank_identifier, masked)
    joined = _search(joinable, _RUN)
    unseparated = _search(masked, _UNSEPARATED)
    # Merge the two sorted, non-overlapping lists; a joined hit wins over one it overlaps.
    out: list[tuple[int, int, str]] = []
    k = 0
    for hit in unseparated:
        while k < len(joined) and joined[k][1] <= hit[0]:
            out.append(joined[k])
            k += 1
        if k < len(joined) and joined[k][0] < hit[1]:
            continue
        out.append(hit)
    out.extend(joined[k:])
    return out


def _blank_identifier(word: re.Match[str]) -> str:
    """``word`` blanked when a letter stands between two of its digits, else unchanged (linear)."""
    text = word.group()
    first = next((i for i, ch in enumerate(text) if ch.isdigit()), -1)
    if first < 0:
        return text
    last = max(i for i, ch in enumerate(text) if ch.isdigit())
    if any(ch.isalpha() for ch in text[first:last]):
        return "#" * len(text)
    return text


def _search(text: str, pattern: re.Pattern[str]) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    for run in pattern.finditer(text):
        if run.start() > 0 and text[run.start() - 1] == "+":
            continue  # +49 30 ...: a phone number
        found.extend(_cards_in_run(text, run.start(), run.end()))
    return found


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # Luhn: the digit sum of 2*d


def _cards_in_run(text: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """Card numbers made of consecutive digit groups of one run.

    Luhn sums come from prefix sums (O(1) per candidate), so a megabyte of single-digit
    groups is scanned in linear time.
    """
    groups = [(g.start(), g.end()) for g in _GROUP.finditer(text, start, end)]
    digits = "".join(text[s:e] for s, e in groups)
    if len(digits) < MIN_DIGITS:
        return []
    offsets = [0]
    for s, e in groups:
        offsets.append(offsets[-1] + e - s)
    # even[k]/odd[k]: Luhn sum of digits[:k] when the doubled positions are the odd/even ones.
    even, odd = [0], [0]
    for p, ch in enumerate(digits):
        d = ord(ch) - 48
        even.append(even[-1] + (_DOUBLED[d] if p % 2 else d))
        odd.append(odd[-1] + (d if p % 2 else _DOUBLED[d]))
    # same[k]: index of the first digit after k that differs from digits[k].
    same = [len(digits)] * len(digits)
    for p in range(len(digits) - 2, -1, -1):
        same[p] = same[p + 1] if digits[p] == digits[p + 1] else p + 1
    out: list[tuple[int, int, str]] = []
    i = 0
    while i < len(groups):
        a, hit = offsets[i], -1
        if digits[a] in _ISSUER_FIRST:
            for j in range(i, len(groups)):
                b = offsets[j + 1]
                if b - a > MAX_DIGITS:
                    break
                if b - a < MIN_DIGITS:
                    continue
                # The last digit is never doubled: doubled positions have the other parity.
                luhn = (even[b] - even[a]) if (b - 1) % 2 == 0 else (odd[b] - odd[a])
                if luhn % 10 == 0 and same[a] < b and _plausible_issuer(digits[a:b]):
                    hit = j
                    break
        if hit < 0:
            i += 1
            continue
        out.append((groups[i][0], groups[hit][1], digits[a : offsets[hit + 1]]))
        i = hit + 1
    return out


def _find(text: str) -> list[tuple[int, int, str]]:
    if len(text) < MIN_DIGITS or sum(ch.isdigit() for ch in text) < MIN_DIGITS:
        return []
    folded, index = _normalise(text)
    found = _candidates(folded)
    if index is None:
        return found
    return [(index[start], index[end - 1] + 1, digits) for start, end, digits in found]


def find_card_numbers(text: str) -> list[tuple[int, int]]:
    """Returns the (start, end) spans in ``text`` of everything that looks like a card number."""
    return [(start, end) for start, end, _ in _find(text)]


def contains_card_number(text: str) -> bool:
    """True when ``text`` holds something that looks like a card number."""
    return bool(find_card_numbers(text))


def mask_card_numbers(text: str) -> str:
    """Replaces each card number in ``text`` with ``[PAN ****<last 4>]``."""
    found = _find(text)
    if not found:
        return text
    out: list[str] = []
    last = 0
    for start, end, digits in found:
        out.append(text[last:start])
        out.append(f"[PAN ****{digits[-4:]}]")
        last = end
    out.append(text[last:])
    return "".join(out)


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
