"""The KPI rollups of the insights projection: figures pre-aggregated per UTC day, so that KPIs cost
O(days x groups) instead of O(actions).

``leeway_view_kpi_days`` holds, per (team, employee, day, kind, currency, gift type), the counters GetKpis adds up:
actions, escalated, approved, refused (denied or expired), counted (recorded or approved), reversed (counted and
reversed), effective (counted and not reversed) and the effective amount (units and nanos, summed exactly).
``leeway_view_kpi_months`` holds the same counters per calendar month (``day``: its first day), so that a long range
reads a row per month and group. ``leeway_view_kpi_wins`` holds wins documented per (team, employee, day). Each
figure is kept at three levels, so that a query reads only the rows of its own filter: the organisation (team and
employee ``*``), a team (employee ``*``) and an employee (with the team the action was taken in). ``*`` is never a
valid id.

``leeway_view_kpi_gifts`` holds, per (team, employee, customer, day), how many effective gifts the customer got that
day, for the organisation and per team (an employee's customers are counted from their few gift rows);
``leeway_view_kpi_reach`` holds, per grain (``GRAINS``: all time, calendar months, ISO weeks, UTC days), (team,
employee) and day, how many customers got their first (``firsts``) and their last (``lasts``) effective gift of that
grain's bucket on that day. So the distinct customers gifted in a whole bucket, in a bucket's first days (up to a day)
or in its last days (from a day) are a sum over its days (``customers_gifted``), not a distinct count over every
gift: the projection moves a customer's first and last day of each bucket when a gift is recorded, approved or
reversed (``Rollups.drain``).

An action counts on the day it was recorded (wins: the day they were documented), as GetKpis' time range reads
them; a decision or a reversal later changes the counters of the action's own day and group by the difference
between the action's figures before and after (``Figures.of``). The projection applies the deltas of a batch
together with the batch's action rows and its tracking position, in one transaction.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from .bulk import Bulk

#: One UTC day, in microseconds (the unit of ``recorded_us``).
DAY_US = 86_400_000_000
#: The team or employee of a row that counts everyone (not a valid id: see domain/validation.py).
ALL = "*"

#: The counters of a ``leeway_view_kpi_days`` row, in order.
COUNTERS = ("action_count", "escalated", "approved", "refused", "counted", "reversed", "effective", "units", "nanos")
_KEY = ("team_id", "employee_id", "day", "kind", "currency", "gift_type")

DAYS_TABLE = (
    "team_id TEXT NOT NULL, employee_id TEXT NOT NULL, day {int} NOT NULL, kind TEXT NOT NULL, "
    "currency TEXT NOT NULL, gift_type TEXT NOT NULL, "
    + ", ".join(f"{c} {{int}} NOT NULL" for c in COUNTERS)
    + ", PRIMARY KEY (team_id, employee_id, day, kind, currency, gift_type)"
)
WINS_TABLE = (
    "team_id TEXT NOT NULL, employee_id TEXT NOT NULL, day {int} NOT NULL, wins {int} NOT NULL, "
    "PRIMARY KEY (team_id, employee_id, day)"
)

#: The same counters per calendar month (``day``: the month's first day), so that a range of many months reads a
#: row per month and group, not one per day: at a million actions (a year), a team's all-time figures read ~1,800
#: day rows, each on a page of its own (rows are written day after day for every team at once).
MONTHS_TABLE = DAYS_TABLE


def _upsert(table: str) -> Bulk:
    return Bulk.upsert(
        table, [(c, "int" if c == "day" else "text") for c in _KEY] + [(c, "int") for c in COUNTERS], _KEY, COUNTERS,
    )


_DAYS_UPSERT = _upsert("leeway_view_kpi_days")
_MONTHS_UPSERT = _upsert("leeway_view_kpi_months")
GIFTS_TABLE = (
    "team_id TEXT NOT NULL, employee_id TEXT NOT NULL, customer_id TEXT NOT NULL, day {int} NOT NULL, "
    "gifts {int} NOT NULL, PRIMARY KEY (team_id, employee_id, customer_id, day)"
)
#: Version 3's customers' first days (all time): retired by ``leeway_view_kpi_reach`` (grain ``A``), still created
#: and emptied on upgrade so that an older deployment's rows do not linger; nothing writes or reads it.
FIRSTS_TABLE = (
    "team_id TEXT NOT NULL, employee_id TEXT NOT NULL, day {int} NOT NULL, customers {int} NOT NULL, "
    "PRIMARY KEY (team_id, employee_id, day)"
)
#: The grains of the customers' reach: all time (one bucket), calendar months, ISO weeks (from Monday), UTC days.
GRAINS = ("A", "M", "W", "D")
REACH_TABLE = (
    "grain TEXT NOT NULL, team_id TEXT NOT NULL, employee_id TEXT NOT NULL, day {int} NOT NULL, "
    "firsts {int} NOT NULL, lasts {int} NOT NULL, PRIMARY KEY (grain, team_id, employee_id, day)"
)
#: The gifted customers whose ids are not in lower case: while there are none, the customers counted by their
#: exact ids are also the customers counted case-insensitively (a CASEFOLD deployment's).
CASED_TABLE = "customer_id TEXT PRIMARY KEY"
_CASED_INSERT = Bulk.upsert("leeway_view_kpi_cased", [("customer_id", "text")], ["customer_id"])
_GIFTS_KEY = [("team_id", "text"), ("employee_id", "text"), ("customer_id", "text"), ("day", "int")]
_GIFTS_UPSERT = Bulk.upsert("leeway_view_kpi_gifts", [*_GIFTS_KEY, ("gifts", "int")], [c for c, _ in _GIFTS_KEY],
                            ["gifts"])
_REACH_KEY = [("grain", "text"), ("team_id", "text"), ("employee_id", "text"), ("day", "int")]
_REACH_UPSERT = Bulk.upsert("leeway_view_kpi_reach", [*_REACH_KEY, ("firsts", "int"), ("lasts", "int")],
                            [c for c, _ in _REACH_KEY], ["firsts", "lasts"])
#: A key whose gifts (firsts and lasts) fell to nothing has no row, as a rebuild would leave it.
_GIFTS_EMPTY = Bulk.delete("leeway_view_kpi_gifts", _GIFTS_KEY, "gifts <= 0")
_REACH_EMPTY = Bulk.delete("leeway_view_kpi_reach", _REACH_KEY, "firsts <= 0 AND lasts <= 0")
#: Wins per employee over all time, in the organisation's list (``level`` ``*``) and in their team's: the top ten
#: of all time are the first rows of an index.
WIN_TOTALS_TABLE = (
    "level TEXT NOT NULL, employee_id TEXT NOT NULL, team_id TEXT NOT NULL, wins {int} NOT NULL, "
    "PRIMARY KEY (level, employee_id, team_id)"
)
_WIN_TOTALS_UPSERT = Bulk.upsert(
    "leeway_view_kpi_win_totals", [("level", "text"), ("employee_id", "text"), ("team_id", "text"), ("wins", "int")],
    ["level", "employee_id", "team_id"], ["wins"],
)
#: Wins per employee in each UTC day, ISO week and calendar month (``grain`` D, W, M; ``bucket``: its first day), in
#: the organisation's list (``level`` ``*``) and in their team's: a whole bucket's top ten are the first rows of an
#: index. Ids are ordered by code point on both engines (``{c}``: PostgreSQL's "C" collation), as the service
#: orders ties.
TOP_TABLE = (
    "grain TEXT NOT NULL, level TEXT NOT NULL, bucket {int} NOT NULL, employee_id TEXT{c} NOT NULL, "
    "team_id TEXT{c} NOT NULL, wins {int} NOT NULL, PRIMARY KEY (grain, level, bucket, employee_id, team_id)"
)
TOP_GRAINS = ("D", "W", "M")
_TOP_UPSERT = Bulk.upsert(
    "leeway_view_kpi_top",
    [("grain", "text"), ("level", "text"), ("bucket", "int"), ("employee_id", "text"), ("team_id", "text"),
     ("wins", "int")],
    ["grain", "level", "bucket", "employee_id", "team_id"], ["wins"],
)
_WINS_UPSERT = Bulk.upsert(
    "leeway_view_kpi_wins", [("team_id", "text"), ("employee_id", "text"), ("day", "int"), ("wins", "int")],
    ["team_id", "employee_id", "day"], ["wins"],
)


def day_of(us: int) -> int:
    """The UTC day (days since 1970-01-01) of a time in microseconds."""
    return us // DAY_US


_EPOCH = date(1970, 1, 1)


def bucket_of(grain: str, day: int) -> int:
    """The first day of the bucket of ``grain`` (``GRAINS``) that ``day`` is in (all time: day 0, one bucket)."""
    if grain == "D":
        return day
    if grain == "W":
        return day - (day + 3) % 7  # 1970-01-01 was a Thursday
    if grain == "M":
        return day - (_EPOCH + timedelta(days=day)).day + 1
    return 0


def bucket_end(grain: str, day: int) -> int | None:
    """The first day after the bucket of ``grain`` that ``day`` is in (all time: None, no end)."""
    if grain == "D":
        return day + 1
    if grain == "W":
        return bucket_of(grain, day) + 7
    if grain == "M":
        first = _EPOCH + timedelta(days=bucket_of(grain, day))
        return (date(first.year + first.month // 12, first.month % 12 + 1, 1) - _EPOCH).days
    return None


def spans(grain: str, days: Iterable[int]) -> dict[int, tuple[int, int]]:
    """The first and last of ``days`` in each bucket of ``grain`` they fall in."""
    out: dict[int, tuple[int, int]] = {}
    for day in days:
        bucket = bucket_of(grain, day)
        span = out.get(bucket)
        out[bucket] = (day, day) if span is None else (min(span[0], day), max(span[1], day))
    return out


def levels(team_id: str, employee_id: str) -> tuple[tuple[str, str], ...]:
    """The (team, employee) rows an action of ``employee_id`` in ``team_id`` counts in."""
    return ((ALL, ALL), (team_id, ALL), (team_id, employee_id))


@dataclass
class ActionFacts:
    """What the rollups need to know of one action (kept in memory, or read back from its view row)."""

    team_id: str
    employee_id: str
    day: int
    kind: str
    currency: str
    gift_type: str
    units: int
    nanos: int
    state: str
    escalated: int
    reversed: int
    customer_id: str = ""

    @classmethod
    def from_row(cls, row: Any) -> ActionFacts:
        return cls(
            row["team_id"], row["employee_id"], day_of(int(row["recorded_us"])), row["kind"], row["currency"],
            row["gift_type"], int(row["amount_units"]), int(row["amount_nanos"]), row["state"],
            int(row["escalated"]), int(row["reversed"]), row["customer_id"],
        )

    def figures(self) -> tuple[int, ...]:
        """This action's contribution to each counter (COUNTERS' order), as it stands."""
        counted = self.state in ("RECORDED", "APPROVED")
        effective = counted and not self.reversed
        return (
            1,
            self.escalated,
            int(self.state == "APPROVED"),
            int(self.state in ("DENIED", "EXPIRED")),
            int(counted),
            int(counted and bool(self.reversed)),
            int(effective),
            self.units if effective else 0,
            self.nanos if effective else 0,
        )


class Rollups:
    """Accumulates one batch's deltas and turns them into upserts; remembers recent actions' facts."""

    CACHE = 50_000
    _ROW_COLUMNS = (
        "action_id, team_id, employee_id, recorded_us, kind, currency, gift_type, amount_units, amount_nanos, "
        "state, escalated, reversed, customer_id"
    )

    def __init__(self) -> None:
        self._facts: OrderedDict[str, ActionFacts] = OrderedDict()
        #: The batch's changes of each counter per (team, employee, day, kind, currency, gift type) of an employee
        #: (``drain``: per level).
        self._days: dict[tuple[Any, ...], list[int]] = {}
        self._wins: dict[tuple[str, str, int], int] = {}
        self._win_totals: dict[tuple[str, str, str], int] = {}
        self._top: dict[tuple[str, str, int, str, str], int] = {}
        self._cased: set[str] = set()
        #: The batch's changes of effective gifts per (team, customer, day) (``_first_days``: per level).
        self._gifts: dict[tuple[str, str, int], int] = {}

    def forget(self) -> None:
        self._facts.clear()
        self._days.clear()
        self._wins.clear()
        self._gifts.clear()
        self._win_totals.clear()
        self._top.clear()
        self._cased.clear()

    # ------------------------------------------------------------------ the facts of actions

    def remember(self, action_id: str, facts: ActionFacts) -> None:
        self._facts[action_id] = facts
        self._facts.move_to_end(action_id)
        while len(self._facts) > self.CACHE:
            self._facts.popitem(last=False)

    def knows(self, action_id: str) -> bool:
        return action_id in self._facts

    def missing(self, action_ids: Iterable[str]) -> list[str]:
        return [a for a in dict.fromkeys(action_ids) if a not in self._facts]

    def load(self, store: Any, action_ids: list[str]) -> None:
        """Reads the facts of actions recorded in earlier batches (committed rows of the view)."""
        for start in range(0, len(action_ids), 500):
            chunk = action_ids[start : start + 500]
            named = {f"a{n}": a for n, a in enumerate(chunk)}
            with store.transaction(commit=False) as tx:
                rows = tx.execute(
                    f"SELECT {self._ROW_COLUMNS} FROM {{leeway_view_actions}} WHERE action_id IN "
                    f"({', '.join(f'%({n})s' for n in named)})",
                    named,
                ).fetchall()
            for row in rows:
                self.remember(row["action_id"], ActionFacts.from_row(row))

    # ------------------------------------------------------------------ deltas

    def recorded(self, action_id: str, facts: ActionFacts) -> None:
        self.remember(action_id, facts)
        self._add(facts, facts.figures())

    def changed(self, action_id: str, *, state: str | None = None, reversed_: bool = False) -> None:
        """A decision (``state``) or a reversal of an action seen before; unknown actions change nothing."""
        facts = self._facts.get(action_id)
        if facts is None:
            return
        before = facts.figures()
        if state is not None:
            facts.state = state
        if reversed_:
            facts.reversed = 1
        after = facts.figures()
        self._add(facts, tuple(a - b for a, b in zip(after, before)))

    def won(self, action_id: str, documented_us: int) -> None:
        facts = self._facts.get(action_id)
        if facts is None:
            return
        for team, employee in levels(facts.team_id, facts.employee_id):
            key = (team, employee, day_of(documented_us))
            self._wins[key] = self._wins.get(key, 0) + 1
        for level in (ALL, facts.team_id):
            total = (level, facts.employee_id, facts.team_id)
            self._win_totals[total] = self._win_totals.get(total, 0) + 1
            for grain in TOP_GRAINS:
                top = (grain, level, bucket_of(grain, day_of(documented_us)), facts.employee_id, facts.team_id)
                self._top[top] = self._top.get(top, 0) + 1

    def _add(self, facts: ActionFacts, delta: tuple[int, ...]) -> None:
        # Kept per employee during the batch; ``drain`` adds them up for the team and the organisation (one row a
        # key per batch, not three a change).
        if not any(delta):
            return
        team = facts.team_id
        key = (team, facts.employee_id, facts.day, facts.kind, facts.currency, facts.gift_type)
        row = self._days.get(key)
        self._days[key] = list(delta) if row is None else list(map(operator.add, row, delta))
        if delta[6] and facts.kind == "GIFT":  # effective gifts: a first day may move
            customer = facts.customer_id
            gift = (team, customer, facts.day)
            self._gifts[gift] = self._gifts.get(gift, 0) + delta[6]
            if customer != customer.lower():
                self._cased.add(customer)

    def _first_days(self, store: Any) -> list[tuple[Any, Any]]:
        """The batch's changes of effective gifts per customer and day, and of the customers' first days (read with
        the customers' saved gifts: one query per 500 customers)."""
        levels_: dict[tuple[str, str, str, int], int] = {}  # (team, employee, customer, day): the gifts' change
        for (team, customer, day), delta in self._gifts.items():
            for key in ((ALL, ALL, customer, day), (team, ALL, customer, day)):
                levels_[key] = levels_.get(key, 0) + delta
        self._gifts.clear()
        changed: dict[tuple[str, str, str], dict[int, int]] = {}
        for (team, employee, customer, day), delta in levels_.items():
            if delta:
                changed.setdefault((team, employee, customer), {})[day] = delta
        saved: dict[tuple[str, str, str], dict[int, int]] = {}
        customers = sorted({key[2] for key in changed})
        for start in range(0, len(customers), 500):
            named = {f"c{n}": c for n, c in enumerate(customers[start : start + 500])}
            with store.transaction(commit=False) as tx:
                rows = tx.execute(
                    "SELECT team_id, employee_id, customer_id, day, gifts FROM {leeway_view_kpi_gifts} WHERE "
                    f"customer_id IN ({', '.join(f'%({n})s' for n in named)}) AND gifts > 0", named,
                ).fetchall()
            for row in rows:
                key = (row["team_id"], row["employee_id"], row["customer_id"])
                if key in changed:
                    saved.setdefault(key, {})[int(row["day"])] = int(row["gifts"])
        gifts: list[tuple[str, str, str, int, int]] = []  # (team, employee, customer, day, the gifts' change)
        emptied: list[tuple[str, str, str, int]] = []
        reach: dict[tuple[str, str, str, int], list[int]] = {}  # (grain, team, employee, day) -> [firsts, lasts]
        for (team, employee, customer), deltas in changed.items():
            days = saved.get((team, employee, customer), {})
            before = set(days)
            for day, delta in deltas.items():
                days[day] = days.get(day, 0) + delta
                gifts.append((team, employee, customer, day, delta))
                if days[day] <= 0:  # no effective gift left that day: no row (as a rebuild would leave it)
                    del days[day]
                    emptied.append((team, employee, customer, day))
            if before == set(days):
                continue
            for grain in GRAINS:  # the buckets whose first or last day moved
                old, new = spans(grain, before), spans(grain, days)
                for bucket in old.keys() | new.keys():
                    if old.get(bucket) == new.get(bucket):
                        continue
                    for span, step in ((old.get(bucket), -1), (new.get(bucket), 1)):
                        if span is not None:
                            for end, day in enumerate(span):
                                counters = reach.setdefault((grain, team, employee, day), [0, 0])
                                counters[end] += step
        # Each key once per statement (distinct keys: the dicts above), every upsert before the deletes of keys
        # that fell to nothing.
        moved = [(*key, firsts, lasts) for key, (firsts, lasts) in reach.items() if firsts or lasts]
        # A day that may have lost its last first or last customer: no row then.
        lost = [row[:4] for row in moved if row[4] < 0 or row[5] < 0]
        out: list[tuple[Any, Any]] = [(_GIFTS_UPSERT, gifts), (_GIFTS_EMPTY, emptied), (_REACH_UPSERT, moved),
                                      (_REACH_EMPTY, lost), (_CASED_INSERT, [(c,) for c in sorted(self._cased)])]
        self._cased.clear()
        return [(change, rows) for change, rows in out if rows]

    def drain(self, store: Any = None) -> list[tuple[Any, Any]]:
        """The batch's upserts (bulk changes: one row per touched key), and a fresh start for the next batch.
        ``store``: where the first days of customers not changed lately are read (the view store)."""
        out: list[tuple[Any, Any]] = self._first_days(store) if self._gifts else []
        days: dict[tuple[Any, ...], list[int]] = {}
        months: dict[tuple[Any, ...], list[int]] = {}
        for (team_id, employee_id, day, kind, currency, gift_type), row in self._days.items():
            month = bucket_of("M", day)
            for team, employee in levels(team_id, employee_id):
                for sums, key in ((days, (team, employee, day, kind, currency, gift_type)),
                                  (months, (team, employee, month, kind, currency, gift_type))):
                    summed = sums.get(key)
                    sums[key] = row if summed is None else list(map(operator.add, summed, row))
        for upsert, sums in ((_DAYS_UPSERT, days), (_MONTHS_UPSERT, months)):
            if sums:
                out.append((upsert, [(*key, *row) for key, row in sums.items()]))
        for change, counts in ((_WINS_UPSERT, self._wins), (_WIN_TOTALS_UPSERT, self._win_totals),
                               (_TOP_UPSERT, self._top)):
            if counts:
                out.append((change, [(*key, wins) for key, wins in counts.items()]))
        self._win_totals.clear()
        self._top.clear()
        self._days.clear()
        self._wins.clear()
        return out
