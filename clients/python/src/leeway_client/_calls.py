"""What the sync and the asyncio client share: every call as a ``Call`` (the stub, the method, the request with its
request_id, and what to take from the response), policy helpers, and the retry policy (which failures to retry
and how long to wait: what RetryInfo says, else exponential backoff with jitter).

Neither client builds a request or decides a retry itself: ``client.LeewayClient`` and
``aio.AsyncLeewayClient`` only send these calls, blocking or awaiting.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar, cast

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from leeway.v1 import action_pb2, audit_pb2, budget_pb2, insights_pb2, policy_pb2, privacy_pb2, team_pb2

from .errors import LeewayError
from .money import to_money

R = TypeVar("R")
Amount = Decimal | int | str
Service = Literal["budgets", "actions", "teams", "audit", "insights", "privacy"]
Details = action_pb2.RefundDetails | action_pb2.CreditDetails | action_pb2.RuleBendDetails | action_pb2.GiftDetails

_PERIODS = {
    "DAY": policy_pb2.PERIOD_DAY,
    "WEEK": policy_pb2.PERIOD_WEEK,
    "MONTH": policy_pb2.PERIOD_MONTH,
    "QUARTER": policy_pb2.PERIOD_QUARTER,
    "YEAR": policy_pb2.PERIOD_YEAR,
}
_KINDS = {
    "REFUND": policy_pb2.ACTION_KIND_REFUND,
    "CREDIT": policy_pb2.ACTION_KIND_CREDIT,
    "RULE_BEND": policy_pb2.ACTION_KIND_RULE_BEND,
    "GIFT": policy_pb2.ACTION_KIND_GIFT,
}
_GRANULARITIES = {
    "DAY": insights_pb2.KPI_GRANULARITY_DAY,
    "WEEK": insights_pb2.KPI_GRANULARITY_WEEK,
    "MONTH": insights_pb2.KPI_GRANULARITY_MONTH,
}
_STATES = {
    "RECORDED": action_pb2.Action.STATE_RECORDED,
    "PENDING_APPROVAL": action_pb2.Action.STATE_PENDING_APPROVAL,
    "APPROVED": action_pb2.Action.STATE_APPROVED,
    "DENIED": action_pb2.Action.STATE_DENIED,
    "EXPIRED": action_pb2.Action.STATE_EXPIRED,
    "REVERSED": action_pb2.Action.STATE_REVERSED,
}
_ONEOF = {
    action_pb2.RefundDetails: "refund",
    action_pb2.CreditDetails: "credit",
    action_pb2.RuleBendDetails: "rule_bend",
    action_pb2.GiftDetails: "gift",
}


def _period(value: str | int) -> policy_pb2.Period:
    return _PERIODS[value.upper()] if isinstance(value, str) else cast(policy_pb2.Period, value)


def _kind(value: str | int) -> policy_pb2.ActionKind:
    return _KINDS[value.upper()] if isinstance(value, str) else cast(policy_pb2.ActionKind, value)


def _granularity(value: str | int) -> insights_pb2.KpiGranularity:
    return _GRANULARITIES[value.upper()] if isinstance(value, str) else cast(insights_pb2.KpiGranularity, value)


def _state(value: str | int) -> action_pb2.Action.State:
    return _STATES[value.upper()] if isinstance(value, str) else cast(action_pb2.Action.State, value)


def make_policy(
    *,
    currency: str,
    period_allowance: Amount,
    period: str | int = "MONTH",
    per_action_limit: Amount | None = None,
    allowed_kinds: Iterable[str | int] = ("REFUND", "CREDIT", "RULE_BEND", "GIFT"),
    per_customer_limit: Amount | None = None,
    bendable_rules: Iterable[policy_pb2.BendableRule | str] = (),
    escalate_to: Iterable[str] = (),
    approver_role: str = "",
    approval_timeout: timedelta | None = None,
    max_held: Amount | None = None,
    split_window: timedelta | None = None,
    split_same_customer: bool = False,
    approval_per_action: Amount | None = None,
    approval_per_period: Amount | None = None,
) -> policy_pb2.Policy:
    """A Policy from plain values: ``period`` is DAY/WEEK/MONTH/QUARTER/YEAR, kinds REFUND/CREDIT/RULE_BEND/GIFT.

    ``bendable_rules`` are BendableRule messages or bare rule codes (no count or value limit). With
    ``escalate_to`` (approver ids) or ``approver_role``, over-limit actions wait for approval instead of being
    refused, for ``approval_timeout`` (default: the server's, 24 hours), at most ``max_held`` at once (default:
    one allowance). Actions on one case within ``split_window`` (default 24 hours; with ``split_same_customer``,
    for one customer too) count together against ``per_action_limit``. ``approval_per_action`` and
    ``approval_per_period`` limit what this policy's employee may approve of other people's actions.
    """
    policy = policy_pb2.Policy(
        period_allowance=to_money(period_allowance, currency),
        period=_period(period),
        allowed_kinds=[_kind(k) for k in allowed_kinds],
        bendable_rules=[policy_pb2.BendableRule(rule_code=r) if isinstance(r, str) else r for r in bendable_rules],
    )
    if per_action_limit is not None:
        policy.per_action_limit.CopyFrom(to_money(per_action_limit, currency))
    if per_customer_limit is not None:
        policy.per_customer_limit.CopyFrom(to_money(per_customer_limit, currency))
    approvers = list(escalate_to)
    if approvers or approver_role:
        policy.escalation.mode = policy_pb2.Escalation.MODE_APPROVAL
        policy.escalation.approver_ids.extend(approvers)
        policy.escalation.approver_role = approver_role
        if approval_timeout is not None:
            policy.escalation.approval_timeout.CopyFrom(_duration(approval_timeout))
        if max_held is not None:
            policy.escalation.max_held.CopyFrom(to_money(max_held, currency))
    if split_window is not None:
        policy.split_detection.window.CopyFrom(_duration(split_window))
    if split_same_customer:
        policy.split_detection.same_customer = True
    if approval_per_action is not None:
        policy.approval_limits.per_action.CopyFrom(to_money(approval_per_action, currency))
    if approval_per_period is not None:
        policy.approval_limits.per_period.CopyFrom(to_money(approval_per_period, currency))
    return policy


def make_cap(amount: Amount, currency: str, period: str | int = "MONTH") -> team_pb2.Cap:
    """A team or per-customer Cap from plain values."""
    return team_pb2.Cap(amount=to_money(amount, currency), period=_period(period))


def _duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def request_id(value: str | None) -> str:
    """The caller's request_id, or a fresh UUID: sent once, and reused as is by every retry of the call."""
    return value or str(uuid.uuid4())


