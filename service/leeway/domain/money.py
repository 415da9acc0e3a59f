"""Exact money: a Decimal amount in an ISO 4217 currency. Never a float."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from iso4217 import Currency

from .errors import FieldViolation

#: The largest amount Leeway accepts anywhere (a trillion units). Keeps every sum exact within Decimal's
#: default 28-digit precision.
MAX_AMOUNT = Decimal(10) ** 12

#: Currencies without a decimal minor unit in ISO 4217 (precious metals, test codes) get this many places.
DEFAULT_PLACES = 9


@lru_cache(maxsize=None)
def currency_places(code: str) -> int | None:
    """Decimal places of an ISO 4217 currency, or None if ``code`` is not an active ISO 4217 code."""
    if len(code) != 3 or not code.isascii() or not code.isupper():
        return None
    try:
        exponent = Currency(code).exponent
    except ValueError:
        return None
    return DEFAULT_PLACES if exponent is None else int(exponent)


def check_amount(amount: Decimal, currency: str, field: str, *, allow_zero: bool = True) -> list[FieldViolation]:
    """Every reason why ``amount currency`` is not a valid non-negative amount; empty if it is."""
    problems: list[FieldViolation] = []
    places = currency_places(currency)
    if places is None:
        problems.append(FieldViolation(f"{field}.currency_code", f"'{currency}' is not an ISO 4217 currency code"))
    if not amount.is_finite():
        problems.append(FieldViolation(field, "must be a finite number"))
        return problems
    if amount < 0:
        problems.append(FieldViolation(field, "must not be negative"))
    elif amount == 0 and not allow_zero:
        problems.append(FieldViolation(field, "must be greater than zero"))
    elif amount > MAX_AMOUNT:
        problems.append(FieldViolation(field, f"must not exceed {MAX_AMOUNT:f}"))
        return problems
    if places is not None and amount.as_tuple().exponent < -places and amount != round(amount, places):
        problems.append(FieldViolation(field, f"{currency} amounts have at most {places} decimal places"))
    return problems


def _normalized(amount: Decimal) -> Decimal:
    amount = amount.normalize()
    if amount == amount.to_integral_value():
        amount = amount.quantize(Decimal(1))
    return amount


@dataclass(frozen=True, order=False)
class Money:
    """An exact amount of one currency. Arithmetic refuses to mix currencies."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError("Money.amount must be a Decimal")

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise ValueError(f"currency mismatch: {self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def normalized(self) -> Money:
        """The same amount with trailing zeros removed (1.50 -> 1.5, 100 -> 100)."""
        return Money(_normalized(self.amount), self.currency)

    def __str__(self) -> str:
        return f"{_normalized(self.amount):f} {self.currency}"

    def to_dict(self) -> dict[str, str]:
        return {"amount": f"{self.amount:f}", "currency": self.currency}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Money:
        return cls(Decimal(data["amount"]), data["currency"])
