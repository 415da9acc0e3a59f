"""The employee budget aggregate.

Every empowered action an employee takes is an immutable event on their Budget. The event classes
(``Budget.Opened``, ``Budget.PolicyUpdated``, ``Budget.PeriodRolledOver``, ``Budget.ActionRecorded``,
``Budget.Closed``) are stored in the log under their qualified names in this module: never move or rename
them. Checks live in plain methods that raise domain errors; the ``@event`` methods only apply state,
because they run again on every replay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import Conflict, PreconditionFailed, PreconditionViolation
from .money import Money
from .periods import period_bounds
from .policy import ActionKind, Policy

#: Namespace of every deterministic id Leeway derives (budgets, indexes, request records).
LEEWAY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:leeway:v1")

OPEN = "OPEN"
CLOSED = "CLOSED"

_ACTION_ID = re.compile(r"act_([0-9a-f]{32})_([1-9][0-9]{0,18})")
#: Days of per-day spend a budget keeps: more than the longest period (a year).
DAILY_HISTORY_DAYS = 400


def budget_id_for(employee_id: str) -> UUID:
    """The aggregate id of an employee's budget."""
    return uuid5(LEEWAY_NAMESPACE, f"budget:{employee_id}")


def format_action_id(budget_id: UUID, version: int) -> str:
    """An action's id names the budget and the version of its event in that budget's history."""
    return f"act_{budget_id.hex}_{version}"


