"""Money: exact minor units, ISO 4217 exponents, refusal of what a currency can't express."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_service.domain.errors import InvalidArgument
from billing_service.domain.money import CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR, Money, currency_exponent


def test_exponents_follow_iso_4217() -> None:
    assert currency_exponent("USD") == 2
    assert currency_exponent("JPY") == 0
    assert currency_exponent("KWD") == 3
    assert currency_exponent("CLF") == 4


@pytest.mark.parametrize("currency", ["usd", "XYZ", "", "US", "EURO"])
def test_unknown_currency_is_refused_with_the_field_named(currency: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Money.parse(100, currency, field_path="amount")
    assert info.value.violations[0].field == "amount.currency"


@pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT_MINOR + 1])
def test_non_positive_or_huge_amounts_are_refused(amount: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        Money.parse(amount, "USD", field_path="amount")
    assert info.value.violations[0].field == "amount.amount_minor"


def test_floats_and_bools_are_not_money() -> None:
    with pytest.raises(InvalidArgument):
        Money(10.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Money(True, "USD")


def test_arithmetic_is_exact_and_refuses_mixed_currencies() -> None:
    assert Money(10, "USD") + Money(5, "USD") == Money(15, "USD")
    assert Money(10, "USD") - Money(15, "USD") == Money(-5, "USD")
    assert Money(333, "USD") * 3 == Money(999, "USD")
    with pytest.raises(InvalidArgument):
        _ = Money(1, "USD") + Money(1, "EUR")
    with pytest.raises(InvalidArgument):
        _ = Money(1, "USD") < Money(1, "EUR")


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [(1234, "USD", "12.34 USD"), (5, "USD", "0.05 USD"), (500, "JPY", "500 JPY"), (1005, "KWD", "1.005 KWD"),
     (-250, "EUR", "-2.50 EUR")],
)  # fmt: skip
def test_format_is_exact(amount: int, currency: str, text: str) -> None:
    assert Money(amount, currency).format() == text


@given(
    a=st.integers(min_value=-(10**12), max_value=10**12),
    b=st.integers(min_value=-(10**12), max_value=10**12),
    currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_addition_round_trips(a: int, b: int, currency: str) -> None:
    total = Money(a, currency) + Money(b, currency)
    assert (total - Money(b, currency)).amount_minor == a
    assert isinstance(total.amount_minor, int)
