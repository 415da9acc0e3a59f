"""The preconditions of a budget's commands other than spending: deciding a pending action, reversing one,
documenting a win, changing the policy, reopening and moving. Each returns the error to raise, or None.

Who may do it comes before the state it is in (``check_approver`` before ``check_decidable``;
``check_reversible`` refuses the action's own employee first), so that a refusal for lack of authority never
tells the caller more about the action than that. An approval is judged last against the approver's own
approval limits (``check_approval_authority``). The checks of an action itself are in ``rules``.

Messages, reasons, violations and metadata are what callers receive: change none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .errors import (
    Conflict,
    LeewayError,
    PermissionDenied,
    PreconditionFailed,
    PreconditionViolation,
)
from .ids import format_action_id
from .money import Money
from .periods import period_bounds
from .policy import Policy
from .reasons import Reason
from .views import APPROVED, OPEN, PENDING_APPROVAL, RECORDED, ActionView, action_state

from .rules import BudgetState, _on_budget, budget_closed

# ---------------------------------------------------------------------------- the other commands of a budget


def check_decidable(budget: BudgetState, action_version: int, now: datetime) -> PreconditionFailed | None:
    """An approver can decide only an action that waits for approval and whose timeout has not passed."""
    subject = f"actions/{format_action_id(budget.id, action_version)}"
    hold = budget.hold(action_version)
    if hold is None:
        decision = budget.outcome(action_version).get("decision")
        if decision is not None:
            return PreconditionFailed(
                f"the action was already decided ({decision['outcome']})",
                reason=Reason.ACTION_ALREADY_DECIDED,
                violations=[PreconditionViolation("ACTION_STATE", subject, f"action is {decision['outcome']}")],
                metadata={"outcome": decision["outcome"], "decided_by": decision["approver_id"]},
            )
        return PreconditionFailed(
            "the action did not need approval; it is not waiting for a decision",
            reason=Reason.ACTION_NOT_PENDING,
            violations=[PreconditionViolation("ACTION_STATE", subject, "action is not PENDING_APPROVAL")],
        )
    if hold["expires_at"] <= now:
        return PreconditionFailed(
            f"the approval timeout passed at {hold['expires_at'].isoformat()}; the hold was released",
            reason=Reason.APPROVAL_EXPIRED,
            violations=[PreconditionViolation("ACTION_STATE", subject, "action is EXPIRED")],
            metadata={"expire_time": hold["expires_at"].isoformat()},
        )
    return None


@dataclass(frozen=True)
class Approver:
    """Who decides a held action, as their credentials say: their id, the roles and teams they assert, and whether
    they decide in any team (an admin)."""

    id: str
    roles: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()
    any_team: bool = False


def check_approver(action: ActionView, approver: Approver) -> PermissionDenied | None:
    """Nobody decides their own action; the others need to be one of the approvers named when it was requested, or
    hold its approver role in the action's team (``approver_teams``, the teams the caller's credentials assert;
    ``any_team`` for an admin). Judged by what was recorded with the action, whatever its state now, and checked
    before its state (``check_decidable``). An action that never waited for approval names no approver: nothing
    here refuses it, its state does (ACTION_NOT_PENDING). The refusal names neither the approvers nor the team."""
    if approver.id == action.employee_id:
        return PermissionDenied(
            "nobody may decide their own action",
            reason=Reason.SELF_APPROVAL_NOT_ALLOWED,
            metadata={"approver_id": approver.id, "employee_id": action.employee_id},
        )
    role = action.approver_role
    if not action.approver_ids and not role:
        return None
    if approver.id in action.approver_ids:
        return None
    if role and role in approver.roles and (approver.any_team or action.team_id in approver.teams):
        return None
    return PermissionDenied(
        f"{approver.id} may not decide this action: it needs one of the approvers its policy named"
        + (f", or the role {role} in the action's team" if role else ""),
        reason=Reason.APPROVER_NOT_AUTHORIZED,
        metadata={"approver_id": approver.id, "approver_role": role},
    )


def check_approval_authority(
    approver: BudgetState | None, action: ActionView, now: datetime
) -> PreconditionFailed | None:
    """An approver whose own policy has approval limits approves at most ``per_action`` for one action and
    ``per_period`` in a period of their own policy (``Budget.approved_in_period``), in their policy's currency,
    while their budget is open. Beyond them the approval is refused and the action keeps waiting for another of its
    approvers (one with more authority). Without a budget of their own, or limits in it, nothing limits them."""
    if approver is None or not approver.policy.approval_limits.limited:
        return None
    limits, currency, amount = approver.policy.approval_limits, approver.policy.currency, action.amount
    end = period_bounds(approver.policy.period, now)[1]
    approved = Money(approver.approved_in_period(now), currency)
    found: list[tuple[str, str]] = []  # (what the message says, the violation's description)
    if approver.state != OPEN:
        found.append(("their budget is closed", "the approver's budget is closed"))
    elif amount.currency != currency:
        found.append((f"their approval limits are in {currency}", f"approval limits are in {currency}"))
    else:
        per_action, per_period = limits.per_action, limits.per_period
        if per_action is not None and amount.amount > per_action.amount:
            found.append((f"{amount} is over their per-action approval limit of {per_action}",
                          f"approval_limits.per_action is {per_action}"))
        if per_period is not None and approved.amount + amount.amount > per_period.amount:
            over = f"{amount} and the {approved} they approved this period are over their per-period approval limit"
            found.append((f"{over} of {per_period}",
                          f"approval_limits.per_period is {per_period}, approved {approved} until {end.isoformat()}"))
    if not found:
        return None
    return PreconditionFailed(
        f"{approver.employee_id} may not approve this action: {'; '.join(m for m, _ in found)} (another of its "
        "approvers may)",
        reason=Reason.APPROVAL_LIMIT_EXCEEDED,
        violations=[PreconditionViolation("APPROVAL_LIMITS", f"budgets/{approver.employee_id}", d) for _, d in found],
        metadata={
            "approver_id": approver.employee_id,
            "per_action": "" if limits.per_action is None else f"{limits.per_action.amount:f}",
            "per_period": "" if limits.per_period is None else f"{limits.per_period.amount:f}",
            "approved": f"{approved.amount:f}",
            "requested": f"{amount.amount:f}",
            "period_end": end.isoformat(),
        },
    )


@dataclass(frozen=True)
class _Once:
    """What can happen to an action once (``key`` in its budget's outcomes), and only to a recorded or approved
    one: the refusal when it happened already (message, reason, violation type and description), and the
    message (of the state) and reason refusing an action in another state."""

    key: str
    done: tuple[str, Reason, str, str]
    refused: Callable[[str], str]
    refused_reason: Reason

    def check(self, budget: BudgetState, action: ActionView) -> PreconditionFailed | None:
        version, subject = action.budget_version, f"actions/{action.action_id}"
        if self.key in budget.outcome(version):
            message, reason, kind, description = self.done
            return PreconditionFailed(
                message, reason=reason, violations=[PreconditionViolation(kind, subject, description)]
            )
        state = action_state(budget, version)
        if state in (RECORDED, APPROVED):
            return None
        return PreconditionFailed(
            self.refused(state),
            reason=self.refused_reason,
            violations=[PreconditionViolation("ACTION_STATE", subject, f"action is {state}")],
            metadata={"state": state},
        )


_REVERSAL = _Once(
    "reversal",
    ("the action was already reversed", Reason.ACTION_ALREADY_REVERSED, "ACTION_STATE", "action is REVERSED"),
    lambda state: f"a {state} action cannot be reversed" + (" (deny it instead)" if state == PENDING_APPROVAL else ""),
    Reason.ACTION_NOT_REVERSIBLE,
)
_WIN = _Once(
    "win",
    ("a win is already documented for this action", Reason.WIN_ALREADY_DOCUMENTED, "ACTION_WIN", "one win per action"),
    lambda state: f"a {state} action cannot be a win",
    Reason.ACTION_NOT_WINNABLE,
)


def check_reversible(budget: BudgetState, action: ActionView, actor_id: str) -> LeewayError | None:
    """Nobody reverses their own action (as nobody decides their own: the amount would return to their own
    budget); the others only a recorded or approved action, once."""
    if actor_id == action.employee_id:
        return PermissionDenied(
            "nobody may reverse their own action",
            reason=Reason.SELF_REVERSAL_NOT_ALLOWED,
            metadata={"actor_id": actor_id, "employee_id": action.employee_id},
        )
    return _REVERSAL.check(budget, action)


def check_winnable(budget: BudgetState, action: ActionView) -> PreconditionFailed | None:
    """A win can be documented once, for a recorded or approved action."""
    return _WIN.check(budget, action)


def check_policy_change(budget: BudgetState, policy: Policy, expected_version: int) -> LeewayError | None:
    """A policy replaces another on an open budget, at the version the caller expects, in the same currency."""
    if expected_version and expected_version != budget.version:
        return Conflict(
            f"budget of {budget.employee_id} is at version {budget.version}, not {expected_version}",
            reason=Reason.VERSION_MISMATCH,
            metadata={"employee_id": budget.employee_id, "current_version": str(budget.version)},
        )
    closed = budget_closed(budget)
    if closed is not None:
        return closed.refusal()
    currency = budget.policy.currency
    if policy.currency == currency:
        return None
    return _on_budget(
        budget, Reason.CURRENCY_MISMATCH, f"the budget is in {currency}; a policy cannot change its currency",
        "CURRENCY", f"budget currency is {currency}", budget_currency=currency,
    ).refusal()


# ---------------------------------------------------------------------------- the employee life cycle

def check_reopenable(budget: BudgetState) -> PreconditionFailed | None:
    """Only a closed budget can be reopened (BUDGET_NOT_CLOSED)."""
    if budget.state != OPEN:
        return None
    return _on_budget(
        budget, Reason.BUDGET_NOT_CLOSED,
        f"the budget of employee {budget.employee_id} is open; only a closed budget can be reopened",
        "BUDGET_STATE", "budget is open",
    ).refusal()


def check_movable(budget: BudgetState, team_id: str) -> PreconditionFailed | None:
    """An employee moves from an open budget (BUDGET_CLOSED: reopen it first) to another team than theirs
    (ALREADY_IN_TEAM)."""
    closed = budget_closed(budget)
    if closed is not None:
        return closed.refusal()
    if budget.team_id != team_id:
        return None
    return _on_budget(
        budget, Reason.ALREADY_IN_TEAM, f"employee {budget.employee_id} is already in team {team_id}",
        "TEAM", f"the budget is in team {team_id} already", team_id=team_id,
    ).refusal()
