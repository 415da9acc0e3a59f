"""Where GetKpis reads a range's whole days (application/kpis.day_parts): whole calendar months from the month rows,
the days around them from the day rows; a DAY or WEEK series reads days (its buckets cut months)."""

from datetime import date

import pytest
from leeway.application.kpis import day_parts

DAYS, MONTHS = "leeway_view_kpi_days", "leeway_view_kpi_months"


def d(text: str) -> int:
    return (date.fromisoformat(text) - date(1970, 1, 1)).days


@pytest.mark.parametrize(
    ("lo", "hi", "starts", "expected"),
    [
        # all time: months only
        (None, None, [], [(MONTHS, (None, None))]),
        # open start, ends mid-month: months, then that month's days
        (None, "2025-03-10", [], [(MONTHS, (None, "2025-03-01")), (DAYS, ("2025-03-01", "2025-03-10"))]),
        # starts mid-month, open end: that month's days, then months
        ("2025-01-20", None, [], [(DAYS, ("2025-01-20", "2025-02-01")), (MONTHS, ("2025-02-01", None))]),
        # days, months, days
        ("2025-01-20", "2025-04-03", [],
         [(DAYS, ("2025-01-20", "2025-02-01")), (MONTHS, ("2025-02-01", "2025-04-01")), (DAYS, ("2025-04-01", "2025-04-03"))]),
        # exactly whole months
        ("2025-02-01", "2025-05-01", [], [(MONTHS, ("2025-02-01", "2025-05-01"))]),
        # inside one month, or across a month's end without a whole month: days only
        ("2025-02-03", "2025-02-20", [], [(DAYS, ("2025-02-03", "2025-02-20"))]),
        ("2025-01-20", "2025-02-10", [], [(DAYS, ("2025-01-20", "2025-02-10"))]),
        # a MONTH series (its later buckets start on the 1st): months
        ("2025-01-20", "2025-04-01", ["2025-02-01", "2025-03-01"],
         [(DAYS, ("2025-01-20", "2025-02-01")), (MONTHS, ("2025-02-01", "2025-04-01"))]),
        # a WEEK series cuts months: days only
        ("2025-01-06", "2025-04-07", ["2025-01-13", "2025-01-20"], [(DAYS, ("2025-01-06", "2025-04-07"))]),
    ],
)
def test_day_parts(lo, hi, starts, expected) -> None:
    day = lambda text: None if text is None else d(text)  # noqa: E731
    got = day_parts((day(lo), day(hi)), [d(s) for s in starts])
    assert got == [(table, (day(a), day(b))) for table, (a, b) in expected]
