"""The employee budget aggregate.

Every empowered action an employee takes is an immutable event on their Budget. The event classes (``Opened``,
``PolicyUpdated``, ``PeriodRolledOver``, ``ActionRecorded``, ``ActionApproved``, ``ActionDenied``,
``ActionExpired``, ``ActionReversed``, ``WinDocumented``, ``Closed``, ``ApprovalGiven``, ``Reopened``,
``TeamChanged``) are stored in the log under their qualified names in this module: never move or rename them. Checks
live in ``rules`` (plain functions whose refusals the commands raise); the ``@event`` methods only apply state,
because they run again on every replay.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from . import command_rules, recent, rules
from .periods import period_bounds
from .policy import ActionKind, EscalationMode, Policy
from .rules import ActionRequest, Breach
from .budget_state import DAILY_HISTORY_DAYS, BudgetStateBase  # noqa: F401 (DAILY_HISTORY_DAYS: re-exported)
from .ids import budget_id_for, format_action_id
from .views import APPROVED, CLOSED, DENIED, EXPIRED, OPEN, SYSTEM_ACTOR, ActionView



class Budget(BudgetStateBase, Aggregate):
    """An employee's spending authority: a policy, the current period, what was spent and what is held in it."""

    #: 2: ``recent`` and ``approved`` (issue 19). A snapshot taken before has neither: ``upcast_v1_v2``.
    class_version = 2
    #: The version of the team roster's ``MemberAdded`` that lists the budget in its team now, set when the employee
    #: moves (``TeamChanged``); None: the one of its opening. A class attribute, so that budgets restored from a
    #: snapshot taken before moves existed have it too.
    team_entry: int | None = None

    @staticmethod
    def create_id(employee_id: str) -> UUID:
        return budget_id_for(employee_id)

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot from before split detection and approval limits: nothing recent is known (the actions after
        the snapshot are counted as they replay) and nothing was approved under limits (they did not exist)."""
        state.setdefault("recent", {})
        state.setdefault("approved", {})

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
        # Recent actions by case (and customer, if the policy opts in), for split detection: see ``recent``.
        self.recent: recent.Recent = {}
        # What this employee approved of other people's actions while their policy has approval limits, per UTC
        # day (ISO date -> amount), for DAILY_HISTORY_DAYS days.
        self.approved: dict[str, Decimal] = {}
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
        self._apply_policy(policy, policy_version, period_start, period_end, at, recount)

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
        self._start_period(period_start, period_end, at)

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
        rule = details.get("rule_code", "") if kind == ActionKind.RULE_BEND.value else ""
        hold = {"expires_at": expires_at, "approver_ids": list(approver_ids or []), "approver_role": approver_role}
        self._apply_action(self.version + 1, customer_id, case_id, amount, rule, at, hold if pending else None)

    @event("ActionApproved")
    def _action_approved(
        self, action_version: int, approver_id: str, note: str, request_id: str, at: datetime, actor: str = ""
    ) -> None:
        hold = self.holds.pop(str(action_version))
        self._count(hold["day"], hold["amount"], 1, hold["customer_id"], hold["rule_code"])
        # Spent in the period it was requested in: the current one, or one that has ended (whose figures change).
        self._decided(
            action_version, APPROVED, approver_id, note, request_id, at, in_current_period=self._in_period(hold["day"])
        )

    @event("ActionDenied")
    def _action_denied(
        self, action_version: int, approver_id: str, note: str, request_id: str, at: datetime, actor: str = ""
    ) -> None:
        self.holds.pop(str(action_version))
        recent.forget(self.recent, action_version)
        self._decided(action_version, DENIED, approver_id, note, request_id, at)

    @event("ActionExpired")
    def _action_expired(self, action_version: int, request_id: str, at: datetime, actor: str = SYSTEM_ACTOR) -> None:
        self.holds.pop(str(action_version))
        recent.forget(self.recent, action_version)
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
        self._apply_reversal(action_version, actor_id, reason, request_id, customer_id, amount, rule_code, day, at)

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

    @event("ApprovalGiven")
    def _approval_given(
        self, action_id: str, action_employee_id: str, amount: Decimal, currency: str, at: datetime, actor: str = ""
    ) -> None:
        """This budget's employee approved ``action_employee_id``'s action under their policy's approval limits."""
        self._count_approved(amount, at)

    @event("Closed")
    def _closed(self, reason: str, at: datetime, actor: str = "") -> None:
        self.state = CLOSED
        self.closed_at = at
        self.close_reason = reason
        self.changed_at = at

    @event("Reopened")
    def _reopened(self, reason: str, at: datetime, actor: str = "") -> None:
        self.state = OPEN
        self.closed_at = None
        self.close_reason = ""
        self.changed_at = at

    @event("TeamChanged")
    def _team_changed(
        self, from_team_id: str, team_id: str, reason: str, roster_version: int, at: datetime, actor: str = ""
    ) -> None:
        self.team_id = team_id
        self.team_entry = roster_version
        self.changed_at = at

    # ------------------------------------------------------------------ commands (checks, then events)

    @classmethod
    def open(
        cls,
        *,
        employee_id: str,
        team_id: str,
        display_name: str,
        policy: Policy,
        now: datetime,
        actor: str = "",
        roles_count: bool = True,
    ) -> Budget:
        """A new budget; its policy may not make the employee their own approver, and must name a possible one
        (``rules.check_policy_approvers``; ``roles_count``: whether callers' roles count, i.e. authentication)."""
        _raise(rules.check_policy_approvers(employee_id, policy, roles_count=roles_count))
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

    def check_action(self, action: ActionRequest, now: datetime) -> list[Breach]:
        """Raises PreconditionFailed for what no approval can lift; returns the limits the action exceeds
        (``rules.check_action``). Call ``roll_over_if_due`` first so that the checks see the current period."""
        return rules.check_action(self, action, now)

    def record_action(self, action: ActionRequest, *, request_id: str, now: datetime, actor: str = "") -> str:
        """Checks and records an action (or, over a limit with escalation, a pending one); returns its id."""
        self._require_open()
        self.roll_over_if_due(now)
        over = self.check_action(action, now)
        escalation = self.policy.escalation
        if over and escalation.mode is not EscalationMode.APPROVAL:
            raise rules.refusal_of(over)
        pending = bool(over)
        if pending:  # it would wait: only up to the hold ceiling (named first, with the limits that made it wait)
            ceiling = rules.check_hold_ceiling(self, action, now)
            if ceiling is not None:
                raise rules.refusal_of([ceiling, *over])
        # Every argument of ``_action_recorded`` named, straight to its event class: the same event, without the
        # library's per-call handling of an @event method's arguments (about 6 µs of each action's CPU).
        self.trigger_event(
            Budget.ActionRecorded,
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
            escalation_reasons=[str(o.reason) for o in over],
            actor=actor,
        )
        return format_action_id(self.id, self.version)

    def decide(
        self,
        approve: bool,
        action: ActionView,
        approver: command_rules.Approver,
        *,
        note: str,
        request_id: str,
        now: datetime,
        authority: Callable[[], Budget | None] | None = None,
        actor: str = "",
    ) -> dict[str, Any]:
        """Approves a pending action, judged by the policy it was requested under, or denies it and releases its
        hold; returns the hold. Who may decide it is checked before its state
        (``command_rules.check_approver``), and an
        approval last against the approver's own approval limits (``authority`` loads the approver's budget, if
        they have one: ``command_rules.check_approval_authority``), which then counts it (``ApprovalGiven``)."""
        action_version = action.budget_version
        _raise(command_rules.check_approver(action, approver))
        _raise(command_rules.check_decidable(self, action_version, now))
        hold = self.holds[str(action_version)]
        if approve:  # a denial releases the hold, even of a closed budget
            self._require_open()
            own = authority() if authority is not None else None
            _raise(command_rules.check_approval_authority(own, action, now))
            self.roll_over_if_due(now)
            if own is not None and own.policy.approval_limits.limited:
                own.count_approval(action, now=now, actor=actor or approver.id)
        decided = self._action_approved if approve else self._action_denied
        decided(
            action_version=action_version, approver_id=approver.id, note=note, request_id=request_id, at=now,
            actor=actor or approver.id,
        )
        return hold

    def count_approval(self, action: ActionView, *, now: datetime, actor: str = "") -> None:
        """Counts an approval of someone else's ``action`` by this budget's employee against their approval limits
        (``decide`` does, after ``command_rules.check_approval_authority``)."""
        self._approval_given(
            action_id=action.action_id, action_employee_id=action.employee_id, amount=action.amount.amount,
            currency=action.amount.currency, at=now, actor=actor,
        )

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
        _raise(command_rules.check_reversible(self, action, actor_id))
        version = action.budget_version
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
        _raise(command_rules.check_winnable(self, action))
        version = action.budget_version
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
        ceiling: rules.Ceiling | None = None,
        roles_count: bool = True,
    ) -> None:
        """Replaces the policy. If the period changes, ``recount(period_start)`` gives the new period's
        per-customer spend and rule bends (see ``Budget.recount``), read from this budget's events. A supervisor's
        change is bounded by their ``ceiling`` (``rules.check_policy_ceiling``; None: an admin's, unbounded). The
        policy's approvers are checked first, as at ``open``."""
        _raise(rules.check_policy_approvers(self.employee_id, policy, roles_count=roles_count))
        _raise(command_rules.check_policy_change(self, policy, expected_version))
        if ceiling is not None:
            _raise(rules.check_policy_ceiling(self, policy, ceiling))
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

    def close(self, reason: str, *, now: datetime, request_id: str = "", actor: str = "") -> list[tuple[int, str]]:
        """Closes the budget. Nothing may wait for approval on a budget that can no longer spend: each pending
        action is decided first, as the system (``SYSTEM_ACTOR``): EXPIRED if its timeout has passed, else DENIED
        with the note "budget closed: <reason>". Returns (action version, outcome) of each, for the ledgers and the
        hold book to release."""
        self._require_open()
        released: list[tuple[int, str]] = []
        for version in sorted(int(v) for v in self.holds):
            if self.expire(version, request_id=request_id, now=now) is not None:
                released.append((version, EXPIRED))
                continue
            self._action_denied(
                action_version=version,
                approver_id=SYSTEM_ACTOR,
                note=f"budget closed: {reason}",
                request_id=request_id,
                at=now,
                actor=actor,
            )
            released.append((version, DENIED))
        self._closed(reason=reason, at=now, actor=actor)
        return released

    def reopen(self, reason: str, *, now: datetime, actor: str = "") -> None:
        """Reopens a closed budget under the policy it had (``command_rules.check_reopenable``); it starts the current
        period if the one it was closed in has ended."""
        _raise(command_rules.check_reopenable(self))
        self._reopened(reason=reason, at=now, actor=actor)
        self.roll_over_if_due(now)

    def move(self, team_id: str, *, reason: str, join: Callable[[], int], now: datetime, actor: str = "") -> None:
        """Moves the employee to ``team_id`` (``command_rules.check_movable``): what they do from now on counts for that
        team; what they did, and what still waits for approval, stays with the team it was recorded in.
        ``join()`` lists them in the new team's roster and returns that entry's version."""
        _raise(command_rules.check_movable(self, team_id))
        self.roll_over_if_due(now)
        self._team_changed(
            from_team_id=self.team_id, team_id=team_id, reason=reason, roster_version=join(), at=now, actor=actor
        )


def _raise(error: Exception | None) -> None:
    if error is not None:
        raise error

