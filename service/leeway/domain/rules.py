"""The boundaries an action must stay within: one small named check per boundary.

Every check looks at the state it is given and returns a ``Breach`` (what was exceeded, how to say so, and
``refusal()``, the PreconditionFailed it raises; defined in ``errors``, re-exported here) or None; it never
changes anything. Two kinds of check judge an employee's action against their own budget:

- ``WALLS``: what no approval can lift (a closed budget, another currency, a kind or rule the policy does not
  allow). The first wall breached refuses the action.
- ``LIMITS``: what an approver may lift (rule quotas and values, per-action, split actions, allowance,
  per-customer). With escalation they make the action wait for approval (``escalation_reasons``, in this order);
  without, they refuse it together. What may wait at once is bounded too (``check_hold_ceiling``).

``check_team_cap`` and ``check_customer_cap`` are the hard walls above the employee, checked after the budget's.
The preconditions of a budget's other commands (deciding, reversing, documenting a win, changing the policy,
reopening, moving) are in ``command_rules``.

Messages, reasons, violations and metadata are what callers receive: change none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from .errors import Breach, FieldViolation, InvalidArgument, PreconditionFailed, PreconditionViolation
from .ledgers import CustomerLedger, TeamLedger
from .money import Money
from .policy import ActionKind, BendableRule, Policy
from .policy_rules import Ceiling, check_policy_approvers, check_policy_ceiling, grants_more, most_periods_within
from .reasons import Reason
from .tally import Cap, cap_breach, merged
from .views import OPEN

__all__ = [
    "LIMITS", "MAX_CLOCK_SKEW", "MAX_OCCUR_AGE", "WALLS", "ActionRequest", "Breach", "BudgetState", "Ceiling",
    "Check", "budget_closed", "check_action", "check_allowance",
    "check_bend_quota", "check_bend_value", "check_budget_open", "check_currency", "check_customer_cap",
    "check_hold_ceiling", "check_kind_allowed", "check_occur_time", "check_per_action_limit",
    "check_per_customer_limit", "check_policy_approvers", "check_policy_ceiling",
    "check_rule_bendable", "check_split_action", "check_team_cap",
    "grants_more",
    "most_periods_within", "refusal_of",
]  # fmt: skip


@dataclass(frozen=True)
class ActionRequest:
    """What an employee wants to do; validated for shape before it reaches the budget. (Defined here, below the
    budget and ``actions`` that re-export it, because every check judges one.)"""

    customer_id: str
    case_id: str
    kind: ActionKind
    amount: Money
    reason: str
    details: dict[str, str] = field(default_factory=dict)
    occur_time: datetime | None = None
    #: Other ids under which this budget stored the same customer (ids sent before they were normalised; see
    #: ``domain/customers.py``), and the customer's erased id (``[erased:<pseudonym>]``, issue 22): the
    #: per-customer limit and split detection count them too.
    customer_spellings: tuple[str, ...] = ()
    #: The case's erased id, if this budget holds actions of the same case erased since (split detection).
    case_spellings: tuple[str, ...] = ()


class BudgetState(Protocol):
    """What the checks read of a ``budget.Budget`` (that module imports this one, so cannot be imported here)."""

    id: UUID
    version: int
    employee_id: str
    team_id: str
    state: str
    policy: Policy
    spent: Decimal
    period_end: datetime
    rule_bends: dict[str, int]
    customer_spent: dict[str, Decimal]

    def held_in_period(
        self, now: datetime, *, customer_id: str | None = None, rule_code: str | None = None
    ) -> tuple[Decimal, int]: ...

    def held_anywhere(self, now: datetime) -> Decimal: ...

    def recent_total(self, key: str, since: datetime, now: datetime) -> tuple[Decimal, int]: ...

    def approved_in_period(self, now: datetime) -> Decimal: ...

    def hold(self, action_version: int) -> dict[str, Any] | None: ...

    def outcome(self, action_version: int) -> dict[str, Any]: ...


#: How far in the future a CRM's occur_time may be (clock skew).
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: How far in the past occur_time may be by default (``LEEWAY_OCCUR_TIME_MAX_AGE_DAYS``).
MAX_OCCUR_AGE = timedelta(days=30)


def check_occur_time(
    occur_time: datetime | None, now: datetime, max_age: timedelta = MAX_OCCUR_AGE
) -> InvalidArgument | None:
    """When the employee acted: not further in the future than clock skew explains, nor more than ``max_age`` in
    the past (an action is counted when it is recorded; a date years back is a mistake, not a late entry)."""
    if occur_time is None:
        return None
    if occur_time > now + MAX_CLOCK_SKEW:
        return InvalidArgument([FieldViolation("occur_time", "must not be more than 5 minutes in the future")])
    if occur_time < now - max_age:
        return InvalidArgument([FieldViolation("occur_time", f"must not be more than {_span(max_age)} in the past")])
    return None


def _span(age: timedelta) -> str:
    if age % timedelta(days=1):
        return f"{age.total_seconds():g} seconds"
    return "1 day" if age.days == 1 else f"{age.days} days"


#: A check of an employee's action against their budget.
Check = Callable[[BudgetState, ActionRequest, datetime], Breach | None]


def _subject(budget: BudgetState) -> str:
    return f"budgets/{budget.employee_id}"


def _on_budget(
    budget: BudgetState, reason: Reason, message: str, violation: str, description: str, /, *, under: str = "",
    **metadata: str,
) -> Breach:
    """A breach of one of the budget's own boundaries: its violation is on ``budgets/<employee>`` (or a part of
    it, ``under``), and its metadata names the employee first."""
    subject = f"{_subject(budget)}/{under}" if under else _subject(budget)
    return Breach(
        reason, message, PreconditionViolation(violation, subject, description), {"employee_id": budget.employee_id, **metadata}
    )


def _duration(value: timedelta) -> str:
    """A window for people: "24 hours", "2 days", "90 minutes"."""
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds > size * (unit == "day"):
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def _rule(budget: BudgetState, action: ActionRequest) -> tuple[str, BendableRule | None]:
    """(rule code, bendable rule) of a RULE_BEND action; ("", None) for other kinds."""
    if action.kind is not ActionKind.RULE_BEND:
        return "", None
    code = action.details.get("rule_code", "")
    return code, budget.policy.bendable_rule(code)


# ---------------------------------------------------------------------------- walls


def budget_closed(budget: BudgetState) -> Breach | None:
    """BUDGET_CLOSED: nothing changes a closed budget (checked by every command of a budget)."""
    if budget.state == OPEN:
        return None
    return _on_budget(
        budget, Reason.BUDGET_CLOSED, f"the budget of employee {budget.employee_id} is closed",
        "BUDGET_STATE", "budget is closed",
    )


def check_budget_open(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    return budget_closed(budget)


def check_currency(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    amount, currency = action.amount, budget.policy.currency
    if amount.currency == currency:
        return None
    return _on_budget(
        budget, Reason.CURRENCY_MISMATCH, f"amount is in {amount.currency} but the budget is in {currency}",
        "CURRENCY", f"budget currency is {currency}, not {amount.currency}",
        budget_currency=currency, amount_currency=amount.currency,
    )


def check_kind_allowed(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    kind = action.kind
    if budget.policy.allows(kind):
        return None
    allowed = ",".join(k.value for k in budget.policy.allowed_kinds)
    return _on_budget(
        budget, Reason.KIND_NOT_ALLOWED, f"employee {budget.employee_id} may not take {kind.value} actions (allowed: {allowed})",
        "ALLOWED_KINDS", f"{kind.value} is not in allowed_kinds",
        kind=kind.value, allowed_kinds=allowed,
    )


def check_rule_bendable(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    code, rule = _rule(budget, action)
    if action.kind is not ActionKind.RULE_BEND or rule is not None:
        return None
    bendable = ",".join(r.rule_code for r in budget.policy.bendable_rules)
    return _on_budget(
        budget, Reason.RULE_NOT_BENDABLE, f"rule {code} is not in employee {budget.employee_id}'s catalogue of bendable rules",
        "BENDABLE_RULES", f"{code} is not in policy.bendable_rules",
        rule_code=code, bendable_rules=bendable,
    )


# ---------------------------------------------------------------------------- limits


def check_bend_quota(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    code, rule = _rule(budget, action)
    if rule is None or not rule.max_per_period:
        return None
    _, pending = budget.held_in_period(now, rule_code=code)
    used = budget.rule_bends.get(code, 0) + pending
    if used + 1 <= rule.max_per_period:
        return None
    return _on_budget(
        budget, Reason.RULE_BEND_QUOTA_EXCEEDED,
        f"rule {code} was already bent {used} times this period (at most {rule.max_per_period})",
        "RULE_BEND_QUOTA", f"max_per_period is {rule.max_per_period}, used {used} until {budget.period_end.isoformat()}",
        under=f"rules/{code}", rule_code=code, max_per_period=str(rule.max_per_period), used=str(used),
    )


def check_bend_value(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    code, rule = _rule(budget, action)
    amount = action.amount
    if rule is None or rule.max_value is None or amount.amount <= rule.max_value.amount:
        return None
    return _on_budget(
        budget, Reason.RULE_BEND_VALUE_EXCEEDED, f"{amount} exceeds the most a bend of {code} may cost ({rule.max_value})",
        "RULE_BEND_VALUE", f"max_value is {rule.max_value}, asked {amount}",
        under=f"rules/{code}", rule_code=code, limit=f"{rule.max_value.amount:f}", requested=f"{amount.amount:f}",
    )


def check_per_action_limit(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    limit, amount = budget.policy.per_action_limit, action.amount
    if limit is None or amount.amount <= limit.amount:
        return None
    return _on_budget(
        budget, Reason.PER_ACTION_LIMIT_EXCEEDED, f"{amount} exceeds the per-action limit of {limit}",
        "PER_ACTION_LIMIT", f"per_action_limit is {limit}, asked {amount}",
        limit=f"{limit.amount:f}", requested=f"{amount.amount:f}",
    )


def check_split_action(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    """The per-action limit is per problem, not per call: the employee's actions on one case (and, if the policy
    opts in, for one customer) within the split window count together against it (recorded, approved and waiting
    ones; ``Budget.recent_total``). An action over the limit on its own is ``check_per_action_limit``'s."""
    limit, amount = budget.policy.per_action_limit, action.amount
    if limit is None or amount.amount <= 0 or amount.amount > limit.amount:
        return None
    detection = budget.policy.split_detection
    keys = [("case", action.case_id, action.case_spellings)] if action.case_id else []
    if detection.same_customer:
        keys.append(("customer", action.customer_id, action.customer_spellings))
    for what, key, others in keys:
        earlier, count = Decimal(0), 0
        for spelling in (key, *others):
            more, more_count = budget.recent_total(f"{what}:{spelling}", now - detection.window, now)
            earlier, count = earlier + more, count + more_count
        total = Money(earlier + amount.amount, amount.currency)
        if total.amount <= limit.amount:
            continue
        window = _duration(detection.window)
        return _on_budget(
            budget, Reason.SPLIT_ACTION_LIMIT_EXCEEDED,
            f"{amount} with {count} earlier action(s) on {what} {key} in the last {window} comes to {total}: a split "
            f"of one problem over the per-action limit of {limit}",
            "SPLIT_ACTION_LIMIT", f"per_action_limit is {limit} per {what} within {window}, asked {total} in all",
            under=f"{what}s/{key}", **{f"{what}_id": key}, limit=f"{limit.amount:f}", earlier=f"{earlier:f}",
            earlier_count=str(count), requested=f"{amount.amount:f}", window=window,
        )
    return None


