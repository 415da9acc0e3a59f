"""The read models: projections of the event log (``eventsourcing.projection.Projection``) into view tables.

Each projection turns a run of domain events into SQL changes (``changes``); the runner applies a batch's
changes and the new tracking position in one transaction (``ViewStore.apply``). ``process_event`` does the
same for one event, as the library's ``ProjectionRunner`` calls it.

- ``insights``: one row per action (kind, amount, state, team, customer, times) and one per documented win, and
  the KPI rollups (``rollups.py``: figures per UTC day x team x employee x kind x currency x gift type, wins per
  day). KPIs and the celebration feed (InsightsService) are queries over these.
- ``balances``: one row per budget, as the budget stood after its latest event (spent, held, remaining, period).
"""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from ..adapters.storage import advance
from ..domain.budget import Budget
from ..domain.ids import format_action_id
from ..domain.views import EXPIRED, PENDING_APPROVAL, RECORDED, action_view
from ..domain.views import APPROVED as APPROVED_STATE
from ..domain.views import DENIED as DENIED_STATE
from .bulk import Bulk
from .rollups import DAY_US, ActionFacts, Rollups
from .store import ViewStore
from .trail import event_entry, recorded_entry

#: A view change: SQL and its parameters (a dict), or a ``Bulk`` change and its rows (tuples).
Change = tuple[Any, Any]

