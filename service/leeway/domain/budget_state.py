"""What a Budget knows and how it keeps it: the helpers its ``@event`` methods apply state with, and the queries
its commands, rules and views ask. A base class of ``Budget`` (``domain/budget.py``), so that module holds the
aggregate's commands and its stored events only; nothing here is stored (an aggregate's topic is its own class's)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from . import recent, rules
from .periods import period_bounds
from .policy import Policy
from .views import BudgetView, budget_view, period_counts

#: Days of per-day spend a budget keeps: more than the longest period (a year).
DAILY_HISTORY_DAYS = 400


class BudgetStateBase:
    """The state a Budget's events build, and the questions asked of it."""

    employee_id: str
    team_id: str
    team_entry: int | None
    policy: Policy
    policy_version: int
    period_start: datetime
    period_end: datetime
    spent: Decimal
    period_action_count: int
    daily: dict[str, list[Any]]
    customer_spent: dict[str, Decimal]
    rule_bends: dict[str, int]
    holds: dict[str, dict[str, Any]]
    outcomes: dict[str, dict[str, Any]]
    recent: dict[str, Any]
    approved: dict[str, Decimal]
    changed_at: datetime

    # ------------------------------------------------------------------ state helpers (used by apply)

    def _apply_policy(
        self, policy: Policy, policy_version: int, period_start: datetime, period_end: datetime, at: datetime,
        recount: dict[str, Any] | None,
    ) -> None:
        """``PolicyUpdated``: a period of another length re-cuts the current one from the days kept."""
        self.policy = policy
        self.policy_version = policy_version
        if (period_start, period_end) != (self.period_start, self.period_end):
            self.period_start, self.period_end = period_start, period_end
            days = [v for d, v in self.daily.items() if self._in_period(d)]
            self.spent = sum((Decimal(v[0]) for v in days), Decimal(0))
            self.period_action_count = sum(int(v[1]) for v in days)
            recount = recount or {}
            self.customer_spent = dict(recount.get("customers", {}))
            self.rule_bends = dict(recount.get("rules", {}))
        if not policy.split_detection.same_customer:
            self.recent = recent.without_customers(self.recent)
        self.changed_at = at

    def _start_period(self, period_start: datetime, period_end: datetime, at: datetime) -> None:
        """``PeriodRolledOver``: nothing spent in the new period; days older than DAILY_HISTORY_DAYS forgotten."""
        self.period_start = period_start
        self.period_end = period_end
        self.spent = Decimal(0)
        self.period_action_count = 0
        self.customer_spent = {}
        self.rule_bends = {}
        oldest = (period_start - timedelta(days=DAILY_HISTORY_DAYS)).date().isoformat()
        self.daily = {d: v for d, v in self.daily.items() if d >= oldest}
        self.changed_at = at

    def _apply_action(
        self, version: int, customer_id: str, case_id: str, amount: Decimal, rule: str, at: datetime,
        hold: dict[str, Any] | None,
    ) -> None:
        """``ActionRecorded`` (at ``version``): counted, or, pending, held (``hold``: its expiry and approvers);
        remembered for split detection either way."""
        day = at.date().isoformat()
        if hold is not None:
            self.holds[str(version)] = {"customer_id": customer_id, "amount": amount, "rule_code": rule, "day": day,
                                        **hold}  # fmt: skip
        else:
            self._count(day, amount, 1, customer_id, rule)
        keys = recent.keys_of(case_id, customer_id, same_customer=self.policy.split_detection.same_customer)
        recent.remember(self.recent, version, keys, amount, at)
        self.changed_at = at

    def _apply_reversal(
        self, action_version: int, actor_id: str, reason: str, request_id: str, customer_id: str, amount: Decimal,
        rule_code: str, day: str, at: datetime,
    ) -> None:
        """``ActionReversed``: uncounted from its day (and the period, if that day is in it)."""
        restored = self._in_period(day)
        self._count(day, -amount, -1, customer_id, rule_code)
        recent.forget(self.recent, action_version)
        self.outcomes.setdefault(str(action_version), {})["reversal"] = {
            "actor_id": actor_id,
            "reason": reason,
            "at": at,
            "restored_to_current_period": restored,
            "request_id": request_id,
        }
        self.changed_at = at

    def _count_approved(self, amount: Decimal, at: datetime) -> None:
        """``ApprovalGiven``: counted on its UTC day; days older than DAILY_HISTORY_DAYS forgotten."""
        day = at.date().isoformat()
        if day not in self.approved:
            oldest = (at - timedelta(days=DAILY_HISTORY_DAYS)).date().isoformat()
            self.approved = {d: v for d, v in self.approved.items() if d >= oldest}
        self.approved[day] = self.approved.get(day, Decimal(0)) + amount
        self.changed_at = at

    def _in_period(self, day: str) -> bool:
        return self.period_start.date().isoformat() <= day < self.period_end.date().isoformat()

    def _count(self, day: str, amount: Decimal, count: int, customer_id: str, rule_code: str) -> None:
        """Adds (or, reversed, removes) an action's amount to its day and, if that day is in the period, to it."""
        entry = self.daily.setdefault(day, [Decimal(0), 0])
        entry[0] += amount
        entry[1] += count
        if self._in_period(day):
            self.spent += amount
            self.period_action_count += count
            self.customer_spent[customer_id] = self.customer_spent.get(customer_id, Decimal(0)) + amount
            if not self.customer_spent[customer_id]:
                del self.customer_spent[customer_id]
            if rule_code:
                self.rule_bends[rule_code] = self.rule_bends.get(rule_code, 0) + count
                if not self.rule_bends[rule_code]:
                    del self.rule_bends[rule_code]

    def _decided(
        self,
        action_version: int,
        outcome: str,
        approver_id: str,
        note: str,
        request_id: str,
        at: datetime,
        **more: Any,
    ) -> None:
        self.outcomes.setdefault(str(action_version), {})["decision"] = {
            "outcome": outcome,
            "approver_id": approver_id,
            "note": note,
            "at": at,
            "request_id": request_id,
            **more,
        }
        self.changed_at = at

    # ------------------------------------------------------------------ queries

    def _require_open(self) -> None:
        closed = rules.budget_closed(self)
        if closed is not None:
            raise closed.refusal()

    def held_in_period(
        self, now: datetime, *, customer_id: str | None = None, rule_code: str | None = None
    ) -> tuple[Decimal, int]:
        """(amount, count) of live holds requested in the current period, optionally of one customer or rule."""
        amount, count = Decimal(0), 0
        for hold in self.holds.values():
            if not self._in_period(hold["day"]) or hold["expires_at"] <= now:
                continue
            if customer_id is not None and hold["customer_id"] != customer_id:
                continue
            if rule_code is not None and hold["rule_code"] != rule_code:
                continue
            amount += hold["amount"]
            count += 1
        return amount, count

    def held_anywhere(self, now: datetime) -> Decimal:
        """What all live holds amount to, whatever period they were requested in (``rules.check_hold_ceiling``)."""
        return sum((h["amount"] for h in self.holds.values() if h["expires_at"] > now), Decimal(0))

    def recent_total(self, key: str, since: datetime, now: datetime) -> tuple[Decimal, int]:
        """(amount, count) of the actions under ``key`` (``case:<id>``, ``customer:<id>``) since ``since`` that
        count at ``now`` (``recent.total``)."""
        return recent.total(self.recent, self.holds, key, since, now)

    def approved_in_period(self, now: datetime) -> Decimal:
        """What this employee approved of others' actions (under approval limits) in their own period at ``now``."""
        start, end = period_bounds(self.policy.period, now)
        first, last = start.date().isoformat(), end.date().isoformat()
        return sum((amount for day, amount in self.approved.items() if first <= day < last), Decimal(0))

    def customer_ids(self) -> set[str]:
        """The customer ids (as stored) this period's spend and the open holds are counted under."""
        return set(self.customer_spent) | {h["customer_id"] for h in self.holds.values()}

    def hold(self, action_version: int) -> dict[str, Any] | None:
        """The hold of a pending action, or None."""
        return self.holds.get(str(action_version))

    def listed_by(self, team_id: str, roster_version: int) -> bool:
        """Whether the ``MemberAdded`` at ``roster_version`` of ``team_id``'s roster lists this budget now (a
        roster keeps the entries of employees who moved away, or moved away and back)."""
        return self.team_id == team_id and (self.team_entry is None or self.team_entry == roster_version)

    @staticmethod
    def recount(events: Iterable[Any], period_start: datetime) -> dict[str, Any]:
        """Per-customer spend and per-rule bends counted from ``period_start`` on, folded from a budget's events."""
        return period_counts(events, period_start)

    def outcome(self, action_version: int) -> dict[str, Any]:
        return self.outcomes.get(str(action_version), {})

    def view(self, now: datetime | None = None) -> BudgetView:
        """The budget as callers see it; with ``now`` past the period end, the new period (nothing spent yet)."""
        return budget_view(self, now)

    def period_of(self, moment: datetime) -> tuple[datetime, datetime]:
        """(start, end) of this budget's period that contains ``moment`` (at or after its last event)."""
        if moment < self.period_end:
            return self.period_start, self.period_end
        return period_bounds(self.policy.period, moment)

    def keeps_days_from(self) -> datetime:
        """The first day whose spend this budget is sure to keep (``DAILY_HISTORY_DAYS`` before its period)."""
        return self.period_start - timedelta(days=DAILY_HISTORY_DAYS)
