"""KPIs (GetKpis) and their time series (GetKpiSeries), read from the insights projection's daily rollups.

How a time range is answered, exactly and without reading every action:

- the whole UTC days inside the range come from the rollups (``projections/rollups.py``): organisation, team or
  employee rows, one per calendar month x kind x currency x gift type for the whole months inside the range and one
  per day for the days before and after them (``day_parts``; a DAY or WEEK series reads days), and wins per day x
  employee, so the cost is O((months + days at the ends) x groups), whatever the number of actions;
- the partial days at either end of the range (a range that starts or ends inside a day) come from the action
  and win rows of those hours: at most one day's rows at each end, read through the (team|employee|-,
  recorded_us) indexes;
- two figures are not additive: ``pending_count`` (actions still waiting for approval *now*: as many as there are
  live holds, which expire) is read from the action rows through their own index, and ``customers_gifted``
  (distinct customers): for everyone or a team, sums over days of the customers' first and last gift days of each
  day, week, month and of all time (``kpi_customers.py``; counted case-insensitively only while every gifted
  customer's id is in lower case, as a CASEFOLD deployment's keys are: ``leeway_view_kpi_cased`` lists the others);
  for an employee, and for a range in the middle of every bucket that holds it, from the effective gift rows of the
  range.
- the top ten employees of all time (everyone, or a team) are the first rows of the all-time win totals' index; of
  a whole UTC day, ISO week or calendar month (every inner point of a series), the first ten rows of that bucket's
  wins per employee (``leeway_view_kpi_top``); of any other range, summed from the daily wins per employee.

A series (GetKpiSeries) is the same computation with the range cut into buckets: UTC days, ISO weeks (Monday
00:00 UTC) or calendar months (the 1st, 00:00 UTC); the first and last buckets are cut by start and end.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any

from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.money import Money
from ..projections.rollups import ALL, DAY_US, TOP_GRAINS, bucket_end, bucket_of, day_of
from ..projections.views import join_amount, micros
from .kpi_customers import CustomerCounts

NANO = Decimal("0.000000001")
TOP_EMPLOYEES = 10
KIND_ORDER = ("REFUND", "CREDIT", "RULE_BEND", "GIFT")
#: The most points one GetKpiSeries answers (a leap year of days).
MAX_SERIES_POINTS = 366

#: The actions that count as spend: recorded or approved, and not reversed.
EFFECTIVE = "(state IN ('RECORDED', 'APPROVED') AND reversed = 0)"
_RAW_FIGURES = (
    "COUNT(*) AS action_count, SUM(escalated) AS escalated, "
    "SUM(CASE WHEN state = 'APPROVED' THEN 1 ELSE 0 END) AS approved, "
    "SUM(CASE WHEN state IN ('DENIED', 'EXPIRED') THEN 1 ELSE 0 END) AS refused, "
    "SUM(CASE WHEN state IN ('RECORDED', 'APPROVED') THEN 1 ELSE 0 END) AS counted, "
    "SUM(CASE WHEN state IN ('RECORDED', 'APPROVED') AND reversed = 1 THEN 1 ELSE 0 END) AS reversed, "
    f"SUM(CASE WHEN {EFFECTIVE} THEN 1 ELSE 0 END) AS effective, "
    f"SUM(CASE WHEN {EFFECTIVE} THEN amount_units ELSE 0 END) AS units, "
    f"SUM(CASE WHEN {EFFECTIVE} THEN amount_nanos ELSE 0 END) AS nanos"
)
_ROLLUP_FIGURES = ", ".join(
    f"SUM({c}) AS {c}"
    for c in ("action_count", "escalated", "approved", "refused", "counted", "reversed", "effective", "units", "nanos")
)


class Granularity(StrEnum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


@dataclass(frozen=True)
class KindStats:
    kind: str
    currency: str
    action_count: int
    effective_count: int
    spend: Money
    average_amount: Money


@dataclass(frozen=True)
class Kpis:
    by_kind: list[KindStats]
    action_count: int
    escalated_count: int
    approval_rate: float
    reversal_rate: float
    gifts_sent: int
    gift_spend: list[Money]
    gifts_by_type: list[tuple[str, int]]
    customers_gifted: int
    wins_documented: int
    top_employees: list[tuple[str, str, int]]
    pending_count: int
    position: int


@dataclass(frozen=True)
class KpiPoint:
    start: datetime
    end: datetime
    kpis: Kpis


@dataclass
class Tally:
    """The additive figures of one bucket (rows of rollups and of partial days are added in)."""

    kinds: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # n, effective, units, nanos
    totals: Counter[str] = field(default_factory=Counter)
    gift_types: Counter[str] = field(default_factory=Counter)
    wins: int = 0
    winners: Counter[tuple[str, str]] = field(default_factory=Counter)
    pending: int = 0
    customers: set[str] = field(default_factory=set)
    customer_count: int = 0

    def add(self, row: Any) -> None:
        key = (row["kind"], row["currency"])
        effective = int(row["effective"] or 0)
        figures = self.kinds.setdefault(key, [0, 0, 0, 0])
        figures[0] += int(row["action_count"] or 0)
        figures[1] += effective
        figures[2] += int(row["units"] or 0)
        figures[3] += int(row["nanos"] or 0)
        for name in ("action_count", "escalated", "approved", "refused", "counted", "reversed"):
            self.totals[name] += int(row[name] or 0)
        if row["kind"] == "GIFT" and effective:
            self.gift_types[row["gift_type"]] += effective

    def kpis(self, position: int) -> Kpis:
        stats = []
        ordered = sorted(self.kinds.items(), key=lambda i: (KIND_ORDER.index(i[0][0]) if i[0][0] in KIND_ORDER else 99, i[0][1]))
        for (kind, currency), (count, effective, units, nanos) in ordered:
            if not count:
                continue
            spend = join_amount(units, nanos)
            average = (spend / effective).quantize(NANO, rounding=ROUND_HALF_EVEN) if effective else Decimal(0)
            stats.append(KindStats(kind, currency, count, effective, Money(spend, currency), Money(average, currency)))
        t = self.totals
        approved, refused, counted = t["approved"], t["refused"], t["counted"]
        gift_stats = [s for s in stats if s.kind == "GIFT"]
        top = sorted(self.winners.items(), key=lambda i: (-i[1], i[0][0], i[0][1]))[:TOP_EMPLOYEES]
        return Kpis(
            by_kind=stats,
            action_count=t["action_count"],
            escalated_count=t["escalated"],
            approval_rate=approved / (approved + refused) if approved + refused else 0.0,
            reversal_rate=t["reversed"] / counted if counted else 0.0,
            gifts_sent=sum(s.effective_count for s in gift_stats),
            gift_spend=[s.spend for s in gift_stats if s.effective_count],
            gifts_by_type=sorted(((g, n) for g, n in self.gift_types.items() if n), key=lambda i: (-i[1], i[0])),
            customers_gifted=self.customer_count or len(self.customers),
            wins_documented=self.wins,
            top_employees=[(e, team, n) for (e, team), n in top if n],
            pending_count=self.pending,
            position=position,
        )


@dataclass(frozen=True)
class Plan:
    """How [start, end) is read: whole days ``days`` (lo, hi; None: open) from the rollups, the rest (``edges``,
    each inside one day or less than two) from the rows."""

    days: tuple[int | None, int | None] | None
    edges: tuple[tuple[int | None, int | None], ...]


def plan(start_us: int | None, end_us: int | None) -> Plan:
    lo = None if start_us is None else -(-start_us // DAY_US)
    hi = None if end_us is None else end_us // DAY_US
    if lo is not None and hi is not None and lo >= hi:
        return Plan(None, ((start_us, end_us),))
    edges = []
    if start_us is not None and lo is not None and start_us < lo * DAY_US:
        edges.append((start_us, lo * DAY_US))
    if end_us is not None and hi is not None and end_us > hi * DAY_US:
        edges.append((hi * DAY_US, end_us))
    return Plan((lo, hi), tuple(edges))


def buckets(start: datetime, end: datetime, granularity: Granularity) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at UTC day, Monday or first-of-month boundaries; InvalidArgument past MAX_SERIES_POINTS."""
    out: list[tuple[datetime, datetime]] = []
    cursor = start
    while cursor < end:
        day = datetime(cursor.year, cursor.month, cursor.day, tzinfo=timezone.utc)
        if granularity is Granularity.DAY:
            boundary = day + timedelta(days=1)
        elif granularity is Granularity.WEEK:
            boundary = day + timedelta(days=7 - day.weekday())
        else:
            boundary = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=timezone.utc)
        out.append((cursor, min(boundary, end)))
        cursor = boundary
        if len(out) > MAX_SERIES_POINTS:
            raise InvalidArgument(
                [FieldViolation("end_time", f"the range holds more than {MAX_SERIES_POINTS} {granularity.value.lower()}s "
                                f"(at most {MAX_SERIES_POINTS} points per series): shorten it or use a coarser granularity")]
            )
    return out


