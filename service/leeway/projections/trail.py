"""Audit trails: the events of a budget, or everything done for a customer, as sentences people can read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..domain.budget import Budget
from ..domain.ids import format_action_id
from ..domain.views import ActionView
from ..domain.money import Money
from ..domain.policy import ActionKind


@dataclass(frozen=True)
class TrailEntry:
    time: datetime
    actor: str
    employee_id: str
    customer_id: str
    action_id: str
    event_type: str
    policy_version: int
    amount: Money | None
    reason: str
    summary: str


#: ``str(Money)`` of positive amounts (amounts repeat, and normalising a Decimal is most of writing one).
_MONEY_TEXT: dict[tuple[Decimal, str], str] = {}


def _money_text(money: Money) -> str:
    if not money.amount > 0:
        return str(money)
    key = (money.amount, money.currency)  # equal positive amounts normalise alike: 1.50 and 1.5 are both "1.5"
    text = _MONEY_TEXT.get(key)
    if text is None:
        if len(_MONEY_TEXT) >= 4096:
            _MONEY_TEXT.clear()
        text = _MONEY_TEXT[key] = str(money)
    return text


def _what(kind: ActionKind, customer: str, amount: Money, details: dict[str, str]) -> str:
    if kind is ActionKind.REFUND:
        return f"refunded {_money_text(amount)} to {customer} (order {details.get('order_id', '?')})"
    if kind is ActionKind.CREDIT:
        return f"credited {_money_text(amount)} to {customer}'s account {details.get('account_ref', '?')}"
    if kind is ActionKind.RULE_BEND:
        worth = f" worth {_money_text(amount)}" if amount.amount else ""
        return f"bent rule {details.get('rule_code', '?')} for {customer}{worth}"
    return f"gave {customer} a gift ({details.get('gift_type', '?')}) worth {_money_text(amount)}"


def _entry(
    view: ActionView, time: datetime, actor: str, event: str, reason: str, summary: str, amount: Money | None
) -> TrailEntry:
    return TrailEntry(
        time, actor, view.employee_id, view.customer_id, view.action_id, event, view.policy_version, amount, reason,
        summary,
    )


def recording_entry(view: ActionView) -> TrailEntry:
    """The entry of an action's recording."""
    return _recording(
        view.action_id, view.employee_id, view.customer_id, view.policy_version, view.record_time, view.recorded_by,
        view.reason, view.amount, view.kind, view.details, view.escalation_reasons,
    )


def recorded_entry(event: Any) -> TrailEntry:
    """``recording_entry`` of a ``Budget.ActionRecorded`` event's view, read from the event without building the
    view (``domain.views.action_view``: a projection rebuild writes one for every action)."""
    return _recording(
        format_action_id(event.originator_id, event.originator_version), event.employee_id, event.customer_id,
        event.policy_version, event.at, getattr(event, "actor", "") or "", event.reason,
        Money(event.amount, event.currency), ActionKind(event.kind), event.details,
        getattr(event, "escalation_reasons", None) or (),
    )


def _recording(
    action_id: str, employee_id: str, customer_id: str, policy_version: int, at: datetime, recorded_by: str,
    reason: str, amount: Money, kind: ActionKind, details: dict[str, str], escalation_reasons: Sequence[str],
) -> TrailEntry:
    by = recorded_by or employee_id
    on_behalf = "" if by in ("", employee_id, "anonymous") else f" (recorded by {by})"
    pending = f"; over {', '.join(escalation_reasons)}: waiting for approval" if escalation_reasons else ""
    what = _what(kind, customer_id, amount, details)
    summary = f"{employee_id} {what}{on_behalf} because \"{reason}\", under policy version {policy_version}{pending}"
    return TrailEntry(
        at, recorded_by, employee_id, customer_id, action_id, "Budget.ActionRecorded", policy_version, amount, reason,
        summary,
    )


def action_entries(view: ActionView) -> list[TrailEntry]:
    """The recording of an action and what happened to it since (decision, reversal, win)."""
    return [recording_entry(view), *later_entries(view)]


