"""A thin, typed wrapper over the generated leeway.v1 stubs.

- amounts are Decimal (or int / decimal strings), never float;
- every mutating call gets a request_id (a fresh UUID unless you pass one), and a retry after UNAVAILABLE,
  DEADLINE_EXCEEDED or a concurrency conflict reuses it, so a retried call never records twice;
- failures raise LeewayError subclasses carrying the ErrorInfo reason and the other google.rpc details.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from leeway.v1 import (
    insights_pb2,
    insights_pb2_grpc,
    action_pb2,
    action_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    budget_pb2,
    budget_pb2_grpc,
    policy_pb2,
    team_pb2,
    team_pb2_grpc,
)

from .errors import LeewayError, from_rpc_error
from .money import to_money

R = TypeVar("R")
Amount = Decimal | int | str

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
Details = action_pb2.RefundDetails | action_pb2.CreditDetails | action_pb2.RuleBendDetails | action_pb2.GiftDetails
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
        period=_PERIODS[period.upper()] if isinstance(period, str) else period,
        allowed_kinds=[_KINDS[k.upper()] if isinstance(k, str) else k for k in allowed_kinds],
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
            duration = Duration()
            duration.FromTimedelta(approval_timeout)
            policy.escalation.approval_timeout.CopyFrom(duration)
        if max_held is not None:
            policy.escalation.max_held.CopyFrom(to_money(max_held, currency))
    if split_window is not None:
        window = Duration()
        window.FromTimedelta(split_window)
        policy.split_detection.window.CopyFrom(window)
    if split_same_customer:
        policy.split_detection.same_customer = True
    if approval_per_action is not None:
        policy.approval_limits.per_action.CopyFrom(to_money(approval_per_action, currency))
    if approval_per_period is not None:
        policy.approval_limits.per_period.CopyFrom(to_money(approval_per_period, currency))
    return policy


def make_cap(amount: Amount, currency: str, period: str | int = "MONTH") -> team_pb2.Cap:
    """A team or per-customer Cap from plain values."""
    return team_pb2.Cap(
        amount=to_money(amount, currency), period=_PERIODS[period.upper()] if isinstance(period, str) else period
    )


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


class LeewayClient:
    """Calls a Leeway server. Use as a context manager, or call ``close()``.

    ``target`` is HOST:PORT. Authentication: ``token`` (a JWT, sent as ``authorization: Bearer``) or ``api_key``
    (sent as ``authorization: ApiKey``). TLS: ``root_certificates`` (PEM bytes of the CA that signed the server's
    certificate) and, for mutual TLS, ``certificate_chain`` + ``private_key`` (the client's PEM certificate and
    key); or pass ready ``credentials`` (grpc.ssl_channel_credentials(...)) or a ready ``channel``.
    ``timeout`` is the deadline of each attempt; ``retries`` how many times a retryable failure is retried
    (with exponential backoff and jitter starting at ``backoff`` seconds).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.1,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
    ):
        if token and api_key:
            raise ValueError("pass token or api_key, not both")
        if credentials is None and (root_certificates or certificate_chain or private_key):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
            )
        if token:
            metadata = (*metadata, ("authorization", f"Bearer {token}"))
        elif api_key:
            metadata = (*metadata, ("authorization", f"ApiKey {api_key}"))
        if channel is None:
            channel = (
                grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
            )
        self._channel = channel
        self.budgets = budget_pb2_grpc.BudgetServiceStub(channel)
        self.actions = action_pb2_grpc.ActionServiceStub(channel)
        self.teams = team_pb2_grpc.TeamServiceStub(channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(channel)
        self.insights = insights_pb2_grpc.InsightsServiceStub(channel)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.metadata = tuple(metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LeewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: Callable[..., R], request: Any) -> R:
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if not error.retryable or attempt >= self.retries:
                    raise error from None
            delay = self.backoff * (2**attempt)
            time.sleep(random.uniform(delay / 2, delay))
            attempt += 1

    @staticmethod
    def _request_id(request_id: str | None) -> str:
        return request_id or str(uuid.uuid4())

    # ------------------------------------------------------------------ budgets

    def open_budget(
        self,
        employee_id: str,
        team_id: str,
        policy: policy_pb2.Policy,
        *,
        display_name: str = "",
        request_id: str | None = None,
    ) -> budget_pb2.Budget:
        request = budget_pb2.OpenBudgetRequest(
            request_id=self._request_id(request_id),
            employee_id=employee_id,
            team_id=team_id,
            display_name=display_name,
            policy=policy,
        )
        return self._call(self.budgets.OpenBudget, request).budget

    def get_budget(
        self, employee_id: str, *, as_of: datetime | None = None, period_start: datetime | None = None
    ) -> budget_pb2.Budget:
        """The budget now, or as it stood at ``as_of``, or the figures now of its period that contains
        ``period_start`` (an ended one too); timezone-aware datetimes."""
        request = budget_pb2.GetBudgetRequest(employee_id=employee_id)
        if as_of is not None:
            request.as_of.CopyFrom(_timestamp(as_of))
        if period_start is not None:
            request.period_start.CopyFrom(_timestamp(period_start))
        return self._call(self.budgets.GetBudget, request).budget

    def list_budgets(
        self, team_id: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> budget_pb2.ListBudgetsResponse:
        request = budget_pb2.ListBudgetsRequest(team_id=team_id, page_size=page_size, page_token=page_token)
        return self._call(self.budgets.ListBudgets, request)

    def iter_budgets(self, team_id: str = "", *, page_size: int = 0) -> Iterator[budget_pb2.Budget]:
        """Every budget (of a team), following next_page_token."""
        return _all_pages(lambda token: self.list_budgets(team_id, page_size=page_size, page_token=token), "budgets")

    def update_policy(
        self,
        employee_id: str,
        policy: policy_pb2.Policy,
        *,
        expected_version: int = 0,
        request_id: str | None = None,
    ) -> budget_pb2.Budget:
        request = budget_pb2.UpdatePolicyRequest(
            request_id=self._request_id(request_id),
            employee_id=employee_id,
            policy=policy,
            expected_version=expected_version,
        )
        return self._call(self.budgets.UpdatePolicy, request).budget

    def close_budget(self, employee_id: str, reason: str, *, request_id: str | None = None) -> budget_pb2.Budget:
        request = budget_pb2.CloseBudgetRequest(
            request_id=self._request_id(request_id), employee_id=employee_id, reason=reason
        )
        return self._call(self.budgets.CloseBudget, request).budget

    def reopen_budget(self, employee_id: str, reason: str, *, request_id: str | None = None) -> budget_pb2.Budget:
        request = budget_pb2.ReopenBudgetRequest(
            request_id=self._request_id(request_id), employee_id=employee_id, reason=reason
        )
        return self._call(self.budgets.ReopenBudget, request).budget

    def move_employee(
        self, employee_id: str, team_id: str, *, reason: str = "", request_id: str | None = None
    ) -> budget_pb2.Budget:
        request = budget_pb2.MoveEmployeeRequest(
            request_id=self._request_id(request_id), employee_id=employee_id, team_id=team_id, reason=reason
        )
        return self._call(self.budgets.MoveEmployee, request).budget

    # ------------------------------------------------------------------ actions

    def record_action(
        self,
        employee_id: str,
        customer_id: str,
        amount: Amount,
        currency: str,
        details: Details,
        *,
        reason: str,
        case_id: str = "",
        occur_time: datetime | None = None,
        request_id: str | None = None,
    ) -> action_pb2.RecordActionResponse:
        """Records a refund, credit, rule bend or gift (the kind follows from ``details``)."""
        request = action_pb2.RecordActionRequest(
            request_id=self._request_id(request_id),
            employee_id=employee_id,
            customer_id=customer_id,
            case_id=case_id,
            amount=to_money(amount, currency),
            reason=reason,
        )
        getattr(request, _ONEOF[type(details)]).CopyFrom(details)
        if occur_time is not None:
            request.occur_time.CopyFrom(_timestamp(occur_time))
        return self._call(self.actions.RecordAction, request)

    def get_action(self, action_id: str) -> action_pb2.Action:
        return self._call(self.actions.GetAction, action_pb2.GetActionRequest(action_id=action_id)).action

    def list_actions(
        self,
        *,
        employee_id: str = "",
        customer_id: str = "",
        kind: str | int = 0,
        state: str | int = 0,
        approver_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        decided_by: str = "",
    ) -> action_pb2.ListActionsResponse:
        """Actions of an employee and/or customer; with state="PENDING_APPROVAL" also all pending ones
        (``approver_id``: only those this person may decide); ``decided_by``: what this person approved or
        denied."""
        request = action_pb2.ListActionsRequest(
            employee_id=employee_id,
            customer_id=customer_id,
            kind=_KINDS[kind.upper()] if isinstance(kind, str) else kind,
            state=_STATES[state.upper()] if isinstance(state, str) else state,
            approver_id=approver_id,
            decided_by=decided_by,
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self.actions.ListActions, request)

    def iter_actions(
        self,
        *,
        employee_id: str = "",
        customer_id: str = "",
        kind: str | int = 0,
        state: str | int = 0,
        approver_id: str = "",
        page_size: int = 0,
        decided_by: str = "",
    ) -> Iterator[action_pb2.Action]:
        """Every matching action, following next_page_token."""
        return _all_pages(
            lambda token: self.list_actions(
                employee_id=employee_id,
                customer_id=customer_id,
                kind=kind,
                state=state,
                approver_id=approver_id,
                decided_by=decided_by,
                page_size=page_size,
                page_token=token,
            ),
            "actions",
        )

    def approve_action(
        self, action_id: str, approver_id: str, *, note: str = "", request_id: str | None = None
    ) -> action_pb2.ApproveActionResponse:
        request = action_pb2.ApproveActionRequest(
            request_id=self._request_id(request_id), action_id=action_id, approver_id=approver_id, note=note
        )
        return self._call(self.actions.ApproveAction, request)

    def deny_action(
        self, action_id: str, approver_id: str, *, note: str = "", request_id: str | None = None
    ) -> action_pb2.DenyActionResponse:
        request = action_pb2.DenyActionRequest(
            request_id=self._request_id(request_id), action_id=action_id, approver_id=approver_id, note=note
        )
        return self._call(self.actions.DenyAction, request)

    def reverse_action(
        self, action_id: str, *, reason: str, actor_id: str, request_id: str | None = None
    ) -> action_pb2.ReverseActionResponse:
        request = action_pb2.ReverseActionRequest(
            request_id=self._request_id(request_id), action_id=action_id, reason=reason, actor_id=actor_id
        )
        return self._call(self.actions.ReverseAction, request)

    def document_win(
        self,
        action_id: str,
        story: str,
        *,
        customer_quote: str = "",
        outcome: str = "",
        request_id: str | None = None,
    ) -> action_pb2.Action:
        """Attaches a success story to a recorded or approved action; returns the action with its win."""
        request = action_pb2.DocumentWinRequest(
            request_id=self._request_id(request_id),
            action_id=action_id,
            story=story,
            customer_quote=customer_quote,
            outcome=outcome,
        )
        return self._call(self.actions.DocumentWin, request).action

    def get_audit_trail(
        self, *, employee_id: str = "", customer_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> audit_pb2.GetAuditTrailResponse:
        """One page of the trail of an employee's budget or of a customer, oldest first."""
        request = audit_pb2.GetAuditTrailRequest(
            employee_id=employee_id, customer_id=customer_id, page_size=page_size, page_token=page_token
        )
        return self._call(self.audit.GetAuditTrail, request)

    def iter_audit_trail(self, *, employee_id: str = "", customer_id: str = "", page_size: int = 0) -> Iterator[audit_pb2.AuditTrailEntry]:
        """The whole trail, following next_page_token."""
        return _all_pages(
            lambda token: self.get_audit_trail(
                employee_id=employee_id, customer_id=customer_id, page_size=page_size, page_token=token
            ),
            "entries",
        )

    # ------------------------------------------------------------------ insights (read models)

    def get_kpis(
        self,
        *,
        team_id: str = "",
        employee_id: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> insights_pb2.GetKpisResponse:
        """KPIs of everyone, a team or an employee, for actions recorded in [start_time, end_time)."""
        request = insights_pb2.GetKpisRequest(team_id=team_id, employee_id=employee_id)
        if start_time is not None:
            request.start_time.CopyFrom(_timestamp(start_time))
        if end_time is not None:
            request.end_time.CopyFrom(_timestamp(end_time))
        return self._call(self.insights.GetKpis, request)

    def get_kpi_series(
        self,
        *,
        start_time: datetime,
        end_time: datetime,
        granularity: str = "DAY",
        team_id: str = "",
        employee_id: str = "",
    ) -> insights_pb2.GetKpiSeriesResponse:
        """The KPIs of each UTC day, week (from Monday) or month ("DAY", "WEEK", "MONTH") of [start_time, end_time)."""
        request = insights_pb2.GetKpiSeriesRequest(
            team_id=team_id,
            employee_id=employee_id,
            granularity=insights_pb2.KpiGranularity.Value(f"KPI_GRANULARITY_{granularity}"),
        )
        request.start_time.CopyFrom(_timestamp(start_time))
        request.end_time.CopyFrom(_timestamp(end_time))
        return self._call(self.insights.GetKpiSeries, request)

    def list_wins(
        self, *, team_id: str = "", employee_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> insights_pb2.ListWinsResponse:
        """One page of the celebration feed, newest first."""
        request = insights_pb2.ListWinsRequest(
            team_id=team_id, employee_id=employee_id, page_size=page_size, page_token=page_token
        )
        return self._call(self.insights.ListWins, request)

    def iter_wins(self, *, team_id: str = "", employee_id: str = "", page_size: int = 0) -> Iterator[insights_pb2.WinEntry]:
        """Every documented win, newest first, following next_page_token."""
        return _all_pages(
            lambda token: self.list_wins(team_id=team_id, employee_id=employee_id, page_size=page_size, page_token=token),
            "wins",
        )

    # ------------------------------------------------------------------ teams and organisation caps

    def set_team_cap(self, team_id: str, cap: team_pb2.Cap | None, *, request_id: str | None = None) -> team_pb2.Team:
        """Sets a team's period cap (``make_cap(...)``), or removes it (None)."""
        request = team_pb2.SetTeamCapRequest(request_id=self._request_id(request_id), team_id=team_id)
        if cap is not None:
            request.cap.CopyFrom(cap)
        return self._call(self.teams.SetTeamCap, request).team

    def get_team(self, team_id: str) -> team_pb2.Team:
        return self._call(self.teams.GetTeam, team_pb2.GetTeamRequest(team_id=team_id)).team

    def set_customer_cap(
        self, cap: team_pb2.Cap | None, *, currency_code: str = "", request_id: str | None = None
    ) -> team_pb2.SetCustomerCapResponse:
        """Sets the organisation-wide per-customer cap of the cap's currency (the other currencies' caps stay), or
        removes the cap of ``currency_code`` (None), or every cap (None, no currency)."""
        request = team_pb2.SetCustomerCapRequest(request_id=self._request_id(request_id), currency_code=currency_code)
        if cap is not None:
            request.cap.CopyFrom(cap)
        return self._call(self.teams.SetCustomerCap, request)

    def get_customer_usage(self, customer_id: str) -> team_pb2.GetCustomerUsageResponse:
        return self._call(self.teams.GetCustomerUsage, team_pb2.GetCustomerUsageRequest(customer_id=customer_id))


def _all_pages(fetch: Callable[[str], Any], field: str) -> Iterator[Any]:
    token = ""
    while True:
        page = fetch(token)
        yield from getattr(page, field)
        token = page.next_page_token
        if not token:
            return


__all__ = ["LeewayClient", "LeewayError", "make_cap", "make_policy"]
