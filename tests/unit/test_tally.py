"""leeway.domain.tally: per-day spend and open holds, and what a cap has left, across period boundaries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from leeway.domain.errors import PreconditionFailed, PreconditionViolation
from leeway.domain.money import Money
from leeway.domain.periods import PeriodKind
from leeway.domain.tally import (
    HISTORY_DAYS,
    Cap,
    CapUsage,
    add_hold,
    add_spend,
    cap_usage,
    cap_breach,
    day_of,
    merged,
    new_tally,
    release_hold,
    settle_hold,
    spend_usage,
    usage,
    usages,
)

UTC = timezone.utc
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)  # a Friday, in March, in Q1


def usd(amount: str | int) -> Money:
    return Money(Decimal(amount), "USD")


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def tally_with(spend: dict[str, int], currency: str = "USD") -> dict[str, Any]:
    tally = new_tally()
    for day, amount in spend.items():
        add_spend(tally, currency, day, Decimal(amount), NOW)
    return tally


def test_day_of_is_the_utc_date() -> None:
    assert day_of(datetime(2025, 3, 14, 23, 59, 59, tzinfo=UTC)) == "2025-03-14"
    assert day_of(datetime(2025, 3, 15, 0, 0, tzinfo=UTC)) == "2025-03-15"


def test_spend_adds_up_per_currency_and_day() -> None:
    tally = new_tally()
    add_spend(tally, "USD", "2025-03-14", Decimal("10.50"), NOW)
    add_spend(tally, "USD", "2025-03-14", Decimal("2.25"), NOW)
    add_spend(tally, "USD", "2025-03-13", Decimal(1), NOW)
    add_spend(tally, "EUR", "2025-03-14", Decimal(7), NOW)
    assert tally["daily"] == {
        "USD": {"2025-03-14": Decimal("12.75"), "2025-03-13": Decimal(1)},
        "EUR": {"2025-03-14": Decimal(7)},
    }


def test_a_new_day_drops_days_older_than_the_history() -> None:
    tally = new_tally()
    old = day_of(NOW - timedelta(days=HISTORY_DAYS + 1))
    kept = day_of(NOW - timedelta(days=HISTORY_DAYS))
    add_spend(tally, "USD", old, Decimal(1), NOW - timedelta(days=HISTORY_DAYS + 1))
    add_spend(tally, "USD", kept, Decimal(2), NOW - timedelta(days=HISTORY_DAYS))
    add_spend(tally, "USD", day_of(NOW), Decimal(3), NOW)
    assert tally["daily"]["USD"] == {kept: Decimal(2), day_of(NOW): Decimal(3)}


def test_spend_on_a_day_already_kept_prunes_nothing() -> None:
    tally = new_tally()
    old = day_of(NOW - timedelta(days=HISTORY_DAYS + 5))
    tally["daily"]["USD"] = {old: Decimal(1), day_of(NOW): Decimal(1)}
    add_spend(tally, "USD", day_of(NOW), Decimal(1), NOW)
    assert old in tally["daily"]["USD"]


@pytest.mark.parametrize(
    ("start", "end", "spent"),
    [
        ("2025-03-01", "2025-04-01", 10 + 20 + 40),  # March (end exclusive)
        ("2025-03-10", "2025-03-17", 20 + 40),  # the week of Monday 10 March
        ("2025-03-14", "2025-03-15", 40),  # one day
        ("2025-01-01", "2025-04-01", 5 + 10 + 20 + 40),  # Q1
        ("2025-04-01", "2025-05-01", 80),  # April
        ("2024-01-01", "2025-01-01", 0),  # nothing in 2024
    ],
)
def test_usage_sums_the_days_in_the_half_open_range(start: str, end: str, spent: int) -> None:
    tally = tally_with({"2025-02-28": 5, "2025-03-01": 10, "2025-03-10": 20, "2025-03-14": 40, "2025-04-01": 80})
    tally["daily"]["EUR"] = {"2025-03-14": Decimal(1000)}
    assert usage(tally, "USD", at(start, 0), at(end, 0), NOW) == (Decimal(spent), Decimal(0))


def test_holds_count_until_they_expire_and_only_in_their_currency_and_period() -> None:
    tally = new_tally()
    add_hold(tally, "a1", "USD", "2025-03-14", Decimal(30), NOW + timedelta(hours=1))
    add_hold(tally, "a2", "USD", "2025-03-13", Decimal(5), NOW)  # expires exactly now: no longer counts
    add_hold(tally, "a3", "EUR", "2025-03-14", Decimal(100), NOW + timedelta(hours=1))
    add_hold(tally, "a4", "USD", "2025-02-28", Decimal(7), NOW + timedelta(hours=1))  # last month
    march = (at("2025-03-01", 0), at("2025-04-01", 0))
    assert usage(tally, "USD", *march, NOW) == (Decimal(0), Decimal(30))
    assert usage(tally, "USD", *march, NOW - timedelta(seconds=1)) == (Decimal(0), Decimal(35))
    assert usage(tally, "USD", *march, NOW + timedelta(hours=1)) == (Decimal(0), Decimal(0))


def test_a_settled_hold_becomes_spend_on_the_day_it_was_requested() -> None:
    tally = new_tally()
    add_hold(tally, "a1", "USD", "2025-03-14", Decimal(30), NOW + timedelta(hours=1))
    settle_hold(tally, "a1", NOW + timedelta(days=20))  # approved in April
    assert tally["holds"] == {}
    assert tally["daily"]["USD"] == {"2025-03-14": Decimal(30)}
    settle_hold(tally, "a1", NOW)  # twice: nothing more
    settle_hold(tally, "unknown", NOW)
    assert tally["daily"]["USD"] == {"2025-03-14": Decimal(30)}


def test_a_released_hold_stops_counting() -> None:
    tally = new_tally()
    add_hold(tally, "a1", "USD", "2025-03-14", Decimal(30), NOW + timedelta(hours=1))
    release_hold(tally, "a1")
    release_hold(tally, "a1")
    assert tally == new_tally()


def test_no_cap_has_no_usage() -> None:
    assert cap_usage(new_tally(), None, NOW) == CapUsage(None, None, None, None, None, None)


@pytest.mark.parametrize(
    ("period", "start", "end", "spent"),
    [
        (PeriodKind.DAY, "2025-03-14", "2025-03-15", 40),
        (PeriodKind.WEEK, "2025-03-10", "2025-03-17", 60),
        (PeriodKind.MONTH, "2025-03-01", "2025-04-01", 70),
        (PeriodKind.QUARTER, "2025-01-01", "2025-04-01", 75),
        (PeriodKind.YEAR, "2025-01-01", "2026-01-01", 75),
    ],
)
def test_cap_usage_counts_the_current_period(period: PeriodKind, start: str, end: str, spent: int) -> None:
    tally = tally_with({"2024-12-31": 1000, "2025-02-28": 5, "2025-03-01": 10, "2025-03-10": 20, "2025-03-14": 40})
    add_hold(tally, "a1", "USD", "2025-03-14", Decimal(3), NOW + timedelta(hours=1))
    cap = Cap(usd(200), period)
    assert cap_usage(tally, cap, NOW) == CapUsage(
        cap, at(start, 0), at(end, 0), usd(spent), usd(3), usd(200 - spent - 3)
    )


# ---------------------------------------------------------------------------- spend without a cap, per currency


def eur(amount: str | int) -> Money:
    return Money(Decimal(amount), "EUR")


def test_without_a_cap_the_spend_of_this_month_is_shown() -> None:
    tally = tally_with({"2025-02-28": 5, "2025-03-01": 10, "2025-03-14": 40})
    add_hold(tally, "a1", "USD", "2025-03-14", Decimal(3), NOW + timedelta(hours=1))
    assert spend_usage(tally, "USD", None, NOW) == CapUsage(
        None, at("2025-03-01", 0), at("2025-04-01", 0), usd(50), usd(3), None
    )


def test_usages_lists_capped_currencies_first_then_every_currency_spent_in() -> None:
    tally = tally_with({"2025-03-14": 40})
    add_spend(tally, "EUR", "2025-03-10", Decimal(7), NOW)
    add_hold(tally, "h1", "CHF", "2025-03-14", Decimal(2), NOW + timedelta(hours=1))
    week = Cap(Money(Decimal(100), "JPY"), PeriodKind.WEEK)
    got = usages(tally, {"JPY": week}, NOW)
    assert [(u.spent.currency, u.cap) for u in got] == [("JPY", week), ("CHF", None), ("EUR", None), ("USD", None)]
    assert (got[0].period_start, got[0].remaining) == (at("2025-03-10", 0), Money(Decimal(100), "JPY"))
    assert [(u.spent, u.held) for u in got[1:]] == [
        (Money(Decimal(0), "CHF"), Money(Decimal(2), "CHF")), (eur(7), eur(0)), (usd(40), usd(0))
    ]
    assert usages(new_tally(), {}, NOW) == []


def test_merged_counts_every_tally_together() -> None:
    one, two = tally_with({"2025-03-14": 40}), tally_with({"2025-03-14": 2, "2025-03-13": 1})
    add_hold(two, "h1", "USD", "2025-03-14", Decimal(3), NOW + timedelta(hours=1))
    both = merged([one, two])
    assert usage(both, "USD", at("2025-03-01", 0), at("2025-04-01", 0), NOW) == (Decimal(43), Decimal(3))
    assert one == tally_with({"2025-03-14": 40}), "the tallies merged are left alone"
    assert merged([one]) is one


def test_a_new_period_starts_from_zero() -> None:
    tally = tally_with({"2025-03-31": 90})
    cap = Cap(usd(100), PeriodKind.MONTH)
    assert cap_usage(tally, cap, at("2025-03-31", 23)).remaining == usd(10)
    assert cap_usage(tally, cap, at("2025-04-01", 0)).remaining == usd(100)


def test_remaining_can_go_below_zero_after_the_cap_is_lowered() -> None:
    tally = tally_with({"2025-03-14": 90})
    assert cap_usage(tally, Cap(usd(50), PeriodKind.MONTH), NOW).remaining == usd(-40)


# ============================================================================ cap_breach


def check(tally: dict[str, Any], cap: Cap | None, amount: Money, now: datetime = NOW) -> None:
    breach = cap_breach(tally, cap, amount, now, reason="TEAM_CAP_EXCEEDED", kind="team", subject="teams/team-a")
    if breach is not None:
        raise breach.refusal()


@pytest.mark.parametrize("amount", [0, 1, 60])
def test_an_amount_that_fits_passes(amount: int) -> None:
    tally = tally_with({"2025-03-14": 30})
    add_hold(tally, "a1", "USD", "2025-03-14", Decimal(10), NOW + timedelta(hours=1))
    check(tally, Cap(usd(100), PeriodKind.MONTH), usd(amount))


def test_no_cap_allows_anything() -> None:
    check(tally_with({"2025-03-14": 10**9}), None, usd(10**6))


def test_an_amount_over_what_remains_is_refused_with_the_figures() -> None:
    tally = tally_with({"2025-03-14": 30})
    add_hold(tally, "a1", "USD", "2025-03-14", Decimal(10), NOW + timedelta(hours=1))
    with pytest.raises(PreconditionFailed) as caught:
        check(tally, Cap(usd(100), PeriodKind.MONTH), usd("60.01"))
    error = caught.value
    assert error.reason == "TEAM_CAP_EXCEEDED"
    assert error.message == "60.01 USD exceeds what remains of the team cap (60 USD of 100 USD this period)"
    assert error.violations == [
        PreconditionViolation("TEAM_CAP", "teams/team-a", "remaining 60 USD of 100 USD until 2025-04-01T00:00:00+00:00")
    ]
    assert error.metadata == {
        "cap": "100",
        "remaining": "60",
        "requested": "60.01",
        "period_end": "2025-04-01T00:00:00+00:00",
    }


def test_a_zero_amount_passes_even_when_nothing_remains() -> None:
    check(tally_with({"2025-03-14": 150}), Cap(usd(100), PeriodKind.MONTH), usd(0))


def test_last_periods_spend_does_not_count_against_this_one() -> None:
    tally = tally_with({"2025-02-28": 100})
    check(tally, Cap(usd(100), PeriodKind.MONTH), usd(100))
    with pytest.raises(PreconditionFailed):
        check(tally, Cap(usd(100), PeriodKind.MONTH), usd(1), at("2025-02-28"))


def test_an_amount_in_another_currency_is_a_currency_mismatch() -> None:
    with pytest.raises(PreconditionFailed) as caught:
        check(new_tally(), Cap(usd(100), PeriodKind.MONTH), Money(Decimal(1), "EUR"))
    error = caught.value
    assert error.reason == "CURRENCY_MISMATCH"
    assert error.message == "the team cap is in USD; it cannot count an amount in EUR"
    assert error.violations == [PreconditionViolation("CURRENCY", "teams/team-a", "the team cap is in USD")]
    assert error.metadata == {"cap_currency": "USD", "amount_currency": "EUR"}


# ============================================================================ stored form


@pytest.mark.parametrize("cap", [Cap(usd("99.50"), PeriodKind.WEEK), Cap(Money(Decimal(1), "JPY"), PeriodKind.YEAR)])
def test_cap_round_trips(cap: Cap) -> None:
    assert Cap.from_dict(cap.to_dict()) == cap


def test_cap_stored_form() -> None:
    assert Cap(usd(5), PeriodKind.DAY).to_dict() == {"amount": {"amount": "5", "currency": "USD"}, "period": "DAY"}
    assert Cap.from_dict(None) is None
