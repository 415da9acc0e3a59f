"""Insights: KPIs and the celebration feed, as queries over the projected read models.

Every query first waits (bounded) until the projection has processed everything committed when the query
arrived, so a caller always sees their own writes; if it cannot catch up in time the query fails with a
retryable Unavailable (PROJECTION_LAGGING) instead of answering from a stale view.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlite3

import psycopg
import structlog
from eventsourcing.persistence import PersistenceError

from ..domain.customers import CustomerIdForm
from ..domain.errors import FieldViolation, InvalidArgument, Unavailable, budget_not_found
from ..domain.money import Money
from ..domain.validation import check_id
from ..projections.runner import Projections
from ..projections.views import from_micros, join_amount, micros
from .kpis import EFFECTIVE, Granularity, KpiPoint, KpiReader, Kpis, buckets, filter_sql
from . import paging
from .queries import Page
from ..projections.trail import TrailEntry
from ..domain.reasons import Reason

log = structlog.get_logger("leeway.insights")

#: Decisions read per query while listing what an approver decided.
DECISIONS_CHUNK = 200


@dataclass(frozen=True)
class WinEntry:
    action_id: str
    employee_id: str
    team_id: str
    customer_id: str
    kind: str
    amount: Money
    reason: str
    story: str
    customer_quote: str
    outcome: str
    documented_by: str
    document_time: datetime
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GoodwillSpread:
    """One customer who received goodwill from several employees (``Insights.goodwill_spread``)."""

    customer_id: str
    employees: int
    action_count: int
    amounts: list[Money]


@dataclass(frozen=True)
class WinPage:
    wins: list[WinEntry]
    next_page_token: str


class Insights:
    """The InsightsService queries."""

    def __init__(self, projections: Projections, *, wait_seconds: float, clock: Any, subjects: Any = None):
        self.projections = projections
        self.wait_seconds = wait_seconds
        self.clock = clock
        #: What says whether a team or an employee exists (``Queries.require_subjects``), so that KPIs of a team or
        #: employee nobody knows are NOT_FOUND rather than zeros.
        self.subjects = subjects

    # ------------------------------------------------------------------ KPIs

    def get_kpis(
        self, team_id: str, employee_id: str, start: datetime | None, end: datetime | None
    ) -> Kpis:
        """The KPIs of everyone, a team or an employee over [start, end) (kpis.py: from the daily rollups)."""
        extra = [FieldViolation("end_time", "must be after start_time")] if start and end and end <= start else []
        _who(team_id, employee_id, extra)
        if self.subjects is not None:
            self.subjects.require_subjects(team_id, employee_id)
        return self._kpis(team_id, employee_id, [(start, end)])[0]

    def get_kpi_series(
        self, team_id: str, employee_id: str, start: datetime | None, end: datetime | None, granularity: str
    ) -> list[KpiPoint]:
        """The KPIs of each UTC day, week (from Monday) or month of [start, end), both required."""
        problems = [
            *([FieldViolation("start_time", "is required")] if start is None else []),
            *([FieldViolation("end_time", "is required")] if end is None else []),
            *([FieldViolation("end_time", "must be after start_time")] if start and end and end <= start else []),
        ]
        if granularity not in Granularity.__members__:
            problems.append(FieldViolation("granularity", "must be DAY, WEEK or MONTH"))
        _who(team_id, employee_id, problems)
        assert start is not None and end is not None
        ranges = buckets(start, end, Granularity(granularity))
        if self.subjects is not None:
            self.subjects.require_subjects(team_id, employee_id)
        figures = self._kpis(team_id, employee_id, list(ranges))
        return [KpiPoint(lo, hi, kpis) for (lo, hi), kpis in zip(ranges, figures)]

    def _kpis(self, team_id: str, employee_id: str, ranges: list[tuple[datetime | None, datetime | None]]) -> list[Kpis]:
        # Customers by key: ids stored before normalisation count once (valid ids are ASCII: LOWER is casefold).
        folded = self.subjects is not None and self.subjects.conventions.customer_ids == CustomerIdForm.CASEFOLD
        position = self._caught_up("insights")
        with self._reading() as tx:
            reader = KpiReader(tx, team_id, employee_id, folded_customers=folded, now=self.clock())
            return reader.read(ranges, position)

    # ------------------------------------------------------------------ the celebration feed

    def list_wins(self, team_id: str, employee_id: str, page_size: int, page_token: str) -> WinPage:
        where, params = _who(team_id, employee_id)
        size = paging.page_size(page_size)
        filters = {"team_id": team_id, "employee_id": employee_id}
        before = paging.decode_token(page_token, "wins", filters)
        params["limit"] = size + 1
        if before:
            where.append("position < %(before)s")
            params["before"] = before
        self._caught_up("insights")
        with self._reading() as tx:
            rows = tx.execute(
                f"SELECT * FROM {{leeway_view_wins}} WHERE {' AND '.join(where)} ORDER BY position DESC "
                "LIMIT %(limit)s",
                params,
            ).fetchall()
        wins = [
            WinEntry(
                action_id=r["action_id"],
                employee_id=r["employee_id"],
                team_id=r["team_id"],
                customer_id=r["customer_id"],
                kind=r["kind"],
                amount=Money(join_amount(r["amount_units"], r["amount_nanos"]), r["currency"]),
                reason=r["reason"],
                story=r["story"],
                customer_quote=r["customer_quote"],
                outcome=r["outcome"],
                documented_by=r["documented_by"],
                document_time=from_micros(int(r["documented_us"])),
            )
            for r in rows[:size]
        ]
        token = paging.encode_token("wins", filters, int(rows[size - 1]["position"])) if len(rows) > size else ""
        return WinPage(wins, token)

    # ------------------------------------------------------------------ the audit trail

    def audit_trail(self, employee_id: str, customer_id: str, page_size: int, page_token: str) -> Page[TrailEntry]:
        """A budget's events, or everything done for a customer, in commit order, as sentences (the ``trail``
        projection)."""
        if bool(employee_id) == bool(customer_id):
            message = "give exactly one of employee_id and customer_id"
            raise InvalidArgument([FieldViolation("employee_id", message), FieldViolation("customer_id", message)])
        # A customer is its key and the ids it was stored under before (domain/customers.py).
        spellings: tuple[str, ...] = ()
        if customer_id and self.subjects is not None:
            key = self.subjects.conventions.customer_key(customer_id)
            if check_id(key, "customer_id"):
                spellings = (key,)
            else:
                with _store_errors():
                    spellings = self.subjects.customer_spellings(key)
        elif customer_id:
            spellings = (customer_id,)
        problems = [
            *check_id(employee_id, "employee_id", required=False),
            *check_id(spellings[0] if spellings else "", "customer_id", required=False),
        ]
        if problems:
            raise InvalidArgument(problems)
        size = paging.page_size(page_size)
        filters = {"employee_id": employee_id, "customer_id": spellings[0] if spellings else ""}
        after = paging.decode_token(page_token, "trail", filters)
        values = (employee_id,) if employee_id else spellings
        column = "employee_id" if employee_id else "customer_id"
        named = {f"v{number}": value for number, value in enumerate(values)}
        self._caught_up("trail")
        with self._reading() as tx:
            rows = tx.execute(
                f"SELECT * FROM {{leeway_view_trail}} WHERE {column} IN ({', '.join(f'%({n})s' for n in named)}) "
                "AND position > %(after)s ORDER BY position LIMIT %(limit)s",
                {**named, "after": after, "limit": size + 1},
            ).fetchall()
            if employee_id and not rows and not after:
                raise budget_not_found(employee_id)
        entries = [
            TrailEntry(
                time=from_micros(int(r["time_us"])),
                actor=r["actor"],
                employee_id=r["employee_id"],
                customer_id=r["customer_id"],
                action_id=r["action_id"],
                event_type=r["event_type"],
                policy_version=int(r["policy_version"]),
                amount=Money(Decimal(r["amount"]), r["currency"]) if r["amount"] is not None else None,
                reason=r["reason"],
                summary=r["summary"],
            )
            for r in rows[:size]
        ]
        token = paging.encode_token("trail", filters, int(rows[size - 1]["position"])) if len(rows) > size else ""
        return Page(entries, token)

    # ------------------------------------------------------------------ decisions

    def decisions_by(self, approver_id: str, after: int) -> Iterator[tuple[int, str]]:
        """(trail position, action id) of every approval and denial ``approver_id`` made, after trail position
        ``after``, in commit order (the ``trail`` read model, which sees the caller's own writes), read
        ``DECISIONS_CHUNK`` at a time as the caller consumes them."""
        self._caught_up("trail")
        position = after
        while True:
            with self._reading() as tx:
                rows = tx.execute(
                    "SELECT position, action_id FROM {leeway_view_trail} WHERE actor = %(actor)s "
                    "AND event_type IN ('Budget.ActionApproved', 'Budget.ActionDenied') AND position > %(after)s "
                    "ORDER BY position LIMIT %(limit)s",
                    {"actor": approver_id, "after": position, "limit": DECISIONS_CHUNK},
                ).fetchall()
            yield from ((int(r["position"]), str(r["action_id"])) for r in rows)
            if len(rows) < DECISIONS_CHUNK:
                return
            position = int(rows[-1]["position"])

    # ------------------------------------------------------------------ goodwill spread

    def goodwill_spread(
        self, team_id: str, start: datetime, end: datetime, *, min_employees: int = 2, limit: int = 20
    ) -> list[GoodwillSpread]:
        """Customers who received goodwill (effective actions of any kind) from at least ``min_employees``
        different employees between ``start`` and ``end`` (of ``team_id``'s employees, or anyone's): a signal of
        serial complaints. Most employees first, at most ``limit``; amounts per currency."""
        where, params = _who(team_id, "")
        if self.subjects is not None:
            self.subjects.require_subjects(team_id, "")
        where += ["recorded_us >= %(start)s", "recorded_us < %(end)s", EFFECTIVE]
        params.update(start=micros(start), end=micros(end), least=min_employees, limit=limit)
        folded = self.subjects is not None and self.subjects.conventions.customer_ids == CustomerIdForm.CASEFOLD
        customer = "LOWER(customer_id)" if folded else "customer_id"
        condition = " AND ".join(where)
        self._caught_up("insights")
        with self._reading() as tx:
            spread = tx.execute(
                f"SELECT {customer} AS customer, COUNT(DISTINCT employee_id) AS employees, COUNT(*) AS n "
                f"FROM {{leeway_view_actions}} WHERE {condition} GROUP BY {customer} "
                "HAVING COUNT(DISTINCT employee_id) >= %(least)s ORDER BY COUNT(DISTINCT employee_id) DESC, "
                f"COUNT(*) DESC, {customer} LIMIT %(limit)s",
                params,
            ).fetchall()
            found: list[GoodwillSpread] = []
            for row in spread:
                totals = tx.execute(
                    f"SELECT currency, SUM(amount_units) AS units, SUM(amount_nanos) AS nanos FROM "
                    f"{{leeway_view_actions}} WHERE {condition} AND {customer} = %(customer)s GROUP BY currency "
                    "ORDER BY currency",
                    {**params, "customer": row["customer"]},
                ).fetchall()
                found.append(GoodwillSpread(
                    customer_id=str(row["customer"]), employees=int(row["employees"]), action_count=int(row["n"]),
                    amounts=[Money(join_amount(t["units"], t["nanos"]), t["currency"]) for t in totals],
                ))  # fmt: skip
        return found

    # ------------------------------------------------------------------ helpers

    def _caught_up(self, name: str) -> int:
        """Waits until projection ``name`` holds every event committed so far; returns that position."""
        with _store_errors():
            head = self.projections.head()
            if self.projections.wait_for(name, head, self.wait_seconds):
                return head
        raise Unavailable(
            f"the {name} read model is behind the event log (it has not processed position {head} within "
            f"{self.wait_seconds:g} s); retry shortly",
            reason=Reason.PROJECTION_LAGGING,
            metadata={"projection": name, "position": str(head)},
        )

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        with _store_errors(), self.projections.store.transaction(commit=False) as tx:
            yield tx


def _who(team_id: str, employee_id: str, problems: list[FieldViolation] | None = None) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions (and their parameters) for the optional team and employee filters; InvalidArgument for bad
    ids or ``problems``."""
    problems = [
        *check_id(team_id, "team_id", required=False),
        *check_id(employee_id, "employee_id", required=False),
        *(problems or []),
    ]
    if problems:
        raise InvalidArgument(problems)
    return filter_sql(team_id, employee_id)


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except (PersistenceError, psycopg.Error, sqlite3.Error) as error:
        log.warning("views.unavailable", error_type=type(error).__name__, error=str(error))
        raise Unavailable("the read-model store is unavailable; retry shortly") from error
