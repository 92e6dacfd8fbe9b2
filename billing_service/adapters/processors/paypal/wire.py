"""PayPal's wire formats: amounts as decimal strings, ids, HATEOAS links, timestamps, bodies.

Pure functions over PayPal's documented JSON (plain dicts), which has been stable for
years, rather than over the SDK's generated models, which were renamed between SDK majors.
Every amount sent goes through :func:`paypal_value` and every amount read back through
:func:`minor_units`, so both directions follow one rule and refuse rather than round.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from billing_service.adapters.processors.retry import bad_response
from billing_service.domain.errors import InvalidArgument
from billing_service.domain.money import Money, currency_exponent

Json = dict[str, Any]

# PayPal's supported currencies and how many decimals PayPal accepts for each. HUF and
# TWD have two ISO 4217 decimals but PayPal takes whole units only; JPY has none anyway.
# https://developer.paypal.com/reference/currency-codes/
PAYPAL_CURRENCY_DECIMALS: dict[str, int] = {
    "AUD": 2, "BRL": 2, "CAD": 2, "CNY": 2, "CZK": 2, "DKK": 2, "EUR": 2, "HKD": 2,
    "HUF": 0, "ILS": 2, "JPY": 0, "MYR": 2, "MXN": 2, "TWD": 0, "NZD": 2, "NOK": 2,
    "PHP": 2, "PLN": 2, "GBP": 2, "SGD": 2, "SEK": 2, "CHF": 2, "THB": 2, "USD": 2,
}  # fmt: skip

AMOUNT_NOT_SUPPORTED = "AMOUNT_NOT_SUPPORTED_BY_PROCESSOR"


# ---------------------------------------------------------------------------
# Amounts
# ---------------------------------------------------------------------------


def paypal_value(money: Money, *, field_path: str = "amount") -> str:
    """Formats ``money`` as PayPal's decimal string, exactly (1234 USD -> ``"12.34"``).

    Raises:
        InvalidArgument: PayPal does not support the currency, or cannot express the
            amount in it (e.g. 150 minor units of HUF, which PayPal takes in whole forint).
    """
    decimals = PAYPAL_CURRENCY_DECIMALS.get(money.currency)
    if decimals is None:
        raise InvalidArgument.field(
            f"{field_path}.currency", f"PayPal does not support {money.currency}", reason=AMOUNT_NOT_SUPPORTED
        )
    if money.amount_minor < 0:
        raise InvalidArgument.field(f"{field_path}.amount_minor", "must not be negative")
    drop = money.exponent - decimals  # ISO minor digits PayPal cannot carry
    units, rest = divmod(money.amount_minor, 10**drop)
    if rest:
        raise InvalidArgument.field(
            f"{field_path}.amount_minor",
            f"PayPal accepts {money.currency} in whole units only",
            reason=AMOUNT_NOT_SUPPORTED,
        )
    if decimals == 0:
        return str(units)
    major, minor = divmod(units, 10**decimals)
    return f"{major}.{minor:0{decimals}d}"


def paypal_amount(money: Money, *, field_path: str = "amount") -> Json:
    """PayPal's ``{"currency_code", "value"}`` object for ``money``."""
    return {"currency_code": money.currency, "value": paypal_value(money, field_path=field_path)}


def minor_units(value: str, currency: str) -> int:
    """Parses a PayPal decimal string into minor units of ``currency``, exactly.

    Raises:
        ProcessorError: ``PROCESSOR_BAD_RESPONSE`` (retryable): the string is not a plain
            decimal, or has more decimals than the currency's minor unit (PayPal never sends
            that; refuse rather than round).
        InvalidArgument: ``currency`` is not an ISO 4217 code we know (readers of PayPal
            answers turn it into ``PROCESSOR_BAD_RESPONSE``).
    """
    exponent = currency_exponent(currency)
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise bad_response("paypal", f"an amount {value!r}")
    extra = frac[exponent:]
    if extra.strip("0"):
        raise bad_response("paypal", f"{value!r} {currency}, with more decimals than {currency} has")
    scale: int = 10**exponent
    fraction = int(frac[:exponent].ljust(exponent, "0")) if exponent else 0
    return sign * (int(whole) * scale + fraction)


def money_from(amount: Mapping[str, Any]) -> Money:
    """Parses PayPal's ``{"currency_code", "value"}`` into Money."""
    currency = str(amount["currency_code"])
    return Money(minor_units(str(amount["value"]), currency), currency)


# ---------------------------------------------------------------------------
# Small JSON helpers
# ---------------------------------------------------------------------------


def text_id(resource: Any) -> str:
    """The resource's ``id`` when it is a non-empty string, else "" (for error metadata)."""
    value = resource.get("id") if isinstance(resource, Mapping) else None
    return value if isinstance(value, str) else ""


def required_id(resource: Mapping[str, Any]) -> str:
    """The resource's ``id``.

    Raises:
        ValueError: It has none (the caller reports an unreadable answer).
    """
    value = text_id(resource)
    if not value:
        raise ValueError("a resource without an id")
    return value


def link(resource: Mapping[str, Any], *rels: str) -> str:
    """The ``href`` of the first HATEOAS link whose ``rel`` is one of ``rels`` (in order)."""
    links = {str(item.get("rel")): str(item.get("href", "")) for item in resource.get("links") or []}
    for rel in rels:
        if links.get(rel):
            return links[rel]
    return ""


def link_query(href: str) -> dict[str, str]:
    """The query of a HATEOAS link, to follow it on our configured host (never the link's own)."""
    return dict(parse_qsl(urlsplit(href).query, keep_blank_values=True))


def parse_time(value: Any) -> datetime | None:
    """Parses PayPal's RFC 3339 timestamps (``2024-05-01T10:00:00Z``)."""
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def body(response: Any) -> Json:
    """The JSON body of an SDK ``ApiResponse`` as a dict (empty for 204)."""
    text = getattr(response, "text", "") or ""
    if not text.strip():
        return {}
    decoded = json.loads(text)
    return decoded if isinstance(decoded, dict) else {}


def iso_time(moment: datetime) -> str:
    """RFC 3339 with milliseconds, as PayPal writes timestamps."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
