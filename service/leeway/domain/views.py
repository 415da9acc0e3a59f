"""What callers see of budgets and actions (frozen views built from a budget's state and events), and the
names of budget and action states."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from .ids import format_action_id
from .money import Money
from .periods import period_bounds
from .policy import ActionKind, Policy
from .records import carried

OPEN = "OPEN"
CLOSED = "CLOSED"

# Action states. Stored in outcomes: never rename.
RECORDED = "RECORDED"
PENDING_APPROVAL = "PENDING_APPROVAL"
APPROVED = "APPROVED"
DENIED = "DENIED"
EXPIRED = "EXPIRED"
REVERSED = "REVERSED"
#: Who "decides" an expiry.
SYSTEM_ACTOR = "leeway"


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
    held: Money | None = None
    pending_action_count: int = 0
    #: What live holds requested before this period hold: they belong to the periods they were requested in.
    held_in_ended_periods: Money | None = None


@dataclass(frozen=True)
class Decision:
    """What happened to an action that needed approval."""

    outcome: str
    approver_id: str
    note: str
    at: datetime
    request_id: str
    #: An approval: whether the amount was spent in the period that was current when it was approved (False: in
    #: the period it was requested in, which had ended).
    counted_in_current_period: bool = True

    @classmethod
    def from_outcome(cls, stored: Mapping[str, Any]) -> Decision:
        """From a budget's stored outcome entry (``BudgetState`` writes it; ``in_current_period`` came later)."""
        return cls(
            stored["outcome"], stored["approver_id"], stored["note"], stored["at"], stored["request_id"],
            bool(stored.get("in_current_period", True)),
        )  # fmt: skip


@dataclass(frozen=True)
class Reversal:
    """The compensating event that reversed an action."""

    actor_id: str
    reason: str
    at: datetime
    restored_to_current_period: bool
    request_id: str

    @classmethod
    def from_outcome(cls, stored: Mapping[str, Any]) -> Reversal:
        return cls(
            stored["actor_id"], stored["reason"], stored["at"], bool(stored["restored_to_current_period"]),
            stored["request_id"],
        )  # fmt: skip


@dataclass(frozen=True)
class WinView:
    """The success story documented for an action."""

    story: str
    customer_quote: str
    outcome: str
    documented_by: str
    at: datetime

    @classmethod
    def from_outcome(cls, stored: Mapping[str, Any]) -> WinView:
        return cls(stored["story"], stored["customer_quote"], stored["outcome"], stored["documented_by"], stored["at"])


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
    escalation_reasons: tuple[str, ...] = ()
    expire_time: datetime | None = None
    approver_ids: tuple[str, ...] = ()
    approver_role: str = ""
    decision: Decision | None = None
    reversal: Reversal | None = None
    #: The authenticated principal that recorded the action (the employee, or a CRM on their behalf).
    recorded_by: str = ""
    win: WinView | None = None


def budget_view(budget: Any, now: datetime | None = None) -> BudgetView:
    """``Budget.view``: the budget as callers see it; with ``now`` past the period end, the new period (nothing
    spent yet). ``budget`` is a ``budget.Budget``, read by attribute (that module imports this one)."""
    at = now if now is not None else budget.changed_at
    start, end, spent, count = budget.period_start, budget.period_end, budget.spent, budget.period_action_count
    rolled = now is not None and now >= end and budget.state == OPEN
    if rolled:
        start, end = period_bounds(budget.policy.period, now)  # type: ignore[arg-type]
        spent, count = Decimal(0), 0
    return _view(budget, budget, start, end, spent, count, at)


def period_view(budget: Any, start: datetime, end: datetime, closing: Any, now: datetime) -> BudgetView:
    """``Budget.period_view``: the figures of the period [start, end) of ``budget`` as they stand at ``now``, from
    its spend per day (approvals of holds requested in it and reversals of its actions included, whenever they
    happened) and the holds requested in it; under the policy of ``closing`` (the budget when the period ended)."""
    first, last = start.date().isoformat(), end.date().isoformat()
    days = [v for day, v in budget.daily.items() if first <= day < last]
    spent = sum((Decimal(v[0]) for v in days), Decimal(0))
    return _view(budget, closing, start, end, spent, sum(int(v[1]) for v in days), now)