def later_entries(view: ActionView) -> list[TrailEntry]:
    """What happened to an action since its recording (decision, reversal, win), in that order."""
    entries: list[TrailEntry] = []
    if view.decision is not None:
        d = view.decision
        verb = {"APPROVED": "approved", "DENIED": "denied"}.get(d.outcome)
        summary = (
            f"{d.approver_id} {verb} {view.employee_id}'s action {view.action_id} ({view.amount})"
            if verb
            else f"the approval of {view.employee_id}'s action {view.action_id} ({view.amount}) expired; the hold was released"
        )
        if d.outcome == "APPROVED" and not d.counted_in_current_period:
            summary += f", spent in the period it was requested in ({view.record_time.date().isoformat()}), which had ended"
        summary += f": \"{d.note}\"" if d.note and verb else ""
        entries.append(_entry(view, d.at, d.approver_id, f"Budget.Action{d.outcome.title()}", d.note, summary, view.amount))
    if view.reversal is not None:
        r = view.reversal
        where = "the current period" if r.restored_to_current_period else "the period it was spent in, which had ended"
        summary = (
            f"{r.actor_id} reversed {view.employee_id}'s action {view.action_id} because \"{r.reason}\"; "
            f"{view.amount} went back to {where}"
        )
        entries.append(_entry(view, r.at, r.actor_id, "Budget.ActionReversed", r.reason, summary, view.amount))
    if view.win is not None:
        w = view.win
        quote = f" The customer said: \"{w.customer_quote}\"" if w.customer_quote else ""
        summary = f"win documented for {view.employee_id}'s action {view.action_id}: {w.story}.{quote}"
        entries.append(_entry(view, w.at, w.documented_by, "Budget.WinDocumented", w.story, summary, None))
    return entries


def budget_entry(event: Any, recorded: Callable[[int], Any]) -> TrailEntry | None:
    """The trail entry of one budget event other than an action's recording (``recorded(version)`` gives the
    ActionRecorded event an approval, denial, expiry, reversal or win refers to)."""
    kind = type(event).__qualname__
    at: datetime = event.at
    actor = str(getattr(event, "actor", "") or "")
    base = {"time": at, "actor": actor, "event_type": kind, "customer_id": "", "action_id": "", "amount": None}
    if isinstance(event, Budget.Opened):
        policy = event.policy
        return TrailEntry(
            employee_id=event.employee_id,
            policy_version=1,
            reason="",
            summary=f"budget opened for {event.employee_id} (team {event.team_id}): {policy.period_allowance} "
            f"per {policy.period.value.lower()}, policy version 1",
            **base,
        )
    if isinstance(event, Budget.PolicyUpdated):
        policy = event.policy
        return TrailEntry(
            employee_id="",
            policy_version=event.policy_version,
            reason="",
            summary=f"policy changed to version {event.policy_version}: {policy.period_allowance} per "
            f"{policy.period.value.lower()}",
            **base,
        )
    if isinstance(event, Budget.PeriodRolledOver):
        spent = Money(Decimal(event.closed_period_spent), "")
        return TrailEntry(
            employee_id="",
            policy_version=0,
            reason="",
            summary=f"period from {event.closed_period_start.date().isoformat()} closed with {spent.amount:f} spent "
            f"in {event.closed_period_action_count} actions; a new period starts {event.period_start.date().isoformat()}",
            **{**base, "actor": actor or "leeway"},
        )
    if isinstance(event, Budget.ApprovalGiven):  # on the approver's own budget
        amount = Money(Decimal(event.amount), event.currency)
        return TrailEntry(
            employee_id="", policy_version=0, reason="",
            summary=f"approved {event.action_employee_id}'s action {event.action_id} ({amount}) under their own "
            "approval limits",
            **{**base, "action_id": event.action_id, "amount": amount},
        )
    if isinstance(event, Budget.Closed):
        return TrailEntry(
            employee_id="", policy_version=0, reason=event.reason, summary=f"budget closed: \"{event.reason}\"", **base
        )
    if isinstance(event, Budget.Reopened):
        return TrailEntry(
            employee_id="", policy_version=0, reason=event.reason, summary=f"budget reopened: \"{event.reason}\"", **base
        )
    if isinstance(event, Budget.TeamChanged):
        why = f": \"{event.reason}\"" if event.reason else ""
        return TrailEntry(
            employee_id="",
            policy_version=0,
            reason=event.reason,
            summary=f"moved from team {event.from_team_id} to team {event.team_id}{why}",
            **base,
        )
    return None


def event_entry(
    event: Any, employee_id: str, recorded: Callable[[int], Any], view_of: Callable[[Any], ActionView]
) -> TrailEntry | None:
    """The trail entry of one event of ``employee_id``'s budget, if it has one (``recorded(version)``: the
    ActionRecorded event a later event refers to; ``view_of(recorded)``: its view as the budget now stands)."""
    if isinstance(event, Budget.ActionRecorded):
        return recorded_entry(event)
    version = getattr(event, "action_version", None)
    if version is not None:
        wanted = type(event).__qualname__
        later = later_entries(view_of(recorded(version)))
        return next((e for e in later if e.event_type == wanted and e.time == event.at), None)
    entry = budget_entry(event, recorded)
    return None if entry is None else _with_employee(entry, employee_id)


def _with_employee(entry: TrailEntry, employee_id: str) -> TrailEntry:
    from dataclasses import replace

    return replace(entry, employee_id=employee_id)


def action_id_of(event: Any) -> str:
    return format_action_id(event.originator_id, event.originator_version)