_BUDGET_TOPIC = f"{Budget.__module__}:{Budget.__qualname__}."
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros(at: datetime) -> int:
    """Microseconds since the epoch (exact, for range queries on both engines)."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """The inverse of ``micros``."""
    return _EPOCH + timedelta(microseconds=value)


def split_amount(amount: Decimal) -> tuple[int, int]:
    """(units, nanos) of a non-negative amount, as google.type.Money carries it (sums stay exact in SQL)."""
    units = int(amount)
    nanos = int((amount - units) * 1_000_000_000)
    return units, nanos


def join_amount(units: Any, nanos: Any) -> Decimal:
    return Decimal(int(units or 0)) + Decimal(int(nanos or 0)) / Decimal(1_000_000_000)


class LeewayProjection(Projection[ViewStore]):
    """A read model of the Leeway log. Subclasses say which topics they read and how events change views."""

    name = ""
    #: The tables a rebuild empties.
    tables: tuple[str, ...] = ()
    #: Raised when what the projection writes changes: a view store built by an older version is emptied and
    #: rebuilt from the log when the projection first runs against it (``ViewStore.ensure_version``).
    version = 1

    def __init__(self, view: ViewStore, load_budget: Callable[[UUID, int], Budget] | None = None):
        super().__init__(view)
        self.load_budget = load_budget

    def wants(self, topic: str) -> bool:
        return topic.startswith(_BUDGET_TOPIC)

    @abstractmethod
    def changes(self, events: Sequence[tuple[int, Any]]) -> list[Change]:
        """SQL changes for ``(position, event)`` pairs, in log order."""

    def changes_ahead(self, events: Iterable[tuple[int, Any]]) -> Callable[[], list[Change]]:
        """``changes`` in two steps, for a replay (``runner.CatchUpRunner.replay``): what can be worked out before
        the earlier batches are committed is, now, as ``events`` are taken (each decoded only then: it is still in
        the CPU's caches); the function returned finishes the batch once they are. A projection that reads its own
        view while it works out changes (insights) does that only in the second step."""
        events = list(events)
        return lambda: self.changes(events)

    def forget(self) -> None:
        """Drops any in-memory state (after a failed or stale batch)."""

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:  # type: ignore[override]
        start = self.view.position(self.name)
        try:
            self.view.apply(self.name, start, tracking.notification_id, self.changes([(tracking.notification_id, domain_event)]))
        except BaseException:
            self.forget()
            raise


#: One row per recorded action (a bulk change: rows are tuples in this order, one COPY per batch on PostgreSQL).
_INSERT_ACTION = Bulk.insert("leeway_view_actions", (
    "action_id", "budget_id", "action_version", "employee_id", "team_id", "customer_id", "kind", "gift_type",
    "amount_units", "amount_nanos", "currency", "reason", "state", "escalated", "reversed", "expires_us", "recorded_us",
    "position",
))


class InsightsProjection(LeewayProjection):
    """Actions and wins, for KPIs and the celebration feed."""

    name = "insights"
    tables = ("leeway_view_actions", "leeway_view_wins", "leeway_view_kpi_days", "leeway_view_kpi_wins",
              "leeway_view_kpi_gifts", "leeway_view_kpi_firsts", "leeway_view_kpi_win_totals",
              "leeway_view_kpi_cased", "leeway_view_kpi_reach", "leeway_view_kpi_top", "leeway_view_kpi_months")
    #: 2: the KPI rollups. 3: the customers' first gift days (customers gifted from a sum over days), wins per
    #: employee over all time. 4: the customers' first and last gift days of every day, week, month and of all time
    #: (``leeway_view_kpi_reach``, replacing ``leeway_view_kpi_firsts``), wins per employee of every day, week and
    #: month (``leeway_view_kpi_top``). 5: the counters per calendar month too (``leeway_view_kpi_months``).
    version = 5

    def __init__(self, view: ViewStore, load_budget: Callable[[UUID, int], Budget] | None = None):
        super().__init__(view, load_budget)
        self.rollups = Rollups()
        #: Per event class: its handler (or None) and whether it refers to an earlier action (``_handler``).
        self._handler_of: dict[type, tuple[Callable[[InsightsProjection, int, Any], list[Change]] | None, bool]] = {}
        #: Budget id -> (its text, the start of its actions' ids): budgets have many actions.
        self._budget_ids: dict[UUID, tuple[str, str]] = {}
        #: Amount -> (units, nanos): amounts repeat.
        self._amounts: dict[Decimal, tuple[int, int]] = {}

    def forget(self) -> None:
        self.rollups.forget()

    def changes(self, events: Sequence[tuple[int, Any]]) -> list[Change]:
        return self.changes_ahead(events)()

    def changes_ahead(self, events: Iterable[tuple[int, Any]]) -> Callable[[], list[Change]]:
        # Decisions, reversals and wins refer to an action recorded before: with its facts in memory they are
        # handled at once; without, they (and every later one that refers to an action) wait for the second step,
        # which reads the facts from the view (committed rows). The rollups' drain also reads the view.
        handler_of = self._handler_of
        known = self.rollups.knows
        out: list[Change] = []
        waiting: list[tuple[Callable[[InsightsProjection, int, Any], list[Change]], int, Any, str]] = []
        for position, event in events:
            cls = type(event)
            handler, refers = handler_of[cls] if cls in handler_of else self._handler(cls)
            if handler is None:
                continue
            if refers:
                action_id = format_action_id(event.originator_id, event.action_version)
                if waiting or not known(action_id):
                    waiting.append((handler, position, event, action_id))
                    continue
            out.extend(handler(self, position, event))

        def finish() -> list[Change]:
            if waiting:
                missing = self.rollups.missing(action_id for _, _, _, action_id in waiting)
                if missing:
                    self.rollups.load(self.view, missing)
                for handler, position, event, _ in waiting:
                    out.extend(handler(self, position, event))
            out.extend(self.rollups.drain(self.view))
            return out

        return finish

    def _handler(self, cls: type) -> tuple[Callable[[InsightsProjection, int, Any], list[Change]] | None, bool]:
        """(the handler of ``cls``'s events, whether they refer to an action recorded before)."""
        handler = self._handlers.get(cls.__qualname__)
        found = self._handler_of[cls] = (handler, handler is not None and not issubclass(cls, Budget.ActionRecorded))
        return found

    def _recorded(self, position: int, e: Any) -> list[Change]:
        amount = e.amount
        split = self._amounts.get(amount)
        if split is None:
            split = split_amount(amount)
            if len(self._amounts) >= 4096:
                self._amounts.clear()
            self._amounts[amount] = split
        units, nanos = split
        budget = e.originator_id
        ids = self._budget_ids.get(budget)
        if ids is None:
            ids = (str(budget), format_action_id(budget, 0)[:-1])  # "act_<hex>_": the action id before the version
            if len(self._budget_ids) >= 100_000:
                self._budget_ids.clear()
            self._budget_ids[budget] = ids
        budget_id, prefix = ids
        version = e.originator_version
        action_id = f"{prefix}{version}"
        kind = e.kind
        gift_type = str(e.details.get("gift_type", "")) if kind == "GIFT" else ""
        recorded_us = micros(e.at)
        pending = e.pending
        state, escalated = (PENDING_APPROVAL, 1) if pending else (RECORDED, 0)
        self.rollups.recorded(
            action_id,
            ActionFacts(e.team_id, e.employee_id, recorded_us // DAY_US, kind, e.currency, gift_type, units, nanos,
                        state, escalated, 0, e.customer_id),
        )
        return [
            (
                _INSERT_ACTION,
                ((action_id, budget_id, version, e.employee_id, e.team_id, e.customer_id, kind, gift_type, units, nanos,
                  e.currency, e.reason, state, escalated, 0,
                  micros(e.expires_at) if pending and e.expires_at else None, recorded_us, position),),
            )
        ]

    def _reversed(self, position: int, e: Any) -> list[Change]:
        self.rollups.changed(format_action_id(e.originator_id, e.action_version), reversed_=True)
        return [
            (
                "UPDATE {leeway_view_actions} SET reversed = 1 WHERE action_id = %(action_id)s",
                {"action_id": format_action_id(e.originator_id, e.action_version)},
            )
        ]

    def _win(self, position: int, e: Any) -> list[Change]:
        self.rollups.won(format_action_id(e.originator_id, e.action_version), micros(e.at))
        return [
            (
                "INSERT INTO {leeway_view_wins} (action_id, position, employee_id, team_id, customer_id, kind, "
                "amount_units, amount_nanos, currency, reason, story, customer_quote, outcome, documented_by, "
                "documented_us) SELECT action_id, %(position)s, employee_id, team_id, customer_id, kind, amount_units, "
                "amount_nanos, currency, reason, %(story)s, %(quote)s, %(outcome)s, %(by)s, %(at)s "
                "FROM {leeway_view_actions} WHERE action_id = %(action_id)s",
                {
                    "action_id": format_action_id(e.originator_id, e.action_version),
                    "position": position,
                    "story": e.story,
                    "quote": e.customer_quote,
                    "outcome": e.outcome,
                    "by": e.actor,
                    "at": micros(e.at),
                },
            )
        ]

    _handlers: dict[str, Callable[[InsightsProjection, int, Any], list[Change]]] = {}


def _decision(state: str) -> Callable[[InsightsProjection, int, Any], list[Change]]:
    def handle(projection: InsightsProjection, position: int, e: Any) -> list[Change]:
        projection.rollups.changed(format_action_id(e.originator_id, e.action_version), state=state)
        return [
            (
                "UPDATE {leeway_view_actions} SET state = %(state)s WHERE action_id = %(action_id)s",
                {"state": state, "action_id": format_action_id(e.originator_id, e.action_version)},
            )
        ]

    return handle


InsightsProjection._handlers = {
    Budget.ActionRecorded.__qualname__: InsightsProjection._recorded,
    Budget.ActionApproved.__qualname__: _decision(APPROVED_STATE),
    Budget.ActionDenied.__qualname__: _decision(DENIED_STATE),
    Budget.ActionExpired.__qualname__: _decision(EXPIRED),
    Budget.ActionReversed.__qualname__: InsightsProjection._reversed,
    Budget.WinDocumented.__qualname__: InsightsProjection._win,
}


class _BudgetTracking(LeewayProjection):
    """Keeps recently seen budgets in memory and moves them along the events (loading one that starts mid-log)."""

    CACHE = 10_000

    def __init__(self, view: ViewStore, load_budget: Callable[[UUID, int], Budget] | None = None):
        super().__init__(view, load_budget)
        self._budgets: OrderedDict[UUID, Budget] = OrderedDict()

    def forget(self) -> None:
        self._budgets.clear()

    def changes_ahead(self, events: Iterable[tuple[int, Any]]) -> Callable[[], list[Change]]:
        # Budgets and recordings come from the events and the event store, never from the view: all of it ahead.
        out = self.changes(events)  # type: ignore[arg-type]
        return lambda: out

    def _advance(self, event: Any) -> Budget:
        budget = self._budgets.pop(event.originator_id, None)
        if event.originator_version == 1:
            budget = event.mutate(None)
        elif budget is not None and budget.version == event.originator_version - 1:
            budget = advance(event, budget)
        else:
            assert self.load_budget is not None, "a balances projection that starts mid-log needs load_budget"
            budget = self.load_budget(event.originator_id, event.originator_version)
        assert budget is not None
        self._budgets[event.originator_id] = budget
        if len(self._budgets) > self.CACHE:
            self._budgets.popitem(last=False)
        return budget


class BalancesProjection(_BudgetTracking):
    """Each budget as it stood after its latest event (the domain's own arithmetic, applied to the events)."""

    name = "balances"
    tables = ("leeway_view_balances",)

    def changes(self, events: Sequence[tuple[int, Any]]) -> list[Change]:
        latest: dict[UUID, tuple[int, Budget]] = {}
        for position, event in events:
            latest[event.originator_id] = (position, self._advance(event))
        out: list[Change] = []
        for position, budget in latest.values():
            view = budget.view()
            held = view.held.amount if view.held is not None else Decimal(0)
            out.append(
                (
                    "INSERT INTO {leeway_view_balances} (employee_id, budget_id, team_id, display_name, currency, "
                    "allowance, spent, held, remaining, period_start_us, period_end_us, period_action_count, "
                    "pending_action_count, state, policy_version, version, update_us, position) VALUES "
                    "(%(employee_id)s, %(budget_id)s, %(team_id)s, %(display_name)s, %(currency)s, %(allowance)s, "
                    "%(spent)s, %(held)s, %(remaining)s, %(period_start)s, %(period_end)s, %(count)s, %(pending)s, "
                    "%(state)s, %(policy_version)s, %(version)s, %(update)s, %(position)s) "
                    "ON CONFLICT (employee_id) DO UPDATE SET team_id = excluded.team_id, "
                    "display_name = excluded.display_name, "
                    "currency = excluded.currency, allowance = excluded.allowance, spent = excluded.spent, "
                    "held = excluded.held, remaining = excluded.remaining, period_start_us = excluded.period_start_us, "
                    "period_end_us = excluded.period_end_us, period_action_count = excluded.period_action_count, "
                    "pending_action_count = excluded.pending_action_count, state = excluded.state, "
                    "policy_version = excluded.policy_version, version = excluded.version, "
                    "update_us = excluded.update_us, position = excluded.position",
                    {
                        "employee_id": view.employee_id,
                        "budget_id": str(budget.id),
                        "team_id": view.team_id,
                        "display_name": view.display_name,
                        "currency": view.allowance.currency,
                        "allowance": str(view.allowance.amount),
                        "spent": str(view.spent.amount),
                        "held": str(held),
                        "remaining": str(view.remaining.amount),
                        "period_start": micros(view.period_start),
                        "period_end": micros(view.period_end),
                        "count": view.period_action_count,
                        "pending": view.pending_action_count,
                        "state": view.state,
                        "policy_version": view.policy_version,
                        "version": view.version,
                        "update": micros(view.update_time),
                        "position": position,
                    },
                )
            )
        return out


#: One row per trail entry (a bulk change: rows are tuples in this order).
_INSERT_TRAIL = Bulk.insert("leeway_view_trail", (
    "position", "employee_id", "customer_id", "action_id", "time_us", "actor", "event_type", "policy_version", "amount",
    "currency", "reason", "summary",
))


class TrailProjection(_BudgetTracking):
    """The audit trail: one sentence per budget event (who did what, for whom, why, under which policy version,
    who approved, what was reversed), for an employee's budget and for everything done for a customer."""

    name = "trail"
    tables = ("leeway_view_trail",)
    RECORDED_CACHE = 50_000

    def __init__(self, view: ViewStore, load_budget: Callable[[UUID, int], Budget] | None = None):
        super().__init__(view, load_budget)
        self._recorded: OrderedDict[tuple[UUID, int], Any] = OrderedDict()
        #: Reads one stored event (an action's recording that a decision refers to, when not seen recently).
        self.load_event: Callable[[UUID, int], Any] | None = None

    def forget(self) -> None:
        super().forget()
        self._recorded.clear()

    def _recording(self, budget_id: UUID, version: int) -> Any:
        key = (budget_id, version)
        event = self._recorded.get(key)
        if event is None:
            assert self.load_event is not None, "a trail projection that starts mid-log needs load_event"
            event = self.load_event(budget_id, version)
        return event

    def changes(self, events: Sequence[tuple[int, Any]]) -> list[Change]:
        rows: list[tuple[Any, ...]] = []
        recordings = self._recorded
        for position, event in events:
            budget = self._advance(event)
            if isinstance(event, Budget.ActionRecorded):
                recordings[(event.originator_id, event.originator_version)] = event
                if len(recordings) > self.RECORDED_CACHE:
                    recordings.popitem(last=False)
                entry: Any = recorded_entry(event)  # what event_entry gives it, without the view of its budget
            else:
                entry = event_entry(
                    event,
                    budget.employee_id,
                    lambda version, b=budget: self._recording(b.id, version),
                    lambda recorded, b=budget: action_view(recorded, b.outcome(recorded.originator_version)),
                )
            if entry is not None:
                rows.append((
                    position, entry.employee_id or budget.employee_id, entry.customer_id, entry.action_id,
                    micros(entry.time), entry.actor, entry.event_type, entry.policy_version,
                    str(entry.amount.amount) if entry.amount is not None else None,
                    entry.amount.currency if entry.amount is not None else "", entry.reason, entry.summary,
                ))
        return [(_INSERT_TRAIL, rows)] if rows else []


#: Every projection, by name (the order `leeway projections rebuild` uses).
PROJECTIONS: dict[str, type[LeewayProjection]] = {
    InsightsProjection.name: InsightsProjection,
    BalancesProjection.name: BalancesProjection,
    TrailProjection.name: TrailProjection,
}
