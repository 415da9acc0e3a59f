"""Decimal <-> google.type.Money. Floats are refused: money is exact."""

from __future__ import annotations

from decimal import Decimal

from google.type import money_pb2

_NANOS = Decimal(10) ** 9


def to_money(amount: Decimal | int | str, currency: str) -> money_pb2.Money:
    """An exact google.type.Money; ``amount`` is a Decimal, an int or a decimal string, never a float."""
    if isinstance(amount, float) or isinstance(amount, bool):
        raise TypeError("money amounts must be Decimal, int or str, not float")
    value = Decimal(amount)
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {amount!r}")
    units = int(value)
    nanos_exact = (value - units) * _NANOS
    if nanos_exact != nanos_exact.to_integral_value():
        raise ValueError(f"{amount!r} has more than 9 decimal places")
    return money_pb2.Money(currency_code=currency, units=units, nanos=int(nanos_exact))


def from_money(money: money_pb2.Money) -> Decimal:
    """The exact Decimal amount of a google.type.Money (currency in ``money.currency_code``)."""
    return Decimal(money.units) + Decimal(money.nanos) / _NANOS
