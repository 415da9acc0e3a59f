"""Protobuf <-> domain views (budgets, actions, teams, KPIs, wins, checkpoints). Wire-level problems become
FieldViolations named by their proto path (requests -> commands: commands.py). The values these are made of
(money, times, kinds, periods) are converted in ``convert_values``, policies in ``convert_policy``; this module
re-exports both, so a servicer needs one import."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from leeway.v1 import action_pb2, audit_pb2, budget_pb2, insights_pb2, policy_pb2, team_pb2

from ..application.integrity import Checkpoint
from ..application.queries import CustomerUsage, TeamView
from ..application.insights import Kpis, WinEntry
from ..application.kpis import KpiPoint
from ..domain import views as b
from ..domain.actions import DETAIL_FIELDS
from ..domain.views import CLOSED, OPEN, ActionView, BudgetView
from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.policy import ActionKind
from ..domain.tally import Cap, CapUsage
# Re-exported (one import for a servicer): the values and policies, converted one level down.
from .convert_policy import ESCALATION_FROM_PROTO, policy_from_proto, policy_into, policy_to_proto  # noqa: F401
from .convert_values import (  # noqa: F401
    KIND_FROM_PROTO, KIND_TO_PROTO, MAX_NANOS, NANOS, PERIOD_FROM_PROTO, PERIOD_TO_PROTO, money_from_proto,
    money_into, money_to_proto, time_from_proto, time_into, time_to_proto,
)  # fmt: skip


BUDGET_STATE_TO_PROTO = {OPEN: budget_pb2.Budget.STATE_OPEN, CLOSED: budget_pb2.Budget.STATE_CLOSED}
ACTION_STATE_TO_PROTO = {
    b.RECORDED: action_pb2.Action.STATE_RECORDED,
    b.PENDING_APPROVAL: action_pb2.Action.STATE_PENDING_APPROVAL,
    b.APPROVED: action_pb2.Action.STATE_APPROVED,
    b.DENIED: action_pb2.Action.STATE_DENIED,
    b.EXPIRED: action_pb2.Action.STATE_EXPIRED,
    b.REVERSED: action_pb2.Action.STATE_REVERSED,
}
ACTION_STATE_FROM_PROTO = {v: k for k, v in ACTION_STATE_TO_PROTO.items()}
#: The oneof field of RecordActionRequest / Action for each kind.
ONEOF_OF_KIND = {kind: name for kind, (name, _) in DETAIL_FIELDS.items()}
KIND_OF_ONEOF = {name: kind for kind, name in ONEOF_OF_KIND.items()}


# ---------------------------------------------------------------------------- budgets and actions


def budget_to_proto(view: BudgetView) -> budget_pb2.Budget:
    message = budget_pb2.Budget()
    budget_into(message, view)
    return message


def budget_into(message: budget_pb2.Budget, view: BudgetView) -> None:
    """Writes ``view`` into ``message`` (an empty Budget, or a response's ``budget`` field: filled where it is, no
    sub-message built apart and copied in; the policy is converted once per Policy object)."""
    _carry(message, view, _BUDGET_CARRIED)
    policy_into(message.policy, view.policy)
    time_into(message.period_start, view.period_start)
    time_into(message.period_end, view.period_end)
    money_into(message.allowance, view.allowance)
    money_into(message.spent, view.spent)
    money_into(message.remaining, view.remaining)
    message.state = BUDGET_STATE_TO_PROTO[view.state]
    time_into(message.create_time, view.create_time)
    time_into(message.update_time, view.update_time)
    if view.close_time is not None:
        time_into(message.close_time, view.close_time)
    if view.held is not None:
        money_into(message.held, view.held)
    if view.held_in_ended_periods is not None:
        money_into(message.held_in_ended_periods, view.held_in_ended_periods)
    message.pending_action_count = view.pending_action_count


def action_to_proto(view: ActionView) -> action_pb2.Action:
    message = action_pb2.Action()
    action_into(message, view)
    return message


def action_into(message: action_pb2.Action, view: ActionView) -> None:
    """Writes ``view`` into ``message`` (an empty Action, or a response's ``action`` field), as ``budget_into``."""
    _carry(message, view, _ACTION_CARRIED)
    message.kind = KIND_TO_PROTO[view.kind]
    money_into(message.amount, view.amount)
    message.state = ACTION_STATE_TO_PROTO[view.state]
    time_into(message.occur_time, view.occur_time)
    time_into(message.record_time, view.record_time)
    details = getattr(message, ONEOF_OF_KIND[view.kind])
    details.SetInParent()
    for key, value in view.details.items():
        setattr(details, key, value)
    message.escalation_reasons.extend(view.escalation_reasons)
    if view.expire_time is not None:
        time_into(message.expire_time, view.expire_time)
    message.approver_ids.extend(view.approver_ids)
    message.approver_role = view.approver_role
    if view.decision is not None:
        message.decision.CopyFrom(
            action_pb2.ActionDecision(
                outcome=ACTION_STATE_TO_PROTO[view.decision.outcome],
                approver_id=view.decision.approver_id,
                note=view.decision.note,
                decide_time=time_to_proto(view.decision.at),
                request_id=view.decision.request_id,
            )
        )
    if view.win is not None:
        message.win.CopyFrom(
            action_pb2.Win(
                story=view.win.story,
                customer_quote=view.win.customer_quote,
                outcome=view.win.outcome,
                documented_by=view.win.documented_by,
                document_time=time_to_proto(view.win.at),
            )
        )
    if view.reversal is not None:
        message.reversal.CopyFrom(
            action_pb2.ActionReversal(
                actor_id=view.reversal.actor_id,
                reason=view.reversal.reason,
                reverse_time=time_to_proto(view.reversal.at),
                restored_to_current_period=view.reversal.restored_to_current_period,
                request_id=view.reversal.request_id,
            )
        )


#: The fields of a Budget / an Action carried from the view's attributes of the same names.
_BUDGET_CARRIED = (
    "employee_id", "team_id", "display_name", "policy_version", "version", "close_reason", "period_action_count",
)
_ACTION_CARRIED = (
    "action_id", "employee_id", "customer_id", "case_id", "reason", "policy_version", "team_id", "request_id",
    "budget_version", "recorded_by",
)


def _carry(message: Any, view: Any, names: tuple[str, ...]) -> None:
    """The attributes ``names`` of ``view`` set on ``message``, as a message's constructor takes them from keyword
    arguments: a None leaves its field unset."""
    for name in names:
        value = getattr(view, name)
        if value is not None:
            setattr(message, name, value)


def state_filter(value: int, field: str = "state") -> str | None:
    """A list filter: UNSPECIFIED means any state; an unknown number is an error."""
    if value == action_pb2.Action.STATE_UNSPECIFIED:
        return None
    state = ACTION_STATE_FROM_PROTO.get(value)
    if state is None:
        raise InvalidArgument([FieldViolation(field, f"unknown action state {value}")])
    return state


# ---------------------------------------------------------------------------- caps and teams


def cap_from_proto(request: object, field: str = "cap") -> tuple[Cap | None, tuple[FieldViolation, ...]]:
    """The optional ``cap`` field of a request -> Cap (None: remove the cap), or every problem with it."""
    if not request.HasField(field):  # type: ignore[attr-defined]
        return None, ()
    value: team_pb2.Cap = getattr(request, field)
    problems: list[FieldViolation] = []
    amount = None
    if value.HasField("amount"):
        amount, bad = money_from_proto(value.amount, f"{field}.amount")
        problems += bad
    else:
        problems.append(FieldViolation(f"{field}.amount", "is required"))
    period = PERIOD_FROM_PROTO.get(value.period)
    if period is None:
        problems.append(FieldViolation(f"{field}.period", "is required (PERIOD_DAY ... PERIOD_YEAR)"))
    if problems or amount is None or period is None:
        return None, tuple(problems)
    return Cap(amount, period), ()


def cap_to_proto(cap: Cap) -> team_pb2.Cap:
    return team_pb2.Cap(amount=money_to_proto(cap.amount), period=PERIOD_TO_PROTO[cap.period])


def _fill_usage(message: Any, usage: CapUsage) -> None:
    """The cap (if any), the period, spent, held and remaining (with a cap) of ``usage`` into ``message``."""
    if usage.cap is not None:
        message.cap.CopyFrom(cap_to_proto(usage.cap))
    if usage.period_start is None or usage.period_end is None or usage.spent is None or usage.held is None:
        return  # nothing to show
    message.period_start.CopyFrom(time_to_proto(usage.period_start))
    message.period_end.CopyFrom(time_to_proto(usage.period_end))
    message.spent.CopyFrom(money_to_proto(usage.spent))
    message.held.CopyFrom(money_to_proto(usage.held))
    if usage.remaining is not None:
        message.remaining.CopyFrom(money_to_proto(usage.remaining))


def currency_usage_to_proto(usage: CapUsage) -> team_pb2.CurrencyUsage:
    assert usage.spent is not None
    message = team_pb2.CurrencyUsage(currency_code=usage.spent.currency)
    _fill_usage(message, usage)
    return message


def team_to_proto(view: TeamView) -> team_pb2.Team:
    message = team_pb2.Team(
        team_id=view.team_id,
        member_count=view.member_count,
        version=view.version,
        usage=[currency_usage_to_proto(u) for u in view.by_currency],
    )
    _fill_usage(message, view.usage)
    return message


def customer_usage_to_proto(view: CustomerUsage) -> team_pb2.GetCustomerUsageResponse:
    message = team_pb2.GetCustomerUsageResponse(
        customer_id=view.customer_id,
        action_count=view.action_count,
        usage=[currency_usage_to_proto(u) for u in view.by_currency],
    )
    _fill_usage(message, view.usage)
    return message


def kind_filter(value: int, field: str = "kind") -> ActionKind | None:
    """A list filter: UNSPECIFIED means any kind; an unknown number is an error."""
    if value == policy_pb2.ACTION_KIND_UNSPECIFIED:
        return None
    kind = KIND_FROM_PROTO.get(value)
    if kind is None:
        raise InvalidArgument([FieldViolation(field, f"unknown action kind {value}")])
    return kind


def as_of_from_proto(request: budget_pb2.GetBudgetRequest, field: str = "as_of") -> datetime | None:
    """An optional Timestamp of a GetBudgetRequest (``as_of``, ``period_start``)."""
    if not request.HasField(field):
        return None
    moment, problems = time_from_proto(getattr(request, field), field)
    if problems:
        raise InvalidArgument(problems)
    return moment


# ---------------------------------------------------------------------------- insights


def time_range_from_proto(request: Any) -> tuple[datetime | None, datetime | None, list[FieldViolation]]:
    """start_time / end_time of a GetKpisRequest (unset: open-ended)."""
    problems: list[FieldViolation] = []
    start = end = None
    if request.HasField("start_time"):
        start, found = time_from_proto(request.start_time, "start_time")
        problems += found
    if request.HasField("end_time"):
        end, found = time_from_proto(request.end_time, "end_time")
        problems += found
    return start, end, problems


def kpis_to_proto(kpis: Kpis) -> insights_pb2.GetKpisResponse:
    return insights_pb2.GetKpisResponse(
        by_kind=[
            insights_pb2.KindStats(
                kind=policy_pb2.ActionKind.Value(f"ACTION_KIND_{k.kind}"),
                action_count=k.action_count,
                effective_count=k.effective_count,
                spend=money_to_proto(k.spend),
                average_amount=money_to_proto(k.average_amount),
            )
            for k in kpis.by_kind
        ],
        action_count=kpis.action_count,
        escalated_count=kpis.escalated_count,
        approval_rate=kpis.approval_rate,
        reversal_rate=kpis.reversal_rate,
        flower_stats=insights_pb2.FlowerStats(
            gifts_sent=kpis.gifts_sent,
            gift_spend=[money_to_proto(m) for m in kpis.gift_spend],
            by_gift_type=[insights_pb2.GiftTypeCount(gift_type=t, count=n) for t, n in kpis.gifts_by_type],
            customers_gifted=kpis.customers_gifted,
        ),
        wins_documented=kpis.wins_documented,
        top_employees_by_wins=[
            insights_pb2.EmployeeWins(employee_id=e, team_id=t, wins=n) for e, t, n in kpis.top_employees
        ],
        pending_count=kpis.pending_count,
        position=kpis.position,
    )


GRANULARITIES = {
    insights_pb2.KPI_GRANULARITY_DAY: "DAY",
    insights_pb2.KPI_GRANULARITY_WEEK: "WEEK",
    insights_pb2.KPI_GRANULARITY_MONTH: "MONTH",
}


def granularity_from_proto(value: int) -> str:
    """A KpiGranularity as the application names it ("" when unset or unknown: the application refuses it)."""
    return GRANULARITIES.get(value, "")  # type: ignore[call-overload]


def kpi_series_to_proto(points: list[KpiPoint]) -> insights_pb2.GetKpiSeriesResponse:
    return insights_pb2.GetKpiSeriesResponse(
        points=[
            insights_pb2.KpiPoint(
                start_time=time_to_proto(p.start), end_time=time_to_proto(p.end), kpis=kpis_to_proto(p.kpis)
            )
            for p in points
        ],
        position=points[0].kpis.position if points else 0,
    )


def win_entry_to_proto(entry: WinEntry) -> insights_pb2.WinEntry:
    return insights_pb2.WinEntry(
        action_id=entry.action_id,
        employee_id=entry.employee_id,
        team_id=entry.team_id,
        customer_id=entry.customer_id,
        kind=policy_pb2.ActionKind.Value(f"ACTION_KIND_{entry.kind}"),
        amount=money_to_proto(entry.amount),
        reason=entry.reason,
        win=action_pb2.Win(
            story=entry.story,
            customer_quote=entry.customer_quote,
            outcome=entry.outcome,
            documented_by=entry.documented_by,
            document_time=time_to_proto(entry.document_time),
        ),
    )


# ---------------------------------------------------------------------------- audit

_LOG_HASH = re.compile(r"[0-9a-f]{64}")


def checkpoints_from_proto(request: audit_pb2.VerifyIntegrityRequest) -> tuple[Checkpoint, ...]:
    """VerifyIntegrityRequest.checkpoint (none if unset); INVALID_ARGUMENT naming each bad part."""
    if not request.HasField("checkpoint"):
        return ()
    checkpoint = request.checkpoint
    problems = []
    if checkpoint.position < 0:
        problems.append(FieldViolation("checkpoint.position", "must not be negative"))
    if not _LOG_HASH.fullmatch(checkpoint.log_hash):
        problems.append(FieldViolation("checkpoint.log_hash", "must be a SHA-256 in 64 lowercase hex digits"))
    if problems:
        raise InvalidArgument(problems)
    return (Checkpoint(checkpoint.position, checkpoint.log_hash),)


def checkpoint_to_proto(checkpoint: Checkpoint) -> audit_pb2.Checkpoint:
    return audit_pb2.Checkpoint(position=checkpoint.position, log_hash=checkpoint.log_hash)