def _same(response: R) -> R:
    return response


@dataclass(frozen=True)
class Call(Generic[R]):
    """One unary call: ``service`` names the client's stub, ``method`` the RPC, ``result`` what the caller gets
    from the response. The request is built once (its request_id included) and sent unchanged by every attempt."""

    service: Service
    method: str
    request: Message
    result: Callable[[Any], R]


# ---------------------------------------------------------------------------------------------------- budgets


def open_budget(
    employee_id: str, team_id: str, policy: policy_pb2.Policy, display_name: str, rid: str | None
) -> Call[budget_pb2.Budget]:
    request = budget_pb2.OpenBudgetRequest(
        request_id=request_id(rid), employee_id=employee_id, team_id=team_id, display_name=display_name, policy=policy
    )
    return Call("budgets", "OpenBudget", request, lambda r: r.budget)


def get_budget(employee_id: str, as_of: datetime | None, period_start: datetime | None) -> Call[budget_pb2.Budget]:
    request = budget_pb2.GetBudgetRequest(employee_id=employee_id)
    if as_of is not None:
        request.as_of.CopyFrom(_timestamp(as_of))
    if period_start is not None:
        request.period_start.CopyFrom(_timestamp(period_start))
    return Call("budgets", "GetBudget", request, lambda r: r.budget)


def list_budgets(team_id: str, page_size: int, page_token: str) -> Call[budget_pb2.ListBudgetsResponse]:
    request = budget_pb2.ListBudgetsRequest(team_id=team_id, page_size=page_size, page_token=page_token)
    return Call("budgets", "ListBudgets", request, _same)