def _view(
    budget: Any, policy_of: Any, start: datetime, end: datetime, spent: Decimal, count: int, at: datetime
) -> BudgetView:
    """A budget's view of the period [start, end) with ``spent`` and ``count`` in it: the live holds (at ``at``)
    requested in it count as held, those requested before it as held in ended periods; ``policy_of`` gives the
    policy (its allowance) and its version."""
    first, last = start.date().isoformat(), end.date().isoformat()
    live = [h for h in budget.holds.values() if h["expires_at"] > at]
    held = sum((h["amount"] for h in live if first <= h["day"] < last), Decimal(0))
    earlier = sum((h["amount"] for h in live if h["day"] < first), Decimal(0))
    allowance = policy_of.policy.period_allowance
    return BudgetView(
        **carried(budget, "employee_id", "team_id", "display_name", "version", "state"),
        **carried(policy_of, "policy", "policy_version"),
        period_start=start,
        period_end=end,
        allowance=allowance,
        spent=Money(spent, allowance.currency),
        remaining=Money(allowance.amount - spent - held, allowance.currency),
        create_time=budget.opened_at,
        update_time=budget.changed_at,
        close_time=budget.closed_at,
        close_reason=budget.close_reason,
        period_action_count=count,
        held=Money(held, allowance.currency),
        pending_action_count=len(live),
        held_in_ended_periods=Money(earlier, allowance.currency),
    )


def action_state(budget: Any, action_version: int) -> str:
    """The state of one of a ``budget.Budget``'s actions by its events (a pending one past its timeout stays
    PENDING_APPROVAL here until its expiry is recorded; ``action_view`` shows it EXPIRED by the clock)."""
    known = budget.outcome(action_version)
    if "reversal" in known:
        return REVERSED
    if budget.hold(action_version) is not None:
        return PENDING_APPROVAL
    decision = known.get("decision")
    return str(decision["outcome"]) if decision else RECORDED


def period_counts(events: Iterable[Any], period_start: datetime) -> dict[str, Any]:
    """Per-customer spend and per-rule bends counted from ``period_start`` on, folded from a budget's events
    (``Budget.ActionRecorded``, ``ActionApproved`` and ``ActionReversed``; the others do not change them)."""
    first = period_start.date().isoformat()
    customers: dict[str, Decimal] = {}
    bends: dict[str, int] = {}

    def add(customer: str, amount: Decimal, rule: str, count: int) -> None:
        customers[customer] = customers.get(customer, Decimal(0)) + amount
        if rule:
            bends[rule] = bends.get(rule, 0) + count

    recorded: dict[int, Any] = {}
    for stored in events:
        name = type(stored).__qualname__
        if name == "Budget.ActionRecorded":
            recorded[stored.originator_version] = stored
            if not getattr(stored, "pending", False) and stored.at.date().isoformat() >= first:
                add(stored.customer_id, stored.amount, _rule_of(stored), 1)
        elif name == "Budget.ActionApproved":
            original = recorded.get(stored.action_version)
            if original is not None and original.at.date().isoformat() >= first:
                add(original.customer_id, original.amount, _rule_of(original), 1)
        elif name == "Budget.ActionReversed" and stored.day >= first:
            add(stored.customer_id, -stored.amount, stored.rule_code, -1)
    return {
        "customers": {c: a for c, a in customers.items() if a},
        "rules": {r: n for r, n in bends.items() if n},
    }


def _rule_of(event: Any) -> str:
    return str(event.details.get("rule_code", "")) if event.kind == ActionKind.RULE_BEND.value else ""


def action_view(event: Any, outcome: dict[str, Any] | None = None, now: datetime | None = None) -> ActionView:
    """The caller's view of one ``Budget.ActionRecorded`` event, given its outcome (decision, reversal) so far.

    A pending action whose approval timeout has passed by ``now`` is shown EXPIRED even before the expiry task
    has recorded it: it no longer holds anything.
    """
    outcome = outcome or {}
    pending = bool(getattr(event, "pending", False))
    expires_at = getattr(event, "expires_at", None)
    decision = outcome.get("decision")
    reversal = outcome.get("reversal")
    if reversal is not None:
        state = REVERSED
    elif decision is not None:
        state = decision["outcome"]
    elif pending:
        state = EXPIRED if (now is not None and expires_at is not None and expires_at <= now) else PENDING_APPROVAL
    else:
        state = RECORDED
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
        state=state,
        policy_version=event.policy_version,
        occur_time=event.occur_time,
        record_time=event.at,
        request_id=event.request_id,
        budget_version=event.originator_version,
        escalation_reasons=tuple(getattr(event, "escalation_reasons", None) or ()),
        expire_time=expires_at,
        approver_ids=tuple(getattr(event, "approver_ids", None) or ()),
        approver_role=getattr(event, "approver_role", "") or "",
        decision=None if decision is None else Decision.from_outcome(decision),
        reversal=None if reversal is None else Reversal.from_outcome(reversal),
        recorded_by=getattr(event, "actor", "") or "",
        win=WinView.from_outcome(outcome["win"]) if "win" in outcome else None,
    )
