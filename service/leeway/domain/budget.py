"""The employee budget aggregate.

Every empowered action an employee takes is an immutable event on their Budget. The event classes
(``Budget.Opened``, ``Budget.PolicyUpdated``, ``Budget.PeriodRolledOver``, ``Budget.ActionRecorded``,
``Budget.ActionApproved``, ``Budget.ActionDenied``, ``Budget.ActionExpired``, ``Budget.ActionReversed``,
``Budget.WinDocumented``, ``Budget.Closed``) are stored in the log under their qualified names in this module: never move or rename
them. Checks live in plain methods that raise domain errors; the ``@event`` methods only apply state,
because they run again on every replay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from collections.abc import Callable, Iterable

from .errors import Conflict, PermissionDenied, PreconditionFailed, PreconditionViolation
from .money import Money
from .periods import period_bounds
from .policy import ActionKind, EscalationMode, Policy

#: Namespace of every deterministic id Leeway derives (budgets, indexes, request records).
LEEWAY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:leeway:v1")

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

_ACTION_ID = re.compile(r"act_([0-9a-f]{32})_([1-9][0-9]{0,18})")
#: Days of per-day spend a budget keeps: more than the longest period (a year).
DAILY_HISTORY_DAYS = 400


@lru_cache(maxsize=65_536)
def leeway_id(name: str) -> UUID:
    """The deterministic id for ``name`` ("budget:<employee>", "request:<request id>", ...): uuid5 in Leeway's
    namespace, remembered (the same ids are derived several times per request and across requests)."""
    return uuid5(LEEWAY_NAMESPACE, name)


def budget_id_for(employee_id: str) -> UUID:
    """The aggregate id of an employee's budget."""
    return leeway_id(f"budget:{employee_id}")


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
    held: Money | None = None
    pending_action_count: int = 0


@dataclass(frozen=True)
class Decision:
    """What happened to an action that needed approval."""

    outcome: str
    approver_id: str
    note: str
    at: datetime
    request_id: str


@dataclass(frozen=True)
class Reversal:
    """The compensating event that reversed an action."""

    actor_id: str
    reason: str
    at: datetime
    restored_to_current_period: bool
    request_id: str


@dataclass(frozen=True)
class WinView:
    """The success story documented for an action."""

    story: str
    customer_quote: str
    outcome: str
    documented_by: str
    at: datetime


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