def update_policy(
    employee_id: str, policy: policy_pb2.Policy, expected_version: int, rid: str | None
) -> Call[budget_pb2.Budget]:
    request = budget_pb2.UpdatePolicyRequest(
        request_id=request_id(rid), employee_id=employee_id, policy=policy, expected_version=expected_version
    )
    return Call("budgets", "UpdatePolicy", request, lambda r: r.budget)


def close_budget(employee_id: str, reason: str, rid: str | None) -> Call[budget_pb2.Budget]:
    request = budget_pb2.CloseBudgetRequest(request_id=request_id(rid), employee_id=employee_id, reason=reason)
    return Call("budgets", "CloseBudget", request, lambda r: r.budget)


def reopen_budget(employee_id: str, reason: str, rid: str | None) -> Call[budget_pb2.Budget]:
    request = budget_pb2.ReopenBudgetRequest(request_id=request_id(rid), employee_id=employee_id, reason=reason)
    return Call("budgets", "ReopenBudget", request, lambda r: r.budget)


def move_employee(employee_id: str, team_id: str, reason: str, rid: str | None) -> Call[budget_pb2.Budget]:
    request = budget_pb2.MoveEmployeeRequest(
        request_id=request_id(rid), employee_id=employee_id, team_id=team_id, reason=reason
    )
    return Call("budgets", "MoveEmployee", request, lambda r: r.budget)


# ---------------------------------------------------------------------------------------------------- actions


def record_action(
    employee_id: str,
    customer_id: str,
    amount: Amount,
    currency: str,
    details: Details,
    reason: str,
    case_id: str,
    occur_time: datetime | None,
    rid: str | None,
) -> Call[action_pb2.RecordActionResponse]:
    request = action_pb2.RecordActionRequest(
        request_id=request_id(rid),
        employee_id=employee_id,
        customer_id=customer_id,
        case_id=case_id,
        amount=to_money(amount, currency),
        reason=reason,
    )
    getattr(request, _ONEOF[type(details)]).CopyFrom(details)
    if occur_time is not None:
        request.occur_time.CopyFrom(_timestamp(occur_time))
    return Call("actions", "RecordAction", request, _same)


def get_action(action_id: str) -> Call[action_pb2.Action]:
    return Call("actions", "GetAction", action_pb2.GetActionRequest(action_id=action_id), lambda r: r.action)


def list_actions(
    employee_id: str,
    customer_id: str,
    kind: str | int,
    state: str | int,
    approver_id: str,
    decided_by: str,
    page_size: int,
    page_token: str,
) -> Call[action_pb2.ListActionsResponse]:
    request = action_pb2.ListActionsRequest(
        employee_id=employee_id,
        customer_id=customer_id,
        kind=_kind(kind),
        state=_state(state),
        approver_id=approver_id,
        decided_by=decided_by,
        page_size=page_size,
        page_token=page_token,
    )
    return Call("actions", "ListActions", request, _same)


def approve_action(
    action_id: str, approver_id: str, note: str, rid: str | None
) -> Call[action_pb2.ApproveActionResponse]:
    request = action_pb2.ApproveActionRequest(
        request_id=request_id(rid), action_id=action_id, approver_id=approver_id, note=note
    )
    return Call("actions", "ApproveAction", request, _same)


def deny_action(action_id: str, approver_id: str, note: str, rid: str | None) -> Call[action_pb2.DenyActionResponse]:
    request = action_pb2.DenyActionRequest(request_id=request_id(rid), action_id=action_id, approver_id=approver_id, note=note)
    return Call("actions", "DenyAction", request, _same)


def reverse_action(
    action_id: str, reason: str, actor_id: str, rid: str | None
) -> Call[action_pb2.ReverseActionResponse]:
    request = action_pb2.ReverseActionRequest(
        request_id=request_id(rid), action_id=action_id, reason=reason, actor_id=actor_id
    )
    return Call("actions", "ReverseAction", request, _same)


def document_win(
    action_id: str, story: str, customer_quote: str, outcome: str, rid: str | None
) -> Call[action_pb2.Action]:
    request = action_pb2.DocumentWinRequest(
        request_id=request_id(rid), action_id=action_id, story=story, customer_quote=customer_quote, outcome=outcome
    )
    return Call("actions", "DocumentWin", request, lambda r: r.action)


