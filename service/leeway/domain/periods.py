"""Calendar budget periods in UTC."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from enum import Enum


class PeriodKind(str, Enum):
    """How long a budget period lasts. Values are stored in events: never rename them."""

    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    QUARTER = "QUARTER"
    YEAR = "YEAR"


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return at.astimezone(timezone.utc)


def _add_months(start: datetime, months: int) -> datetime:
    index = start.year * 12 + (start.month - 1) + months
    return start.replace(year=index // 12, month=index % 12 + 1)


def period_bounds(kind: PeriodKind, at: datetime) -> tuple[datetime, datetime]:
    """The calendar period of ``kind`` containing ``at``: (start inclusive, end exclusive), both UTC."""
    at = _utc(at)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind is PeriodKind.DAY:
        return day, day + timedelta(days=1)
    if kind is PeriodKind.WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if kind is PeriodKind.MONTH:
        start = day.replace(day=1)
        return start, _add_months(start, 1)
    if kind is PeriodKind.QUARTER:
        start = day.replace(day=1, month=(at.month - 1) // 3 * 3 + 1)
        return start, _add_months(start, 3)
    if kind is PeriodKind.YEAR:
        start = day.replace(day=1, month=1)
        return start, start.replace(year=start.year + 1)
    raise ValueError(f"unknown period kind {kind!r}")