def whole_bucket(start: datetime | None, end: datetime | None) -> tuple[str, int] | None:
    """(grain, first day) if [start, end) is exactly one UTC day, ISO week or calendar month, else None."""
    if start is None or end is None:
        return None
    lo, hi = micros(start), micros(end)
    if lo % DAY_US or hi % DAY_US:
        return None
    first = lo // DAY_US
    for grain in TOP_GRAINS:
        if bucket_of(grain, first) == first and bucket_end(grain, first) == hi // DAY_US:
            return grain, first
    return None


def day_parts(days: tuple[int | None, int | None], starts: Sequence[int]) -> list[tuple[str, tuple[int | None, int | None]]]:
    """Where the counters of whole days [lo, hi) (None: open) are read: the whole calendar months inside from the
    month rows, the days before and after them from the day rows. ``starts``: the first days of a series' later
    buckets; a month row is read only if no bucket starts inside its month (a DAY or WEEK series reads days)."""
    lo, hi = days
    first = lo if lo is None or bucket_of("M", lo) == lo else bucket_end("M", lo)
    last = hi if hi is None else bucket_of("M", hi)
    if any(bucket_of("M", start) != start for start in starts) or (
        first is not None and last is not None and first >= last
    ):
        return [("leeway_view_kpi_days", days)]
    parts: list[tuple[str, tuple[int | None, int | None]]] = []
    if lo is not None and first is not None and lo < first:
        parts.append(("leeway_view_kpi_days", (lo, first)))
    parts.append(("leeway_view_kpi_months", (first, last)))
    if hi is not None and last is not None and last < hi:
        parts.append(("leeway_view_kpi_days", (last, hi)))
    return parts


