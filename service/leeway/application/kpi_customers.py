"""``customers_gifted`` of KPI ranges (GetKpis, each point of GetKpiSeries) from the customers' reach
(``leeway_view_kpi_reach``, ``projections/rollups.py``): O(days), not O(gifts).

The insights projection keeps, per grain (all time, calendar month, ISO week, UTC day), level (everyone, a team) and
day, how many customers got their first (``firsts``) and their last (``lasts``) effective gift of the day's bucket
on that day. So the distinct customers gifted

- in the first days of a bucket, from its first day up to a day (a whole bucket, all time, a range open at its start,
  the last point of a series) are the sum of the bucket's ``firsts`` of those days;
- in its last days, from a day to its end (a range open at its end, the first point of a series) are the sum of its
  ``lasts`` of those days;

and a range that starts or ends inside a day adds the customers gifted in those hours and on no day of the rest
(that day's action rows, each looked up in ``leeway_view_kpi_gifts``). A range in the middle of every bucket that
holds it (a GetKpis range ending before the last gift, inside no bucket's first or last days) is counted from its
action rows: O(effective gifts in the range).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..projections.rollups import DAY_US, bucket_end, bucket_of

#: The grains tried for a range within one bucket, finest first (the fewest rows; all time is tried separately).
_GRAINS = ("D", "W", "M")


@dataclass(frozen=True)
class Reach:
    """How one range's customers are counted: ``column`` summed over the days [lo, hi) (None: open) of ``grain``'s
    rows, plus the customers gifted in the action rows of ``edge`` = (a, b, x, y): in [a, b) microseconds, with no
    effective gift on the days [x, y)."""

    grain: str
    column: str
    lo: int | None
    hi: int | None
    edge: tuple[int, int, int | None, int | None] | None = None


def reach(start_us: int | None, end_us: int | None) -> Reach | None:
    """The reach that counts [start_us, end_us) (None: open), or None if it lies in the middle of every bucket."""
    if start_us is None and end_us is None:
        return Reach("A", "firsts", None, None)
    if start_us is None:
        assert end_us is not None
        hi = end_us // DAY_US
        return Reach("A", "firsts", None, hi, (hi * DAY_US, end_us, None, hi) if end_us % DAY_US else None)
    if end_us is None:
        return after(start_us)
    first, last = start_us // DAY_US, -(-end_us // DAY_US) - 1  # the days the range touches
    lo, hi = -(-start_us // DAY_US), end_us // DAY_US  # its whole days: [lo, hi)
    for grain in _GRAINS:
        bucket = bucket_of(grain, first)
        if bucket_of(grain, last) != bucket:
            continue
        end = bucket_end(grain, first)
        assert end is not None
        if start_us == bucket * DAY_US:
            return Reach(grain, "firsts", bucket, hi, (hi * DAY_US, end_us, bucket, hi) if end_us % DAY_US else None)
        if end_us == end * DAY_US:
            return Reach(grain, "lasts", lo, end, (start_us, lo * DAY_US, lo, end) if start_us % DAY_US else None)
    return None


def after(start_us: int) -> Reach:
    """The reach of everything from ``start_us`` on (all time's last days): also that of [start_us, end) when nothing
    is gifted at or after end."""
    lo = -(-start_us // DAY_US)
    return Reach("A", "lasts", lo, None, (start_us, lo * DAY_US, lo, None) if start_us % DAY_US else None)


class CustomerCounts:
    """Counts distinct customers gifted over ranges for one level (everyone or a team).

    ``rows(sql, **params)`` runs a query in the reader's transaction; ``level``: the conditions of the level's
    rollup rows; ``gifts``: those of the filter's effective gift rows (``leeway_view_actions``), without a time span.
    """

    def __init__(self, rows: Callable[..., list[Any]], level: Sequence[str], gifts: Sequence[str]):
        self.rows, self.level, self.gifts = rows, list(level), list(gifts)

    def counts(self, ranges: Sequence[tuple[int | None, int | None]]) -> list[int]:
        plans = [reach(start, end) for start, end in ranges]
        for n, (start, end) in enumerate(ranges):
            if plans[n] is None and start is not None and end is not None and not self._gifted_from(end):
                plans[n] = after(start)
        sums = self._sums([p for p in plans if p is not None])
        out = []
        for (start, end), plan in zip(ranges, plans):
            if plan is None:
                (row,) = self.rows(
                    f"SELECT COUNT(DISTINCT customer_id) AS n FROM {{leeway_view_actions}} WHERE "
                    f"{' AND '.join([*self.gifts, 'recorded_us >= %(lo)s', 'recorded_us < %(hi)s'])}", lo=start, hi=end,
                )
                out.append(int(row["n"] or 0))
                continue
            out.append(sums(plan) + (self._edge(*plan.edge) if plan.edge else 0))
        return out

    def _sums(self, plans: list[Reach]) -> Callable[[Reach], int]:
        """Reads each grain's rows over the days its plans sum (one query a grain) and sums them per plan."""
        got: dict[str, list[Any]] = {}
        for grain in {p.grain for p in plans}:
            mine = [p for p in plans if p.grain == grain]
            lows, highs = [p.lo for p in mine], [p.hi for p in mine]
            lo = None if None in lows else min(lo for lo in lows if lo is not None)
            hi = None if None in highs else max(hi for hi in highs if hi is not None)
            where = [f"grain = '{grain}'", *self.level, *([f"day >= {int(lo)}"] if lo is not None else []),
                     *([f"day < {int(hi)}"] if hi is not None else [])]
            got[grain] = self.rows(f"SELECT day, firsts, lasts FROM {{leeway_view_kpi_reach}} WHERE {' AND '.join(where)}")

        def total(plan: Reach) -> int:
            return sum(
                int(row[plan.column]) for row in got[plan.grain]
                if (plan.lo is None or int(row["day"]) >= plan.lo) and (plan.hi is None or int(row["day"]) < plan.hi)
            )

        return total

    def _edge(self, a: int, b: int, x: int | None, y: int | None) -> int:
        """Customers gifted in [a, b) (hours of one day) with no effective gift of the level on the days [x, y): a
        look-up of each in the gifts' primary key (the OFFSET keeps PostgreSQL from hashing every gift of the level
        in [x, y) instead, O(the log) for a range open at its start)."""
        days = [*([f"g.day >= {int(x)}"] if x is not None else []), *([f"g.day < {int(y)}"] if y is not None else [])]
        if x is not None and y is not None and x >= y:
            days = ["1 = 0"]
        (row,) = self.rows(
            f"SELECT COUNT(DISTINCT a.customer_id) AS n FROM {{leeway_view_actions}} a WHERE "
            f"{' AND '.join([*self.gifts, 'recorded_us >= %(lo)s', 'recorded_us < %(hi)s'])} AND NOT EXISTS (SELECT 1 "
            f"FROM {{leeway_view_kpi_gifts}} g WHERE g.customer_id = a.customer_id AND {' AND '.join(self.level)} "
            f"AND {' AND '.join(days or ['1 = 1'])} AND g.gifts > 0 LIMIT 1 OFFSET 0)",
            lo=a, hi=b,
        )
        return int(row["n"] or 0)

    def _gifted_from(self, end_us: int) -> bool:
        """Whether an effective gift of the filter was recorded at or after ``end_us``."""
        rows = self.rows(f"SELECT 1 AS n FROM {{leeway_view_actions}} WHERE "
                         f"{' AND '.join([*self.gifts, 'recorded_us >= %(lo)s'])} LIMIT 1", lo=end_us)
        return bool(rows)