# ---------------------------------------------------------------------------------------------------- audit


def get_audit_trail(
    employee_id: str, customer_id: str, page_size: int, page_token: str
) -> Call[audit_pb2.GetAuditTrailResponse]:
    request = audit_pb2.GetAuditTrailRequest(
        employee_id=employee_id, customer_id=customer_id, page_size=page_size, page_token=page_token
    )
    return Call("audit", "GetAuditTrail", request, _same)


def verify_integrity(
    employee_id: str, checkpoint: audit_pb2.Checkpoint | None
) -> Call[audit_pb2.VerifyIntegrityResponse]:
    request = audit_pb2.VerifyIntegrityRequest(employee_id=employee_id)
    if checkpoint is not None:
        request.checkpoint.CopyFrom(checkpoint)
    return Call("audit", "VerifyIntegrity", request, _same)


def stream_events(
    after_position: int, follow: bool, event_types: Sequence[str], employee_id: str
) -> audit_pb2.StreamEventsRequest:
    """The request of a StreamEvents stream; a resumed stream sends it again with after_position moved on."""
    if after_position < 0:
        raise ValueError("after_position must not be negative")
    return audit_pb2.StreamEventsRequest(
        after_position=after_position, follow=follow, event_types=list(event_types), employee_id=employee_id
    )


# ---------------------------------------------------------------------------------------------------- insights


def get_kpis(
    team_id: str, employee_id: str, start_time: datetime | None, end_time: datetime | None
) -> Call[insights_pb2.GetKpisResponse]:
    request = insights_pb2.GetKpisRequest(team_id=team_id, employee_id=employee_id)
    if start_time is not None:
        request.start_time.CopyFrom(_timestamp(start_time))
    if end_time is not None:
        request.end_time.CopyFrom(_timestamp(end_time))
    return Call("insights", "GetKpis", request, _same)


def get_kpi_series(
    team_id: str, employee_id: str, start_time: datetime, end_time: datetime, granularity: str
) -> Call[insights_pb2.GetKpiSeriesResponse]:
    request = insights_pb2.GetKpiSeriesRequest(
        team_id=team_id,
        employee_id=employee_id,
        granularity=_granularity(granularity),
    )
    request.start_time.CopyFrom(_timestamp(start_time))
    request.end_time.CopyFrom(_timestamp(end_time))
    return Call("insights", "GetKpiSeries", request, _same)


def list_wins(team_id: str, employee_id: str, page_size: int, page_token: str) -> Call[insights_pb2.ListWinsResponse]:
    request = insights_pb2.ListWinsRequest(
        team_id=team_id, employee_id=employee_id, page_size=page_size, page_token=page_token
    )
    return Call("insights", "ListWins", request, _same)


# ---------------------------------------------------------------------------------------------------- teams


def set_team_cap(team_id: str, cap: team_pb2.Cap | None, rid: str | None) -> Call[team_pb2.Team]:
    request = team_pb2.SetTeamCapRequest(request_id=request_id(rid), team_id=team_id)
    if cap is not None:
        request.cap.CopyFrom(cap)
    return Call("teams", "SetTeamCap", request, lambda r: r.team)


def get_team(team_id: str) -> Call[team_pb2.Team]:
    return Call("teams", "GetTeam", team_pb2.GetTeamRequest(team_id=team_id), lambda r: r.team)


def set_customer_cap(
    cap: team_pb2.Cap | None, currency_code: str, rid: str | None
) -> Call[team_pb2.SetCustomerCapResponse]:
    request = team_pb2.SetCustomerCapRequest(request_id=request_id(rid), currency_code=currency_code)
    if cap is not None:
        request.cap.CopyFrom(cap)
    return Call("teams", "SetCustomerCap", request, _same)


def get_customer_usage(customer_id: str) -> Call[team_pb2.GetCustomerUsageResponse]:
    request = team_pb2.GetCustomerUsageRequest(customer_id=customer_id)
    return Call("teams", "GetCustomerUsage", request, _same)


# ---------------------------------------------------------------------------------------------------- connection