@dataclass(frozen=True)
class OverLimit:
    """One of the employee's own limits that an action exceeds (escalated or refused)."""

    reason: str
    message: str
    violation: PreconditionViolation
    metadata: dict[str, str]


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
    """An employee's spending authority: a policy, the current period, what was spent and what is held in it."""

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
        actor: str = "",
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
        # Current period only: spend per customer (per_customer_limit) and bends per rule (max_per_period).
        self.customer_spent: dict[str, Decimal] = {}
        self.rule_bends: dict[str, int] = {}
        # Actions waiting for approval, by event version (as str: JSON keys), whatever their period.
        self.holds: dict[str, dict[str, Any]] = {}
        # Decisions and reversals, by the action's event version.
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.state = OPEN
        self.opened_at = at
        self.changed_at = at
        self.closed_at: datetime | None = None
        self.close_reason = ""

    @event("PolicyUpdated")
    def _policy_updated(
        self,
        policy: Policy,
        policy_version: int,
        period_start: datetime,
        period_end: datetime,
        at: datetime,
        recount: dict[str, Any] | None = None,
        actor: str = "",
    ) -> None:
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
        self.customer_spent = {}
        self.rule_bends = {}
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
        pending: bool = False,
        expires_at: datetime | None = None,
        approver_ids: list[str] | None = None,
        approver_role: str = "",
        escalation_reasons: list[str] | None = None,
        actor: str = "",
    ) -> None:
        day = at.date().isoformat()
        rule = details.get("rule_code", "") if kind == ActionKind.RULE_BEND.value else ""
        if pending:
            self.holds[str(self.version + 1)] = {
                "customer_id": customer_id,
                "amount": amount,
                "rule_code": rule,
                "day": day,
                "expires_at": expires_at,
                "approver_ids": list(approver_ids or []),
                "approver_role": approver_role,
            }
        else:
            self._count(day, amount, 1, customer_id, rule)
        self.changed_at = at

    @event("ActionApproved")
    def _action_approved(
        self, action_version: int, approver_id: str, note: str, request_id: str, at: datetime, actor: str = ""
    ) -> None:
        hold = self.holds.pop(str(action_version))
        self._count(hold["day"], hold["amount"], 1, hold["customer_id"], hold["rule_code"])
        self._decided(action_version, APPROVED, approver_id, note, request_id, at)

    @event("ActionDenied")
    def _action_denied(
        self, action_version: int, approver_id: str, note: str, request_id: str, at: datetime, actor: str = ""
    ) -> None:
        self.holds.pop(str(action_version))
        self._decided(action_version, DENIED, approver_id, note, request_id, at)

    @event("ActionExpired")
    def _action_expired(self, action_version: int, request_id: str, at: datetime, actor: str = SYSTEM_ACTOR) -> None:
        self.holds.pop(str(action_version))
        self._decided(action_version, EXPIRED, SYSTEM_ACTOR, "approval timeout passed", request_id, at)

    @event("ActionReversed")
    def _action_reversed(
        self,
        action_version: int,
        actor_id: str,
        reason: str,
        request_id: str,
        customer_id: str,
        amount: Decimal,
        rule_code: str,
        day: str,
        at: datetime,
        actor: str = "",
    ) -> None:
        restored = self._in_period(day)
        self._count(day, -amount, -1, customer_id, rule_code)
        self.outcomes.setdefault(str(action_version), {})["reversal"] = {
            "actor_id": actor_id,
            "reason": reason,
            "at": at,
            "restored_to_current_period": restored,
            "request_id": request_id,
        }
        self.changed_at = at

    @event("WinDocumented")
    def _win_documented(
        self, action_version: int, story: str, customer_quote: str, outcome: str, at: datetime, actor: str = ""
    ) -> None:
        self.outcomes.setdefault(str(action_version), {})["win"] = {
            "story": story,
            "customer_quote": customer_quote,
            "outcome": outcome,
            "documented_by": actor,
            "at": at,
        }
        self.changed_at = at

    @event("Closed")
    def _closed(self, reason: str, at: datetime, actor: str = "") -> None:
        self.state = CLOSED
        self.closed_at = at
        self.close_reason = reason
        self.changed_at = at

    # ------------------------------------------------------------------ state helpers (used by apply)

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
        self, action_version: int, outcome: str, approver_id: str, note: str, request_id: str, at: datetime
    ) -> None:
        self.outcomes.setdefault(str(action_version), {})["decision"] = {
            "outcome": outcome,
            "approver_id": approver_id,
            "note": note,
            "at": at,
            "request_id": request_id,
        }
        self.changed_at = at

    # ------------------------------------------------------------------ commands (checks, then events)

    @classmethod
    def open(
        cls, *, employee_id: str, team_id: str, display_name: str, policy: Policy, now: datetime, actor: str = ""
    ) -> Budget:
        start, end = period_bounds(policy.period, now)
        return cls(
            employee_id=employee_id,
            team_id=team_id,
            display_name=display_name,
            policy=policy,
            period_start=start,
            period_end=end,
            at=now,
            actor=actor,
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

    def check_action(self, action: ActionRequest, now: datetime) -> list[OverLimit]:
        """Raises PreconditionFailed for what no approval can lift; returns the limits the action exceeds.

        Call ``roll_over_if_due`` first so that the checks see the current period.
        """
        self._require_open()
        kind, amount = action.kind, action.amount
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
        over: list[OverLimit] = []
        if kind is ActionKind.RULE_BEND:
            code = action.details.get("rule_code", "")
            rule = self.policy.bendable_rule(code)
            if rule is None:
                bendable = ",".join(r.rule_code for r in self.policy.bendable_rules)
                raise PreconditionFailed(
                    f"rule {code} is not in employee {self.employee_id}'s catalogue of bendable rules",
                    reason="RULE_NOT_BENDABLE",
                    violations=[
                        PreconditionViolation("BENDABLE_RULES", subject, f"{code} is not in policy.bendable_rules")
                    ],
                    metadata={**meta, "rule_code": code, "bendable_rules": bendable},
                )
            if rule.max_per_period:
                _, pending = self.held_in_period(now, rule_code=code)
                used = self.rule_bends.get(code, 0) + pending
                if used + 1 > rule.max_per_period:
                    over.append(
                        OverLimit(
                            "RULE_BEND_QUOTA_EXCEEDED",
                            f"rule {code} was already bent {used} times this period (at most {rule.max_per_period})",
                            PreconditionViolation(
                                "RULE_BEND_QUOTA",
                                f"{subject}/rules/{code}",
                                f"max_per_period is {rule.max_per_period}, used {used} until {self.period_end.isoformat()}",
                            ),
                            {**meta, "rule_code": code, "max_per_period": str(rule.max_per_period), "used": str(used)},
                        )
                    )
            if rule.max_value is not None and amount.amount > rule.max_value.amount:
                over.append(
                    OverLimit(
                        "RULE_BEND_VALUE_EXCEEDED",
                        f"{amount} exceeds the most a bend of {code} may cost ({rule.max_value})",
                        PreconditionViolation(
                            "RULE_BEND_VALUE",
                            f"{subject}/rules/{code}",
                            f"max_value is {rule.max_value}, asked {amount}",
                        ),
                        {
                            **meta,
                            "rule_code": code,
                            "limit": f"{rule.max_value.amount:f}",
                            "requested": f"{amount.amount:f}",
                        },
                    )
                )
        limit = self.policy.per_action_limit
        if limit is not None and amount.amount > limit.amount:
            over.append(
                OverLimit(
                    "PER_ACTION_LIMIT_EXCEEDED",
                    f"{amount} exceeds the per-action limit of {limit}",
                    PreconditionViolation("PER_ACTION_LIMIT", subject, f"per_action_limit is {limit}, asked {amount}"),
                    {**meta, "limit": f"{limit.amount:f}", "requested": f"{amount.amount:f}"},
                )
            )
        held, _ = self.held_in_period(now)
        remaining = self.policy.period_allowance.amount - self.spent - held
        if amount.amount > remaining:
            left = Money(remaining, self.policy.currency)
            over.append(
                OverLimit(
                    "BUDGET_EXHAUSTED",
                    f"{amount} exceeds what remains of this period's allowance ({left})",
                    PreconditionViolation(
                        "PERIOD_ALLOWANCE",
                        subject,
                        f"remaining {left} of {self.policy.period_allowance} until {self.period_end.isoformat()}",
                    ),
                    {
                        **meta,
                        "remaining": f"{remaining:f}",
                        "held": f"{held:f}",
                        "requested": f"{amount.amount:f}",
                        "period_end": self.period_end.isoformat(),
                    },
                )
            )
        per_customer = self.policy.per_customer_limit
        if per_customer is not None:
            customer_held, _ = self.held_in_period(now, customer_id=action.customer_id)
            given = self.customer_spent.get(action.customer_id, Decimal(0)) + customer_held
            if amount.amount > 0 and given + amount.amount > per_customer.amount:
                left = Money(per_customer.amount - given, self.policy.currency)
                over.append(
                    OverLimit(
                        "PER_CUSTOMER_LIMIT_EXCEEDED",
                        f"{amount} for customer {action.customer_id} exceeds what remains of the per-customer limit ({left} of {per_customer})",
                        PreconditionViolation(
                            "PER_CUSTOMER_LIMIT",
                            f"{subject}/customers/{action.customer_id}",
                            f"per_customer_limit is {per_customer}, remaining {left} until {self.period_end.isoformat()}",
                        ),
                        {
                            **meta,
                            "customer_id": action.customer_id,
                            "limit": f"{per_customer.amount:f}",
                            "remaining": f"{left.amount:f}",
                            "requested": f"{amount.amount:f}",
                        },
                    )
                )
        return over

    def record_action(self, action: ActionRequest, *, request_id: str, now: datetime, actor: str = "") -> str:
        """Checks and records an action (or, over a limit with escalation, a pending one); returns its id."""
        self._require_open()
        self.roll_over_if_due(now)
        over = self.check_action(action, now)
        escalation = self.policy.escalation
        if over and escalation.mode is not EscalationMode.APPROVAL:
            first = over[0]
            raise PreconditionFailed(
                "; ".join(o.message for o in over),
                reason=first.reason,
                violations=[o.violation for o in over],
                metadata={**first.metadata, "exceeded": ",".join(o.reason for o in over)},
            )
        pending = bool(over)
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
            pending=pending,
            expires_at=now + escalation.approval_timeout if pending else None,
            approver_ids=list(escalation.approver_ids) if pending else [],
            approver_role=escalation.approver_role if pending else "",
            escalation_reasons=[o.reason for o in over],
            actor=actor,
        )
        return format_action_id(self.id, self.version)

    def hold(self, action_version: int) -> dict[str, Any] | None:
        """The hold of a pending action, or None."""
        return self.holds.get(str(action_version))

    def _pending_hold(self, action_version: int, now: datetime) -> dict[str, Any]:
        subject = f"actions/{format_action_id(self.id, action_version)}"
        hold = self.holds.get(str(action_version))
        if hold is None:
            decision = self.outcomes.get(str(action_version), {}).get("decision")
            if decision is not None:
                raise PreconditionFailed(
                    f"the action was already decided ({decision['outcome']})",
                    reason="ACTION_ALREADY_DECIDED",
                    violations=[PreconditionViolation("ACTION_STATE", subject, f"action is {decision['outcome']}")],
                    metadata={"outcome": decision["outcome"], "decided_by": decision["approver_id"]},
                )
            raise PreconditionFailed(
                "the action did not need approval; it is not waiting for a decision",
                reason="ACTION_NOT_PENDING",
                violations=[PreconditionViolation("ACTION_STATE", subject, "action is not PENDING_APPROVAL")],
            )
        if hold["expires_at"] <= now:
            raise PreconditionFailed(
                f"the approval timeout passed at {hold['expires_at'].isoformat()}; the hold was released",
                reason="APPROVAL_EXPIRED",
                violations=[PreconditionViolation("ACTION_STATE", subject, "action is EXPIRED")],
                metadata={"expire_time": hold["expires_at"].isoformat()},
            )
        return hold

    def _check_approver(self, hold: dict[str, Any], approver_id: str, approver_roles: Iterable[str]) -> None:
        if approver_id == self.employee_id:
            raise PermissionDenied(
                "nobody may decide their own action",
                reason="SELF_APPROVAL_NOT_ALLOWED",
                metadata={"approver_id": approver_id, "employee_id": self.employee_id},
            )
        role = hold["approver_role"]
        if approver_id in hold["approver_ids"] or (role and role in set(approver_roles)):
            return
        raise PermissionDenied(
            f"{approver_id} may not decide this action (approvers: {', '.join(hold['approver_ids']) or '-'}"
            f"{'; role ' + role if role else ''})",
            reason="APPROVER_NOT_AUTHORIZED",
            metadata={
                "approver_id": approver_id,
                "approver_ids": ",".join(hold["approver_ids"]),
                "approver_role": role,
            },
        )

    def approve(
        self,
        action_version: int,
        *,
        approver_id: str,
        note: str,
        request_id: str,
        now: datetime,
        approver_roles: Iterable[str] = (),
        actor: str = "",
    ) -> dict[str, Any]:
        """Approves a pending action, judged by the policy it was requested under; returns its hold."""
        hold = self._pending_hold(action_version, now)
        self._check_approver(hold, approver_id, approver_roles)
        self._require_open()
        self.roll_over_if_due(now)
        self._action_approved(
            action_version=action_version,
            approver_id=approver_id,
            note=note,
            request_id=request_id,
            at=now,
            actor=actor or approver_id,
        )
        return hold

    def deny(
        self,
        action_version: int,
        *,
        approver_id: str,
        note: str,
        request_id: str,
        now: datetime,
        approver_roles: Iterable[str] = (),
        actor: str = "",
    ) -> dict[str, Any]:
        """Denies a pending action and releases its hold; returns the hold."""
        hold = self._pending_hold(action_version, now)
        self._check_approver(hold, approver_id, approver_roles)
        self._action_denied(
            action_version=action_version,
            approver_id=approver_id,
            note=note,
            request_id=request_id,
            at=now,
            actor=actor or approver_id,
        )
        return hold

    def _action_state(self, action_version: int) -> str:
        """The state of one of this budget's actions by its events (a pending one past its timeout stays
        PENDING_APPROVAL here until its expiry is recorded; ``action_view`` shows it EXPIRED by the clock)."""
        known = self.outcomes.get(str(action_version), {})
        if "reversal" in known:
            return REVERSED
        if str(action_version) in self.holds:
            return PENDING_APPROVAL
        decision = known.get("decision")
        return str(decision["outcome"]) if decision else RECORDED

    def expire(self, action_version: int, *, request_id: str, now: datetime) -> dict[str, Any] | None:
        """Expires a pending action whose timeout has passed; returns its hold, or None if there is nothing to do."""
        hold = self.holds.get(str(action_version))
        if hold is None or hold["expires_at"] > now:
            return None
        self._action_expired(action_version=action_version, request_id=request_id, at=now)
        return hold

    def reverse(
        self, action: ActionView, *, actor_id: str, reason: str, request_id: str, now: datetime, actor: str = ""
    ) -> bool:
        """Reverses a recorded or approved action; returns whether the amount went back into the current period."""
        version = action.budget_version
        subject = f"actions/{action.action_id}"
        outcome = self.outcomes.get(str(version), {})
        if "reversal" in outcome:
            raise PreconditionFailed(
                "the action was already reversed",
                reason="ACTION_ALREADY_REVERSED",
                violations=[PreconditionViolation("ACTION_STATE", subject, "action is REVERSED")],
            )
        state = self._action_state(version)
        if state not in (RECORDED, APPROVED):
            raise PreconditionFailed(
                f"a {state} action cannot be reversed" + (" (deny it instead)" if state == PENDING_APPROVAL else ""),
                reason="ACTION_NOT_REVERSIBLE",
                violations=[PreconditionViolation("ACTION_STATE", subject, f"action is {state}")],
                metadata={"state": state},
            )
        self.roll_over_if_due(now)
        day = action.record_time.date().isoformat()
        self._action_reversed(
            action_version=version,
            actor_id=actor_id,
            reason=reason,
            request_id=request_id,
            customer_id=action.customer_id,
            amount=action.amount.amount,
            rule_code=action.details.get("rule_code", "") if action.kind is ActionKind.RULE_BEND else "",
            day=day,
            at=now,
            actor=actor or actor_id,
        )
        return bool(self.outcomes[str(version)]["reversal"]["restored_to_current_period"])

    def document_win(
        self, action: ActionView, *, story: str, customer_quote: str, outcome: str, now: datetime, actor: str = ""
    ) -> None:
        """Attaches a success story to a recorded or approved action (one per action)."""
        version = action.budget_version
        subject = f"actions/{action.action_id}"
        known = self.outcomes.get(str(version), {})
        if "win" in known:
            raise PreconditionFailed(
                "a win is already documented for this action",
                reason="WIN_ALREADY_DOCUMENTED",
                violations=[PreconditionViolation("ACTION_WIN", subject, "one win per action")],
            )
        state = self._action_state(version)
        if state not in (RECORDED, APPROVED):
            raise PreconditionFailed(
                f"a {state} action cannot be a win",
                reason="ACTION_NOT_WINNABLE",
                violations=[PreconditionViolation("ACTION_STATE", subject, f"action is {state}")],
                metadata={"state": state},
            )
        self._win_documented(
            action_version=version, story=story, customer_quote=customer_quote, outcome=outcome, at=now, actor=actor
        )

    def update_policy(
        self,
        policy: Policy,
        *,
        now: datetime,
        expected_version: int = 0,
        recount: Callable[[datetime], dict[str, Any]] | None = None,
        actor: str = "",
    ) -> None:
        """Replaces the policy. If the period changes, ``recount(period_start)`` gives the new period's
        per-customer spend and rule bends (see ``Budget.recount``), read from this budget's events."""
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
        counts = None
        if (start, end) != (self.period_start, self.period_end):
            counts = recount(start) if recount is not None else {"customers": {}, "rules": {}}
        self._policy_updated(
            policy=policy,
            policy_version=self.policy_version + 1,
            period_start=start,
            period_end=end,
            at=now,
            recount=counts,
            actor=actor,
        )

    def close(self, reason: str, *, now: datetime, actor: str = "") -> None:
        self._require_open()
        self._closed(reason=reason, at=now, actor=actor)

    # ------------------------------------------------------------------ queries

    @staticmethod
    def recount(events: Iterable[Any], period_start: datetime) -> dict[str, Any]:
        """Per-customer spend and per-rule bends counted from ``period_start`` on, folded from a budget's events."""
        first = period_start.date().isoformat()
        customers: dict[str, Decimal] = {}
        rules: dict[str, int] = {}

        def add(customer: str, amount: Decimal, rule: str, count: int) -> None:
            customers[customer] = customers.get(customer, Decimal(0)) + amount
            if rule:
                rules[rule] = rules.get(rule, 0) + count

        recorded: dict[int, Any] = {}
        for stored in events:
            if isinstance(stored, Budget.ActionRecorded):
                recorded[stored.originator_version] = stored
                if not getattr(stored, "pending", False) and stored.at.date().isoformat() >= first:
                    add(stored.customer_id, stored.amount, _rule_of(stored), 1)
            elif isinstance(stored, Budget.ActionApproved):
                original = recorded.get(stored.action_version)
                if original is not None and original.at.date().isoformat() >= first:
                    add(original.customer_id, original.amount, _rule_of(original), 1)
            elif isinstance(stored, Budget.ActionReversed) and stored.day >= first:
                add(stored.customer_id, -stored.amount, stored.rule_code, -1)
        return {
            "customers": {c: a for c, a in customers.items() if a},
            "rules": {r: n for r, n in rules.items() if n},
        }

    def outcome(self, action_version: int) -> dict[str, Any]:
        return self.outcomes.get(str(action_version), {})

    def view(self, now: datetime | None = None) -> BudgetView:
        """The budget as callers see it; with ``now`` past the period end, the new period (nothing spent yet)."""
        at = now if now is not None else self.changed_at
        start, end, spent, count = self.period_start, self.period_end, self.spent, self.period_action_count
        rolled = now is not None and now >= end and self.state == OPEN
        if rolled:
            start, end = period_bounds(self.policy.period, now)  # type: ignore[arg-type]
            spent, count = Decimal(0), 0
        first, last = start.date().isoformat(), end.date().isoformat()
        live = [h for h in self.holds.values() if h["expires_at"] > at]
        held = sum((h["amount"] for h in live if first <= h["day"] < last), Decimal(0))
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
            remaining=Money(allowance.amount - spent - held, allowance.currency),
            version=self.version,
            state=self.state,
            create_time=self.opened_at,
            update_time=self.changed_at,
            close_time=self.closed_at,
            close_reason=self.close_reason,
            period_action_count=count,
            held=Money(held, allowance.currency),
            pending_action_count=len(live),
        )


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
        decision=None
        if decision is None
        else Decision(
            decision["outcome"], decision["approver_id"], decision["note"], decision["at"], decision["request_id"]
        ),
        reversal=None
        if reversal is None
        else Reversal(
            reversal["actor_id"],
            reversal["reason"],
            reversal["at"],
            bool(reversal["restored_to_current_period"]),
            reversal["request_id"],
        ),
        recorded_by=getattr(event, "actor", "") or "",
        win=None if "win" not in outcome else WinView(
            outcome["win"]["story"],
            outcome["win"]["customer_quote"],
            outcome["win"]["outcome"],
            outcome["win"]["documented_by"],
            outcome["win"]["at"],
        ),
    )
