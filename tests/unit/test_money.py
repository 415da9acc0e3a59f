from __future__ import annotations

from decimal import Decimal

import pytest

from leeway.domain.money import MAX_AMOUNT, Money, check_amount, currency_places


def fields(problems):
    return [(p.field, p.description) for p in problems]


def test_valid_amount_has_no_problems() -> None:
    assert check_amount(Decimal("12.34"), "USD", "amount") == []


@pytest.mark.parametrize("code", ["XXY", "usd", "US", "USDX", "", "ÜSD"])
def test_unknown_currency(code: str) -> None:
    problems = check_amount(Decimal("1"), code, "amount")
    assert len(problems) == 1
    assert problems[0].field == "amount.currency_code"
    assert "ISO 4217" in problems[0].description
    assert currency_places(code) is None


def test_negative_amount() -> None:
    assert fields(check_amount(Decimal("-0.01"), "USD", "amount")) == [("amount", "must not be negative")]


def test_zero_allowed_by_default_refused_with_allow_zero_false() -> None:
    assert check_amount(Decimal("0"), "USD", "amount") == []
    assert fields(check_amount(Decimal("0.00"), "USD", "amount", allow_zero=False)) == [
        ("amount", "must be greater than zero")
    ]


@pytest.mark.parametrize(
    ("amount", "currency", "places"),
    [("1.001", "USD", 2), ("1.5", "JPY", 0), ("0.0001", "EUR", 2), ("1.0001", "BHD", 3)],
)
def test_too_many_decimal_places(amount: str, currency: str, places: int) -> None:
    problems = check_amount(Decimal(amount), currency, "x.amount")
    assert fields(problems) == [("x.amount", f"{currency} amounts have at most {places} decimal places")]


@pytest.mark.parametrize(("amount", "currency"), [("1.500", "USD"), ("1.50", "USD"), ("7.000", "JPY"), ("1.001", "BHD")])
def test_trailing_zeros_beyond_minor_unit_are_fine(amount: str, currency: str) -> None:
    assert check_amount(Decimal(amount), currency, "amount") == []


def test_max_amount_is_inclusive() -> None:
    assert check_amount(MAX_AMOUNT, "USD", "amount") == []
    assert fields(check_amount(MAX_AMOUNT + Decimal("0.01"), "USD", "amount")) == [
        ("amount", f"must not exceed {MAX_AMOUNT:f}")
    ]


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_non_finite(raw: str) -> None:
    assert fields(check_amount(Decimal(raw), "USD", "amount")) == [("amount", "must be a finite number")]


def test_every_problem_reported_at_once() -> None:
    problems = check_amount(Decimal("-1"), "ZZZ", "amount")
    assert {p.field for p in problems} == {"amount", "amount.currency_code"}


def test_huge_amount_with_fraction_is_a_violation_not_a_crash() -> None:
    problems = check_amount(Decimal("123456789012345678901234567.123"), "USD", "amount")
    assert any("must not exceed" in p.description for p in problems)


def test_money_arithmetic_refuses_to_mix_currencies() -> None:
    assert Money(Decimal("1.5"), "USD") + Money(Decimal("2"), "USD") == Money(Decimal("3.5"), "USD")
    with pytest.raises(ValueError):
        Money(Decimal("1"), "USD") + Money(Decimal("1"), "EUR")
    with pytest.raises(TypeError):
        Money(1.5, "USD")  # type: ignore[arg-type]


def test_money_str_and_dict_round_trip() -> None:
    m = Money(Decimal("100.50"), "EUR")
    assert str(m) == "100.5 EUR"
    assert str(Money(Decimal("1E+2"), "EUR")) == "100 EUR"
    assert Money.from_dict(m.to_dict()) == m