def filter_sql(team_id: str, employee_id: str) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions (and their parameters) of the optional team and employee filters of a read-model query."""
    where, params = ["1 = 1"], {}
    if team_id:
        where.append("team_id = %(team)s")
        params["team"] = team_id
    if employee_id:
        where.append("employee_id = %(employee)s")
        params["employee"] = employee_id
    return where, params


class KpiReader:
    """The figures of one filter (team and/or employee) over buckets, from one read transaction."""

    def __init__(self, tx: Any, team_id: str, employee_id: str, *, folded_customers: bool, now: datetime):
        self.tx = tx
        self.folded = folded_customers
        self.now_us = micros(now)
        raw, params = filter_sql(team_id, employee_id)
        self.raw, self.params = raw, params
        # The rollup rows of the filter, and (for top employees) its employees' rows.
        if employee_id:
            self.level = list(raw)
            self.people = list(raw)
        else:
            self.level = [f"team_id = {'%(team)s' if team_id else repr(ALL)}", f"employee_id = '{ALL}'"]
            self.people = [*(["team_id = %(team)s"] if team_id else []), f"employee_id <> '{ALL}'"]

    def read(self, ranges: Sequence[tuple[datetime | None, datetime | None]], position: int) -> list[Kpis]:
        """The KPIs of each range (consecutive, in order; inner boundaries at UTC midnight)."""
        tallies = [Tally() for _ in ranges]
        first, last = ranges[0][0], ranges[-1][1]
        start_us = None if first is None else micros(first)
        end_us = None if last is None else micros(last)
        # A day belongs to the bucket whose first day it is at or after.
        starts = [day_of(micros(r[0])) for r in ranges[1:] if r[0] is not None]
        many = len(ranges) > 1

        def bucket(day: Any) -> Tally:
            return tallies[bisect_right(starts, int(day)) if many else 0]

        p = plan(start_us, end_us)
        day_column = "day, " if many else ""
        if p.days is not None:
            for table, span in day_parts(p.days, starts):
                for row in self._rows(
                    f"SELECT {day_column}kind, currency, gift_type, {_ROLLUP_FIGURES} FROM {{{table}}} "
                    f"WHERE {' AND '.join([*self.level, *self._days(span)])} GROUP BY {day_column}kind, currency, gift_type"
                ):
                    bucket(row["day"] if many else 0).add(row)
            where = [*self.level, *self._days(p.days)]
            for row in self._rows(
                f"SELECT {day_column}SUM(wins) AS wins FROM {{leeway_view_kpi_wins}} WHERE {' AND '.join(where)}"
                + (" GROUP BY day" if many else "")
            ):
                bucket(row["day"] if many else 0).wins += int(row["wins"] or 0)
            people = [*self.people, *self._days(p.days)]
            # All time, everyone or a team: the all-time totals of as many wins as the tenth or more (ties are
            # ordered by id here, as every other range's are), the first rows of their index.
            level = f"level = {'%(team)s' if self.params.get('team') else repr(ALL)}"
            top = (
                f"SELECT employee_id, team_id, wins FROM {{leeway_view_kpi_win_totals}} WHERE {level} AND wins >= "
                f"COALESCE((SELECT wins FROM {{leeway_view_kpi_win_totals}} WHERE {level} ORDER BY wins DESC "
                f"LIMIT 1 OFFSET {TOP_EMPLOYEES - 1}), 1)"
            )
            # Whole days, weeks or months of everyone or a team: their top ten from the first rows of an index.
            whole = {} if "employee" in self.params else {
                n: found for n, (lo, hi) in enumerate(ranges) if (found := whole_bucket(lo, hi)) is not None}
            self._top_of_buckets(whole, tallies)
            if p.days == (None, None) and not many and "employee" not in self.params:
                for row in self._rows(top):
                    tallies[0].winners[(row["employee_id"], row["team_id"])] += int(row["wins"])
            elif not whole:  # every range's employees, a day at a time
                for row in self._rows(f"SELECT {day_column}employee_id, team_id, SUM(wins) AS wins FROM "
                                      f"{{leeway_view_kpi_wins}} WHERE {' AND '.join(people)} "
                                      f"GROUP BY {day_column}employee_id, team_id"):
                    bucket(row["day"] if many else 0).winners[(row["employee_id"], row["team_id"])] += int(row["wins"])
            for n, (lo, hi) in enumerate(ranges):  # the others (a series' first and last points): their whole days
                days = plan(None if lo is None else micros(lo), None if hi is None else micros(hi)).days
                if not whole or n in whole or days is None:
                    continue
                for row in self._rows(f"SELECT employee_id, team_id, SUM(wins) AS wins FROM {{leeway_view_kpi_wins}} "
                                      f"WHERE {' AND '.join([*self.people, *self._days(days)])} "
                                      "GROUP BY employee_id, team_id"):
                    tallies[n].winners[(row["employee_id"], row["team_id"])] += int(row["wins"])
        raw_day = f"recorded_us / {DAY_US} AS day, "
        for lo, hi in p.edges:
            where = [*self.raw, *self._span("recorded_us", lo, hi)]
            for row in self._rows(
                f"SELECT {raw_day}kind, currency, gift_type, {_RAW_FIGURES} FROM {{leeway_view_actions}} "
                f"WHERE {' AND '.join(where)} GROUP BY day, kind, currency, gift_type",
                lo=lo, hi=hi,
            ):
                bucket(row["day"]).add(row)
            wins_where = [*self.raw, *self._span("documented_us", lo, hi)]
            for row in self._rows(
                f"SELECT documented_us / {DAY_US} AS day, employee_id, team_id, COUNT(*) AS wins "
                f"FROM {{leeway_view_wins}} WHERE {' AND '.join(wins_where)} GROUP BY day, employee_id, team_id",
                lo=lo, hi=hi,
            ):
                target = bucket(row["day"])
                target.wins += int(row["wins"])
                target.winners[(row["employee_id"], row["team_id"])] += int(row["wins"])
        # Not additive: read over the whole range from the action rows.
        span = self._span("recorded_us", start_us, end_us)
        pending = [*self.raw, "state = 'PENDING_APPROVAL'", "expires_us > %(now)s", *span]
        gifts = [*self.raw, "kind = 'GIFT'", EFFECTIVE, *span]
        customer = "LOWER(customer_id)" if self.folded else "customer_id"
        if many:
            for row in self._rows(f"SELECT recorded_us FROM {{leeway_view_actions}} WHERE {' AND '.join(pending)}",
                                  lo=start_us, hi=end_us):
                bucket(day_of(int(row["recorded_us"]))).pending += 1
        else:
            (row,) = self._rows(f"SELECT COUNT(*) AS n FROM {{leeway_view_actions}} WHERE {' AND '.join(pending)}",
                                lo=start_us, hi=end_us)
            tallies[0].pending = int(row["n"] or 0)
        if "employee" not in self.params and (not self.folded or self._all_lower_case()):
            # Everyone or a team: from the customers' reach (kpi_customers.py), O(days).
            counts = CustomerCounts(self._rows, self.level, [*self.raw, "kind = 'GIFT'", EFFECTIVE]).counts(
                [(None if lo is None else micros(lo), None if hi is None else micros(hi)) for lo, hi in ranges])
            for tally, count in zip(tallies, counts):
                tally.customer_count = count
        elif many:  # an employee's few gift rows
            for row in self._rows(
                f"SELECT DISTINCT recorded_us / {DAY_US} AS day, {customer} AS customer FROM {{leeway_view_actions}} "
                f"WHERE {' AND '.join(gifts)}", lo=start_us, hi=end_us,
            ):
                bucket(row["day"]).customers.add(row["customer"])
        else:
            (row,) = self._rows(
                f"SELECT COUNT(DISTINCT {customer}) AS n FROM {{leeway_view_actions}} WHERE {' AND '.join(gifts)}",
                lo=start_us, hi=end_us,
            )
            tallies[0].customer_count = int(row["n"] or 0)
        return [t.kpis(position) for t in tallies]

    def _top_of_buckets(self, whole: dict[int, tuple[str, int]], tallies: list[Tally]) -> None:
        """The ten employees with the most wins (ties: by id) of each whole bucket (range number -> grain, first day),
        from ``leeway_view_kpi_top``: ten rows of its index a bucket."""
        level = self.params.get("team") or ALL
        top = (f"SELECT employee_id, team_id, wins FROM {{leeway_view_kpi_top}} WHERE grain = %(grain)s AND "
               f"level = %(level)s AND bucket = {{bucket}} ORDER BY wins DESC, employee_id, team_id LIMIT {TOP_EMPLOYEES}")
        for grain in sorted({g for g, _ in whole.values()}):
            ranges = {first: n for n, (g, first) in whole.items() if g == grain}
            if self.tx.sqlite:  # in-process: a query a bucket
                for first, n in ranges.items():
                    for row in self._rows(top.replace("{bucket}", "%(first)s"), grain=grain, level=level, first=first):
                        tallies[n].winners[(row["employee_id"], row["team_id"])] += int(row["wins"])
                continue
            lateral = top.replace("{bucket}", "b.bucket")
            for row in self._rows(
                "SELECT b.bucket, t.employee_id, t.team_id, t.wins FROM unnest(%(buckets)s::bigint[]) AS b(bucket) "
                f"CROSS JOIN LATERAL ({lateral}) t", grain=grain, level=level, buckets=list(ranges),
            ):
                tallies[ranges[int(row["bucket"])]].winners[(row["employee_id"], row["team_id"])] += int(row["wins"])

    def _all_lower_case(self) -> bool:
        """Whether every gifted customer's id is in lower case (so its exact id is also its case-folded one)."""
        (row,) = self._rows("SELECT COUNT(*) AS n FROM (SELECT 1 FROM {leeway_view_kpi_cased} LIMIT 1) c")
        return not int(row["n"] or 0)

    @staticmethod
    def _days(days: tuple[int | None, int | None]) -> list[str]:
        lo, hi = days
        return [*([f"day >= {int(lo)}"] if lo is not None else []), *([f"day < {int(hi)}"] if hi is not None else [])]

    @staticmethod
    def _span(column: str, lo: int | None, hi: int | None) -> list[str]:
        return [*([f"{column} >= %(lo)s"] if lo is not None else []), *([f"{column} < %(hi)s"] if hi is not None else [])]

    def _rows(self, sql: str, **extra: Any) -> list[Any]:
        return self.tx.execute(sql, {**self.params, "now": self.now_us, **extra}).fetchall()