def authorization(
    metadata: Sequence[tuple[str, str]], token: str | None, api_key: str | None
) -> tuple[tuple[str, str], ...]:
    """The call metadata: the caller's, plus ``authorization`` for a token or an API key."""
    if token and api_key:
        raise ValueError("pass token or api_key, not both")
    if token:
        return (*metadata, ("authorization", f"Bearer {token}"))
    if api_key:
        return (*metadata, ("authorization", f"ApiKey {api_key}"))
    return tuple(metadata)


def tls_credentials(
    credentials: grpc.ChannelCredentials | None,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
) -> grpc.ChannelCredentials | None:
    """Ready credentials, or TLS ones made from PEM bytes (with a client certificate: mutual TLS), or None."""
    if credentials is None and (root_certificates or certificate_chain or private_key):
        if bool(certificate_chain) != bool(private_key):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")
        return grpc.ssl_channel_credentials(
            root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
        )
    return credentials


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, how often and how long to wait.

    ``retries`` bounds the attempts (``retries + 1`` in all). The wait is what the server's RetryInfo says (a
    rate limit: RESOURCE_EXHAUSTED / RATE_LIMITED), plus up to 10% jitter, else ``backoff * 2**attempt`` with
    jitter. ``total_timeout`` (seconds, None: no bound) bounds the whole call, waits included: a wait that would
    end past it is not made (the failure is raised at once), and each attempt's deadline is cut to what remains.
    """

    timeout: float
    retries: int
    backoff: float
    total_timeout: float | None = None

    def deadline(self) -> float | None:
        """The monotonic time by which the whole call must be done (None: no bound)."""
        return None if self.total_timeout is None else time.monotonic() + self.total_timeout

    def attempt_timeout(self, deadline: float | None) -> float:
        """The deadline of the next attempt, in seconds from now."""
        if deadline is None:
            return self.timeout
        return max(0.001, min(self.timeout, deadline - time.monotonic()))

    def wait(self, error: LeewayError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None: raise ``error`` now."""
        if not error.retryable or attempt >= self.retries:
            return None
        if error.retry_delay is not None:
            delay = error.retry_delay * random.uniform(1.0, 1.1)
        else:
            step = self.backoff * (2**attempt)
            delay = random.uniform(step / 2, step)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay


# What each paged response lists (typed, so that the iterators over all pages are too).
def budgets_of(page: budget_pb2.ListBudgetsResponse) -> Sequence[budget_pb2.Budget]:
    return page.budgets


def actions_of(page: action_pb2.ListActionsResponse) -> Sequence[action_pb2.Action]:
    return page.actions


def entries_of(page: audit_pb2.GetAuditTrailResponse) -> Sequence[audit_pb2.AuditTrailEntry]:
    return page.entries


def wins_of(page: insights_pb2.ListWinsResponse) -> Sequence[insights_pb2.WinEntry]:
    return page.wins


# ---------------------------------------------------------------------------------------------------- privacy


def erase_customer(customer_id: str, reason: str, rid: str | None) -> Call[privacy_pb2.Erasure]:
    request = privacy_pb2.EraseCustomerRequest(request_id=request_id(rid), customer_id=customer_id, reason=reason)
    return Call("privacy", "EraseCustomer", request, lambda r: r.erasure)


def erase_employee(employee_id: str, reason: str, rid: str | None) -> Call[privacy_pb2.Erasure]:
    request = privacy_pb2.EraseEmployeeRequest(request_id=request_id(rid), employee_id=employee_id, reason=reason)
    return Call("privacy", "EraseEmployee", request, lambda r: r.erasure)


def redact_legacy_data(
    customer_id: str, employee_id: str, reason: str, rid: str | None
) -> Call[privacy_pb2.LegacyRedaction]:
    request = privacy_pb2.RedactLegacyDataRequest(
        request_id=request_id(rid), customer_id=customer_id, employee_id=employee_id, reason=reason
    )
    return Call("privacy", "RedactLegacyData", request, lambda r: r.redaction)


def export_customer_data(
    customer_id: str, page_size: int, page_token: str
) -> Call[privacy_pb2.ExportCustomerDataResponse]:
    request = privacy_pb2.ExportCustomerDataRequest(customer_id=customer_id, page_size=page_size, page_token=page_token)
    return Call("privacy", "ExportCustomerData", request, _same)
