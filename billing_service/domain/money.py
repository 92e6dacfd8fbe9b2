"""Exact money: integer minor units plus an ISO 4217 currency code."""

from __future__ import annotations

from dataclasses import dataclass

from billing_service.domain.errors import InvalidArgument

# ISO 4217 active currencies and their minor-unit exponents. Currencies not in the
# table are refused: we would not know how many minor units make a major one.
_THREE = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
_ZERO = {
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
    "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
}  # fmt: skip
_FOUR = {"CLF", "UYW"}
_TWO = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF",
    "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR",
    "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF",
    "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK",
    "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD",
    "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP",
    "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "UYU", "UZS", "VES", "WST", "XCD", "YER", "ZAR",
    "ZMW", "ZWG",
}  # fmt: skip

CURRENCY_EXPONENTS: dict[str, int] = (
    {c: 2 for c in _TWO} | {c: 0 for c in _ZERO} | {c: 3 for c in _THREE} | {c: 4 for c in _FOUR}
)

# Largest amount we accept in minor units: below 2**53 so no JSON consumer downstream can
# lose precision, and far above any single real payment.
MAX_AMOUNT_MINOR = 10**15


def currency_exponent(currency: str) -> int:
    """Returns the ISO 4217 minor-unit exponent of ``currency``.

    Raises:
        InvalidArgument: The code is not an active ISO 4217 currency.
    """
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise InvalidArgument.field(
            "currency", f"{currency!r} is not an ISO 4217 currency code", reason="UNKNOWN_CURRENCY"
        ) from None


@dataclass(frozen=True, slots=True, order=False)
class Money:
    """An exact amount: integer minor units of an ISO 4217 currency.

    Attributes:
        amount_minor: Amount in the currency's minor unit (cents for USD, yen for JPY).
        currency: Upper-case ISO 4217 alphabetic code.
    """

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; an amount of True is a bug, not a cent.
        if type(self.amount_minor) is not int:
            raise InvalidArgument.field("amount_minor", "must be an integer number of minor units")
        currency_exponent(self.currency)
        if abs(self.amount_minor) > MAX_AMOUNT_MINOR:
            raise InvalidArgument.field("amount_minor", f"magnitude must not exceed {MAX_AMOUNT_MINOR}")

    @classmethod
    def parse(cls, amount_minor: int, currency: str, *, field_path: str = "amount", positive: bool = True) -> Money:
        """Validates request input and builds a Money, naming the offending field.

        Args:
            amount_minor: The caller's amount in minor units.
            currency: The caller's currency code (case-sensitive, upper case).
            field_path: Request path used in the error, e.g. ``amount``.
            positive: Require a strictly positive amount.

        Raises:
            InvalidArgument: Unknown currency, bad magnitude, or non-positive amount.
        """
        if not currency:
            raise InvalidArgument.field(f"{field_path}.currency", "is required")
        if currency not in CURRENCY_EXPONENTS:
            raise InvalidArgument.field(
                f"{field_path}.currency",
                f"{currency!r} is not an ISO 4217 currency code",
                reason="UNKNOWN_CURRENCY",
            )
        if positive and amount_minor <= 0:
            raise InvalidArgument.field(f"{field_path}.amount_minor", "must be greater than zero")
        if abs(amount_minor) > MAX_AMOUNT_MINOR:
            raise InvalidArgument.field(f"{field_path}.amount_minor", f"must not exceed {MAX_AMOUNT_MINOR}")
        return cls(amount_minor, currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        """Returns zero in ``currency``."""
        return cls(0, currency)

    @property
    def exponent(self) -> int:
        """The currency's minor-unit exponent."""
        return CURRENCY_EXPONENTS[self.currency]

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise InvalidArgument.field(
                "currency", f"cannot combine {self.currency} with {other.currency}", reason="CURRENCY_MISMATCH"
            )

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __mul__(self, factor: int) -> Money:
        if type(factor) is not int:
            raise TypeError("Money can only be multiplied by an int")
        return Money(self.amount_minor * factor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor < other.amount_minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor <= other.amount_minor

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor > other.amount_minor

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor >= other.amount_minor

    def is_zero(self) -> bool:
        """True when the amount is zero."""
        return self.amount_minor == 0

    def format(self) -> str:
        """Human-readable decimal string, e.g. ``12.34 USD`` (exact, no floats)."""
        exp = self.exponent
        sign = "-" if self.amount_minor < 0 else ""
        units, minor = divmod(abs(self.amount_minor), 10**exp) if exp else (abs(self.amount_minor), 0)
        body = f"{units}.{minor:0{exp}d}" if exp else f"{units}"
        return f"{sign}{body} {self.currency}"

    def __str__(self) -> str:
        return self.format()
