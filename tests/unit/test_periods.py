from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from leeway.domain.periods import PeriodKind, period_bounds

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_day() -> None:
    assert period_bounds(PeriodKind.DAY, utc(2025, 3, 14, 23, 59, 59)) == (utc(2025, 3, 14), utc(2025, 3, 15))


def test_day_at_exact_midnight_starts_new_day() -> None:
    assert period_bounds(PeriodKind.DAY, utc(2025, 3, 15)) == (utc(2025, 3, 15), utc(2025, 3, 16))


@pytest.mark.parametrize("day", range(10, 17))
def test_week_starts_on_monday(day: int) -> None:
    # 2025-03-10 is a Monday, 2025-03-16 a Sunday.
    start, end = period_bounds(PeriodKind.WEEK, utc(2025, 3, day, 8))
    assert start == utc(2025, 3, 10)
    assert start.weekday() == 0
    assert end == utc(2025, 3, 17)


def test_week_across_year_end() -> None:
    assert period_bounds(PeriodKind.WEEK, utc(2025, 1, 1)) == (utc(2024, 12, 30), utc(2025, 1, 6))


def test_month() -> None:
    assert period_bounds(PeriodKind.MONTH, utc(2024, 2, 29, 13)) == (utc(2024, 2, 1), utc(2024, 3, 1))


def test_december_rolls_into_january() -> None:
    assert period_bounds(PeriodKind.MONTH, utc(2024, 12, 31, 23, 59)) == (utc(2024, 12, 1), utc(2025, 1, 1))


@pytest.mark.parametrize(
    ("at", "start", "end"),
    [
        (utc(2025, 1, 1), utc(2025, 1, 1), utc(2025, 4, 1)),
        (utc(2025, 5, 20), utc(2025, 4, 1), utc(2025, 7, 1)),
        (utc(2025, 9, 30, 23), utc(2025, 7, 1), utc(2025, 10, 1)),
        (utc(2025, 11, 2), utc(2025, 10, 1), utc(2026, 1, 1)),
    ],
)
def test_quarter(at: datetime, start: datetime, end: datetime) -> None:
    assert period_bounds(PeriodKind.QUARTER, at) == (start, end)


def test_year() -> None:
    assert period_bounds(PeriodKind.YEAR, utc(2024, 7, 4)) == (utc(2024, 1, 1), utc(2025, 1, 1))


def test_other_timezones_are_converted_to_utc() -> None:
    # 00:30 on 1 April in UTC+2 is still 31 March in UTC.
    at = datetime(2025, 4, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    start, end = period_bounds(PeriodKind.MONTH, at)
    assert (start, end) == (utc(2025, 3, 1), utc(2025, 4, 1))
    assert start.tzinfo == UTC
    assert period_bounds(PeriodKind.QUARTER, at) == (utc(2025, 1, 1), utc(2025, 4, 1))


@pytest.mark.parametrize("kind", list(PeriodKind))
def test_naive_datetime_raises(kind: PeriodKind) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_bounds(kind, datetime(2025, 3, 14, 12))


@pytest.mark.parametrize("kind", list(PeriodKind))
def test_bounds_contain_the_instant(kind: PeriodKind) -> None:
    at = utc(2025, 8, 17, 5, 6, 7)
    start, end = period_bounds(kind, at)
    assert start <= at < end
    assert period_bounds(kind, end)[0] == end
