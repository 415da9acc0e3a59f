"""The rules of a policy itself: who it may name as approvers (``check_policy_approvers``) and what a supervisor may
grant in it, bounded by their own policy (``check_policy_ceiling``, with ``grants_more`` naming what exceeds it).
Re-exported by ``rules``, the home of every check; kept apart because they judge a policy, not a request against a
budget's state."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from .errors import FieldViolation, InvalidArgument, PermissionDenied
from .periods import PeriodKind
from .policy import EscalationMode, Policy
from .reasons import Reason

__all__ = ["Ceiling", "check_policy_approvers", "check_policy_ceiling", "grants_more", "most_periods_within"]


def check_policy_approvers(employee_id: str, policy: Policy, *, roles_count: bool = True) -> InvalidArgument | None:
    """Nobody is their own approver (``approver_ids`` may not name the budget's employee), and a policy that holds
    actions for approval names someone who can give it: an approver id, or a role while callers' roles count
    (``roles_count``: with authentication on; without it nobody holds a role)."""
    escalation, field = policy.escalation, "policy.escalation"
    own = [index for index, approver in enumerate(escalation.approver_ids) if approver == employee_id]
    if own:
        return InvalidArgument(
            [FieldViolation(f"{field}.approver_ids[{i}]", f"{employee_id} may not approve their own actions")
             for i in own],
            reason=Reason.SELF_APPROVER_NOT_ALLOWED,
        )
    if escalation.mode is EscalationMode.APPROVAL and not escalation.approver_ids and not roles_count:
        return InvalidArgument(
            [FieldViolation(f"{field}.approver_role", "nobody holds a role on a server without authentication: "
                                                     "name approver_ids")],
            reason=Reason.NO_POSSIBLE_APPROVER,
        )
    return None



class _Granted(Protocol):
    """What ``check_policy_ceiling`` reads of the budget whose policy changes."""

    employee_id: str
    policy: Policy


@dataclass(frozen=True)
class Ceiling:
    """Who changes a policy under a ceiling (a supervisor; admins have none), and their own policy: the policy of
    their own open budget, or None when they have none (then they may only keep or lower limits)."""

    granted_by: str
    policy: Policy | None


#: The most periods of one kind (a row) that can touch one period of another (UTC calendar periods, ISO weeks),
#: where it is more than one: 31 days in a month, 6 weeks in a 31-day month starting on a Sunday, 54 in such a leap
#: year; and a week can straddle two months, quarters or years. Every other pair is 1 (a day is in one period of any
#: kind, a month in one quarter and one year ...). ``test_rules`` counts them on the calendar.
_MOST_WITHIN: dict[PeriodKind, dict[PeriodKind, int]] = {
    PeriodKind.DAY: {PeriodKind.WEEK: 7, PeriodKind.MONTH: 31, PeriodKind.QUARTER: 92, PeriodKind.YEAR: 366},
    PeriodKind.WEEK: {PeriodKind.MONTH: 6, PeriodKind.QUARTER: 14, PeriodKind.YEAR: 54},
    PeriodKind.MONTH: {PeriodKind.WEEK: 2, PeriodKind.QUARTER: 3, PeriodKind.YEAR: 12},
    PeriodKind.QUARTER: {PeriodKind.WEEK: 2, PeriodKind.YEAR: 4},
    PeriodKind.YEAR: {PeriodKind.WEEK: 2},
}


def most_periods_within(kind: PeriodKind, other: PeriodKind) -> int:
    """How many periods of ``kind`` can touch one period of ``other``: what a policy of period ``kind`` lets an
    employee spend within one period of ``other`` is at most this many allowances (a monthly allowance can be spent
    twice in the week across the turn of the month)."""
    return _MOST_WITHIN.get(kind, {}).get(other, 1)


def _per_action(policy: Policy) -> Decimal:
    """The most one action may cost without approval: the per-action limit, at most the allowance."""
    allowance = policy.period_allowance.amount
    limit = policy.per_action_limit
    return allowance if limit is None else min(limit.amount, allowance)


def _per_customer(policy: Policy) -> Decimal:
    """The most one customer may receive in a period: the per-customer limit, at most the allowance."""
    allowance = policy.period_allowance.amount
    limit = policy.per_customer_limit
    return allowance if limit is None else min(limit.amount, allowance)


def grants_more(policy: Policy, bound: Policy) -> list[str]:
    """What ``policy`` grants beyond ``bound``, as the names of the parts that exceed it. Amounts per period are
    compared over one of ``bound``'s periods: what ``policy`` allows in every period of its own that can touch it
    (a daily 100 is up to 3,100 in a month; a yearly 3,000 may all go in one month). In another currency nothing
    can be compared: ``["currency"]`` (a bound in another currency bounds nothing). Escalation is not a grant (an
    approver decides, never for themself); approval limits are (a higher or no limit), and so is a shorter split
    window or no same-customer detection."""
    if policy.currency != bound.currency:
        return ["currency"]
    times = most_periods_within(policy.period, bound.period)
    more: list[str] = []
    if policy.period_allowance.amount * times > bound.period_allowance.amount:
        more.append("period_allowance")
    if _per_action(policy) > _per_action(bound):
        more.append("per_action_limit")
    if _per_customer(policy) * times > _per_customer(bound):
        more.append("per_customer_limit")
    more += [f"allowed_kinds.{kind.value}" for kind in policy.allowed_kinds if not bound.allows(kind)]
    for rule in policy.bendable_rules:
        name = f"bendable_rules.{rule.rule_code}"
        limit = bound.bendable_rule(rule.rule_code)
        if limit is None:
            more.append(name)
            continue
        if limit.max_per_period and (not rule.max_per_period or rule.max_per_period * times > limit.max_per_period):
            more.append(f"{name}.max_per_period")
        if limit.max_value is not None and (rule.max_value is None or rule.max_value.amount > limit.max_value.amount):
            more.append(f"{name}.max_value")
    mine, theirs = policy.approval_limits, bound.approval_limits
    if theirs.per_action is not None and (mine.per_action is None or mine.per_action.amount > theirs.per_action.amount):
        more.append("approval_limits.per_action")
    if theirs.per_period is not None and (
        mine.per_period is None or mine.per_period.amount * times > theirs.per_period.amount
    ):
        more.append("approval_limits.per_period")
    if policy.split_detection.window < bound.split_detection.window:
        more.append("split_detection.window")
    if bound.split_detection.same_customer and not policy.split_detection.same_customer:
        more.append("split_detection.same_customer")
    return more


def check_policy_ceiling(budget: _Granted, policy: Policy, ceiling: Ceiling) -> PermissionDenied | None:
    """A supervisor grants no more than their own policy allows: every part of ``policy`` is within the
    supervisor's own policy, or within the budget's policy now (keeping or lowering a limit needs no authority).
    Without a policy of their own in the budget's currency, a supervisor may only keep or lower limits."""
    own = ceiling.policy if ceiling.policy is not None and ceiling.policy.currency == policy.currency else None
    beyond_now = grants_more(policy, budget.policy)
    beyond_own = grants_more(policy, own) if own is not None else beyond_now
    exceeded = [part for part in beyond_now if part in beyond_own]
    if not exceeded:
        return None
    who = ceiling.granted_by
    bound = "their own policy allows" if own is not None else "the budget has now (they have no budget in its currency)"
    return PermissionDenied(
        f"{who} may not grant more than {bound}: {', '.join(exceeded)}",
        reason=Reason.POLICY_CEILING_EXCEEDED,
        metadata={"employee_id": budget.employee_id, "granted_by": who, "exceeded": ",".join(exceeded)},
    )