def check_allowance(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    """What is spent and held in the current period leaves room for the action."""
    amount, allowance = action.amount, budget.policy.period_allowance
    held, _ = budget.held_in_period(now)
    remaining = allowance.amount - budget.spent - held
    if amount.amount <= remaining:
        return None
    left = Money(remaining, budget.policy.currency)
    return _on_budget(
        budget, Reason.BUDGET_EXHAUSTED, f"{amount} exceeds what remains of this period's allowance ({left})",
        "PERIOD_ALLOWANCE", f"remaining {left} of {allowance} until {budget.period_end.isoformat()}",
        remaining=f"{remaining:f}", held=f"{held:f}", requested=f"{amount.amount:f}",
        period_end=budget.period_end.isoformat(),
    )


def check_per_customer_limit(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    """What the employee gave (and holds for) this customer in the period leaves room for the action."""
    per_customer, amount, customer = budget.policy.per_customer_limit, action.amount, action.customer_id
    if per_customer is None:
        return None
    given = Decimal(0)
    for spelling in (customer, *action.customer_spellings):
        held, _ = budget.held_in_period(now, customer_id=spelling)
        given += budget.customer_spent.get(spelling, Decimal(0)) + held
    if amount.amount <= 0 or given + amount.amount <= per_customer.amount:
        return None
    left = Money(per_customer.amount - given, budget.policy.currency)
    return _on_budget(
        budget, Reason.PER_CUSTOMER_LIMIT_EXCEEDED,
        f"{amount} for customer {customer} exceeds what remains of the per-customer limit ({left} of {per_customer})",
        "PER_CUSTOMER_LIMIT", f"per_customer_limit is {per_customer}, remaining {left} until {budget.period_end.isoformat()}",
        under=f"customers/{customer}", customer_id=customer, limit=f"{per_customer.amount:f}",
        remaining=f"{left.amount:f}", requested=f"{amount.amount:f}",
    )


#: What no approval lifts, in order of precedence (the first breached refuses the action).
WALLS: tuple[Check, ...] = (check_budget_open, check_currency, check_kind_allowed, check_rule_bendable)
#: What an approver may lift, in the order they are reported (and become escalation reasons).
LIMITS: tuple[Check, ...] = (
    check_bend_quota,
    check_bend_value,
    check_per_action_limit,
    check_split_action,
    check_allowance,
    check_per_customer_limit,
)


def check_action(budget: BudgetState, action: ActionRequest, now: datetime) -> list[Breach]:
    """Raises the first wall's refusal; returns the limits the action exceeds (see the budget's period as of
    ``now``: roll it over first)."""
    for wall in WALLS:
        breach = wall(budget, action, now)
        if breach is not None:
            raise breach.refusal()
    return [breach for limit in LIMITS if (breach := limit(budget, action, now)) is not None]


def check_hold_ceiling(budget: BudgetState, action: ActionRequest, now: datetime) -> Breach | None:
    """An action that would wait for approval (over a limit, with escalation) may wait only up to the hold
    ceiling: what waits, with it, is at most ``max_held`` (default one period allowance, whatever period each hold
    was requested in), and what the period has spent and holds at most the allowance plus ``max_held``. Approving
    moves a hold into spent, so approving everything that waits never takes a period past that."""
    amount, policy = action.amount.amount, budget.policy
    max_held, allowance = policy.max_held, policy.period_allowance
    held = budget.held_anywhere(now)
    period_held, _ = budget.held_in_period(now)
    ceiling = allowance.amount + max_held.amount
    if held + amount <= max_held.amount and budget.spent + period_held + amount <= ceiling:
        return None
    left = Money(min(max_held.amount - held, ceiling - budget.spent - period_held), policy.currency)
    return _on_budget(
        budget, Reason.MAX_HELD_EXCEEDED,
        f"{action.amount} cannot wait for approval: {Money(held, policy.currency)} waits already and the period has "
        f"spent {Money(budget.spent, policy.currency)}; at most {max_held} may wait (escalation.max_held), and at "
        f"most {Money(ceiling, policy.currency)} be spent and held in a period",
        "MAX_HELD", f"max_held is {max_held}, room for {left} until {budget.period_end.isoformat()}",
        max_held=f"{max_held.amount:f}", held=f"{held:f}", spent=f"{budget.spent:f}", ceiling=f"{ceiling:f}",
        requested=f"{amount:f}",
    )


def refusal_of(breaches: Sequence[Breach]) -> PreconditionFailed:
    """The one PreconditionFailed for limits exceeded together (no escalation): every message and violation,
    the first breach's reason and metadata, and which were ``exceeded``."""
    first = breaches[0]
    return PreconditionFailed(
        "; ".join(b.message for b in breaches),
        reason=first.reason,
        violations=[b.violation for b in breaches],
        metadata={**first.metadata, "exceeded": ",".join(b.reason for b in breaches)},
    )


# ---------------------------------------------------------------------------- caps above the employee


#: The caps kept by each ledger: (reason, what the cap is called, the resource collection, the ledger's key).
_CAPS: dict[type, tuple[Reason, str, str, str]] = {
    TeamLedger: (Reason.TEAM_CAP_EXCEEDED, "team", "teams", "team_id"),
    CustomerLedger: (Reason.CUSTOMER_CAP_EXCEEDED, "organisation's per-customer", "customers", "customer_id"),
}


def _ledger_cap(
    ledger: TeamLedger | CustomerLedger, cap: Cap | None, amount: Money, now: datetime, tally: dict[str, Any] | None = None
) -> Breach | None:
    reason, kind, collection, key = _CAPS[type(ledger)]
    owner = getattr(ledger, key)
    return cap_breach(
        ledger.tally if tally is None else tally, cap, amount, now,
        reason=reason, kind=kind, subject=f"{collection}/{owner}", owner={key: owner},
    )


def check_team_cap(team: TeamLedger, amount: Money, now: datetime) -> Breach | None:
    """The team's period cap (what all its members spend and hold together)."""
    return _ledger_cap(team, team.cap, amount, now)


def check_customer_cap(
    ledgers: Sequence[CustomerLedger], caps: Mapping[str, Cap], amount: Money, now: datetime
) -> Breach | None:
    """The organisation's per-customer cap in the amount's currency (what all employees give one customer
    together; a currency without a cap has none). ``ledgers``: the customer's ledger, then those that hold it under
    old spellings of its id (``domain/customers.py``), counted together."""
    return _ledger_cap(ledgers[0], caps.get(amount.currency), amount, now, merged([ledger.tally for ledger in ledgers]))