def parse_action_id(action_id: str) -> tuple[UUID, int] | None:
    """(budget id, event version) of an action id, or None if it is not one."""
    match = _ACTION_ID.fullmatch(action_id)
    if match is None or int(match.group(2)) >= 2**63:
        return None
    return UUID(hex=match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class BudgetView:
    """A budget as callers see it, at one moment."""

    employee_id: str
    team_id: str
    display_name: str
    policy: Policy
    policy_version: int
    period_start: datetime
    period_end: datetime
    allowance: Money
    spent: Money
    remaining: Money
    version: int
    state: str
    create_time: datetime
    update_time: datetime
    close_time: datetime | None
    close_reason: str
    period_action_count: int


@dataclass(frozen=True)
class ActionView:
    """One recorded action, as callers see it."""

    action_id: str
    employee_id: str
    team_id: str
    customer_id: str
    case_id: str
    kind: ActionKind
    amount: Money
    reason: str
    details: dict[str, str]
    state: str
    policy_version: int
    occur_time: datetime
    record_time: datetime
    request_id: str
    budget_version: int


@dataclass(frozen=True)
class ActionRequest:
    """What an employee wants to do; validated for shape before it reaches the budget."""

    customer_id: str
    case_id: str
    kind: ActionKind
    amount: Money
    reason: str
    details: dict[str, str] = field(default_factory=dict)
    occur_time: datetime | None = None


class Budget(Aggregate):
    """An employee's spending authority: a policy, the current period and what was spent in it."""

    @staticmethod
    def create_id(employee_id: str) -> UUID:
        return budget_id_for(employee_id)

    # ------------------------------------------------------------------ events (apply state only)

    @event("Opened")
    def __init__(
        self,
        employee_id: str,
        team_id: str,
        display_name: str,
        policy: Policy,
        period_start: datetime,
        period_end: datetime,
        at: datetime,
    ) -> None:
        self.employee_id = employee_id
        self.team_id = team_id
        self.display_name = display_name
        self.policy = policy
        self.policy_version = 1
        self.period_start = period_start
        self.period_end = period_end
        self.spent = Decimal(0)
        self.period_action_count = 0
        # Spend and action count per UTC day (ISO date -> [amount, count]) for the last DAILY_HISTORY_DAYS days.
        # Every period kind starts at 00:00 UTC, so any period's spend is a sum of days: a policy change to
        # another period length (shorter or longer) re-cuts the current period exactly.
        self.daily: dict[str, list[Any]] = {}
        self.state = OPEN
        self.opened_at = at
        self.changed_at = at
        self.closed_at: datetime | None = None
        self.close_reason = ""

    @event("PolicyUpdated")
    def _policy_updated(
        self, policy: Policy, policy_version: int, period_start: datetime, period_end: datetime, at: datetime
    ) -> None:
        self.policy = policy
        self.policy_version = policy_version
        if (period_start, period_end) != (self.period_start, self.period_end):
            self.period_start, self.period_end = period_start, period_end
            days = [v for d, v in self.daily.items() if period_start.date().isoformat() <= d < period_end.date().isoformat()]
            self.spent = sum((Decimal(v[0]) for v in days), Decimal(0))
            self.period_action_count = sum(int(v[1]) for v in days)
        self.changed_at = at

    @event("PeriodRolledOver")
    def _period_rolled_over(
        self,
        period_start: datetime,
        period_end: datetime,
        closed_period_start: datetime,
        closed_period_spent: Decimal,
        closed_period_action_count: int,
        at: datetime,
    ) -> None:
        self.period_start = period_start
        self.period_end = period_end
        self.spent = Decimal(0)
        self.period_action_count = 0
        oldest = (period_start - timedelta(days=DAILY_HISTORY_DAYS)).date().isoformat()
        self.daily = {d: v for d, v in self.daily.items() if d >= oldest}
        self.changed_at = at

    @event("ActionRecorded")
    def _action_recorded(
        self,
        employee_id: str,
        request_id: str,
        customer_id: str,
        case_id: str,
        kind: str,
        amount: Decimal,
        currency: str,
        reason: str,
        details: dict[str, str],
        occur_time: datetime,
        policy_version: int,
        team_id: str,
        at: datetime,
    ) -> None:
        self.spent += amount
        self.period_action_count += 1
        day = self.daily.setdefault(at.date().isoformat(), [Decimal(0), 0])
        day[0] += amount
        day[1] += 1
        self.changed_at = at

    @event("Closed")
    def _closed(self, reason: str, at: datetime) -> None:
        self.state = CLOSED
        self.closed_at = at
        self.close_reason = reason
        self.changed_at = at

    # ------------------------------------------------------------------ commands (checks, then events)

    @classmethod
    def open(cls, *, employee_id: str, team_id: str, display_name: str, policy: Policy, now: datetime) -> Budget:
        start, end = period_bounds(policy.period, now)
        return cls(
            employee_id=employee_id,
            team_id=team_id,
            display_name=display_name,
            policy=policy,
            period_start=start,
            period_end=end,
            at=now,
        )

    def roll_over_if_due(self, now: datetime) -> None:
        """Starts the period containing ``now`` if the current one has ended (one event, however many passed)."""
        if now < self.period_end:
            return
        start, end = period_bounds(self.policy.period, now)
        self._period_rolled_over(
            period_start=start,
            period_end=end,
            closed_period_start=self.period_start,
            closed_period_spent=self.spent,
            closed_period_action_count=self.period_action_count,
            at=now,
        )

    def _require_open(self) -> None:
        if self.state != OPEN:
            raise PreconditionFailed(
                f"the budget of employee {self.employee_id} is closed",
                reason="BUDGET_CLOSED",
                violations=[PreconditionViolation("BUDGET_STATE", f"budgets/{self.employee_id}", "budget is closed")],
                metadata={"employee_id": self.employee_id},
            )

    def check_action(self, kind: ActionKind, amount: Money) -> None:
        """Raises PreconditionFailed unless the action is within the employee's authority right now.

        Call ``roll_over_if_due`` first so that the check sees the current period.
        """
        self._require_open()
        subject = f"budgets/{self.employee_id}"
        meta = {"employee_id": self.employee_id}
        if amount.currency != self.policy.currency:
            raise PreconditionFailed(
                f"amount is in {amount.currency} but the budget is in {self.policy.currency}",
                reason="CURRENCY_MISMATCH",
                violations=[
                    PreconditionViolation(
                        "CURRENCY", subject, f"budget currency is {self.policy.currency}, not {amount.currency}"
                    )
                ],
                metadata={**meta, "budget_currency": self.policy.currency, "amount_currency": amount.currency},
            )
        if not self.policy.allows(kind):
            allowed = ",".join(k.value for k in self.policy.allowed_kinds)
            raise PreconditionFailed(
                f"employee {self.employee_id} may not take {kind.value} actions (allowed: {allowed})",
                reason="KIND_NOT_ALLOWED",
                violations=[PreconditionViolation("ALLOWED_KINDS", subject, f"{kind.value} is not in allowed_kinds")],
                metadata={**meta, "kind": kind.value, "allowed_kinds": allowed},
            )
        limit = self.policy.per_action_limit
        if limit is not None and amount.amount > limit.amount:
            raise PreconditionFailed(
                f"{amount} exceeds the per-action limit of {limit}",
                reason="PER_ACTION_LIMIT_EXCEEDED",
                violations=[
                    PreconditionViolation("PER_ACTION_LIMIT", subject, f"per_action_limit is {limit}, asked {amount}")
                ],
                metadata={**meta, "limit": f"{limit.amount:f}", "requested": f"{amount.amount:f}"},
            )
        remaining = self.policy.period_allowance.amount - self.spent
        if amount.amount > remaining:
            left = Money(remaining, self.policy.currency)
            raise PreconditionFailed(
                f"{amount} exceeds what remains of this period's allowance ({left})",
                reason="BUDGET_EXHAUSTED",
                violations=[
                    PreconditionViolation(
                        "PERIOD_ALLOWANCE",
                        subject,
                        f"remaining {left} of {self.policy.period_allowance} until {self.period_end.isoformat()}",
                    )
                ],
                metadata={
                    **meta,
                    "remaining": f"{remaining:f}",
                    "requested": f"{amount.amount:f}",
                    "period_end": self.period_end.isoformat(),
                },
            )

    def record_action(self, action: ActionRequest, *, request_id: str, now: datetime) -> str:
        """Checks and records an action; returns its id."""
        self._require_open()
        self.roll_over_if_due(now)
        self.check_action(action.kind, action.amount)
        self._action_recorded(
            employee_id=self.employee_id,
            request_id=request_id,
            customer_id=action.customer_id,
            case_id=action.case_id,
            kind=action.kind.value,
            amount=action.amount.amount,
            currency=action.amount.currency,
            reason=action.reason,
            details=dict(action.details),
            occur_time=action.occur_time or now,
            policy_version=self.policy_version,
            team_id=self.team_id,
            at=now,
        )
        return format_action_id(self.id, self.version)

    def update_policy(self, policy: Policy, *, now: datetime, expected_version: int = 0) -> None:
        if expected_version and expected_version != self.version:
            raise Conflict(
                f"budget of {self.employee_id} is at version {self.version}, not {expected_version}",
                reason="VERSION_MISMATCH",
                metadata={"employee_id": self.employee_id, "current_version": str(self.version)},
            )
        self._require_open()
        if policy.currency != self.policy.currency:
            raise PreconditionFailed(
                f"the budget is in {self.policy.currency}; a policy cannot change its currency",
                reason="CURRENCY_MISMATCH",
                violations=[
                    PreconditionViolation(
                        "CURRENCY", f"budgets/{self.employee_id}", f"budget currency is {self.policy.currency}"
                    )
                ],
                metadata={"employee_id": self.employee_id, "budget_currency": self.policy.currency},
            )
        self.roll_over_if_due(now)
        start, end = period_bounds(policy.period, now)
        self._policy_updated(
            policy=policy, policy_version=self.policy_version + 1, period_start=start, period_end=end, at=now
        )

    def close(self, reason: str, *, now: datetime) -> None:
        self._require_open()
        self._closed(reason=reason, at=now)

    # ------------------------------------------------------------------ queries

    def view(self, now: datetime | None = None) -> BudgetView:
        """The budget as callers see it; with ``now`` past the period end, the new period (nothing spent yet)."""
        start, end, spent, count = self.period_start, self.period_end, self.spent, self.period_action_count
        if now is not None and now >= end and self.state == OPEN:
            start, end = period_bounds(self.policy.period, now)
            spent, count = Decimal(0), 0
        allowance = self.policy.period_allowance
        return BudgetView(
            employee_id=self.employee_id,
            team_id=self.team_id,
            display_name=self.display_name,
            policy=self.policy,
            policy_version=self.policy_version,
            period_start=start,
            period_end=end,
            allowance=allowance,
            spent=Money(spent, allowance.currency),
            remaining=Money(allowance.amount - spent, allowance.currency),
            version=self.version,
            state=self.state,
            create_time=self.opened_at,
            update_time=self.changed_at,
            close_time=self.closed_at,
            close_reason=self.close_reason,
            period_action_count=count,
        )


def action_view(event: Any) -> ActionView:
    """The caller's view of one ``Budget.ActionRecorded`` event."""
    return ActionView(
        action_id=format_action_id(event.originator_id, event.originator_version),
        employee_id=event.employee_id,
        team_id=event.team_id,
        customer_id=event.customer_id,
        case_id=event.case_id,
        kind=ActionKind(event.kind),
        amount=Money(event.amount, event.currency),
        reason=event.reason,
        details=dict(event.details),
        state="RECORDED",
        policy_version=event.policy_version,
        occur_time=event.occur_time,
        record_time=event.at,
        request_id=event.request_id,
        budget_version=event.originator_version,
    )
