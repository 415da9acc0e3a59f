"""A thin, typed wrapper over the generated leeway.v1 stubs (blocking; ``leeway_client.aio`` has the asyncio one).

- amounts are Decimal (or int / decimal strings), never float;
- every mutating call gets a request_id (a fresh UUID unless you pass one), and a retry after UNAVAILABLE,
  DEADLINE_EXCEEDED, a concurrency conflict or a rate limit reuses it, so a retried call never records twice;
  a rate limit (RESOURCE_EXHAUSTED with RetryInfo) is retried after the wait the server names;
- failures raise LeewayError subclasses carrying the ErrorInfo reason and the other google.rpc details.

The requests are built, and the retries decided, in ``_calls`` (shared with the asyncio client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from leeway.v1 import (
    action_pb2,
    action_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    budget_pb2,
    budget_pb2_grpc,
    insights_pb2,
    insights_pb2_grpc,
    policy_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
    team_pb2,
    team_pb2_grpc,
)

from . import _calls as calls
from ._calls import Amount, Call, Details, RetryPolicy, make_cap, make_policy
from .errors import LeewayError, from_rpc_error

R = TypeVar("R")
T = TypeVar("T")


class LeewayClient:
    """Calls a Leeway server. Use as a context manager, or call ``close()``.

    ``target`` is HOST:PORT. Authentication: ``token`` (a JWT, sent as ``authorization: Bearer``) or ``api_key``
    (sent as ``authorization: ApiKey``). TLS: ``root_certificates`` (PEM bytes of the CA that signed the server's
    certificate) and, for mutual TLS, ``certificate_chain`` + ``private_key`` (the client's PEM certificate and
    key); or pass ready ``credentials`` (grpc.ssl_channel_credentials(...)) or a ready ``channel``.
    ``timeout`` is the deadline of each attempt; ``retries`` how many times a retryable failure is retried
    (after the wait the server's RetryInfo names, else with exponential backoff and jitter starting at
    ``backoff`` seconds); ``total_timeout`` (seconds, default none) bounds a whole call, retries and waits
    included.
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
        total_timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
    ):
        self.metadata = calls.authorization(metadata, token, api_key)
        credentials = calls.tls_credentials(credentials, root_certificates, certificate_chain, private_key)
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
        self.privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.total_timeout = total_timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LeewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _policy(self) -> RetryPolicy:
        return RetryPolicy(self.timeout, self.retries, self.backoff, self.total_timeout)

    def _send(self, call: Call[R]) -> R:
        """Sends ``call`` (the same request, request_id included, on every attempt) until it succeeds, fails for
        good, or the retries or ``total_timeout`` are used up."""
        method = getattr(getattr(self, call.service), call.method)
        policy = self._policy()
        deadline = policy.deadline()
        attempt = 0
        while True:
            try:
                response = method(call.request, timeout=policy.attempt_timeout(deadline), metadata=self.metadata)
                return call.result(response)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            wait = policy.wait(error, attempt, deadline)
            if wait is None:
                raise error from None
            time.sleep(wait)
            attempt += 1

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
        return self._send(calls.open_budget(employee_id, team_id, policy, display_name, request_id))

    def get_budget(
        self, employee_id: str, *, as_of: datetime | None = None, period_start: datetime | None = None
    ) -> budget_pb2.Budget:
        """The budget now, or as it stood at ``as_of``, or the figures now of its period that contains
        ``period_start`` (an ended one too); timezone-aware datetimes."""
        return self._send(calls.get_budget(employee_id, as_of, period_start))

    def list_budgets(
        self, team_id: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> budget_pb2.ListBudgetsResponse:
        return self._send(calls.list_budgets(team_id, page_size, page_token))

    def iter_budgets(self, team_id: str = "", *, page_size: int = 0) -> Iterator[budget_pb2.Budget]:
        """Every budget (of a team), following next_page_token."""
        return _all_pages(lambda token: self.list_budgets(team_id, page_size=page_size, page_token=token), calls.budgets_of)

    def update_policy(
        self,
        employee_id: str,
        policy: policy_pb2.Policy,
        *,
        expected_version: int = 0,
        request_id: str | None = None,
    ) -> budget_pb2.Budget:
        return self._send(calls.update_policy(employee_id, policy, expected_version, request_id))

    def close_budget(self, employee_id: str, reason: str, *, request_id: str | None = None) -> budget_pb2.Budget:
        return self._send(calls.close_budget(employee_id, reason, request_id))

    def reopen_budget(self, employee_id: str, reason: str, *, request_id: str | None = None) -> budget_pb2.Budget:
        return self._send(calls.reopen_budget(employee_id, reason, request_id))

    def move_employee(
        self, employee_id: str, team_id: str, *, reason: str = "", request_id: str | None = None
    ) -> budget_pb2.Budget:
        return self._send(calls.move_employee(employee_id, team_id, reason, request_id))

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
        return self._send(
            calls.record_action(
                employee_id, customer_id, amount, currency, details, reason, case_id, occur_time, request_id
            )
        )

    def get_action(self, action_id: str) -> action_pb2.Action:
        return self._send(calls.get_action(action_id))

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
        return self._send(
            calls.list_actions(
                employee_id, customer_id, kind, state, approver_id, decided_by, page_size, page_token
            )
        )

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
            calls.actions_of,
        )

    def approve_action(
        self, action_id: str, approver_id: str, *, note: str = "", request_id: str | None = None
    ) -> action_pb2.ApproveActionResponse:
        return self._send(calls.approve_action(action_id, approver_id, note, request_id))

    def deny_action(
        self, action_id: str, approver_id: str, *, note: str = "", request_id: str | None = None
    ) -> action_pb2.DenyActionResponse:
        return self._send(calls.deny_action(action_id, approver_id, note, request_id))

    def reverse_action(
        self, action_id: str, *, reason: str, actor_id: str, request_id: str | None = None
    ) -> action_pb2.ReverseActionResponse:
        return self._send(calls.reverse_action(action_id, reason, actor_id, request_id))

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
        return self._send(calls.document_win(action_id, story, customer_quote, outcome, request_id))

    # ------------------------------------------------------------------ audit

    def get_audit_trail(
        self, *, employee_id: str = "", customer_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> audit_pb2.GetAuditTrailResponse:
        """One page of the trail of an employee's budget or of a customer, oldest first."""
        return self._send(calls.get_audit_trail(employee_id, customer_id, page_size, page_token))

    def iter_audit_trail(
        self, *, employee_id: str = "", customer_id: str = "", page_size: int = 0
    ) -> Iterator[audit_pb2.AuditTrailEntry]:
        """The whole trail, following next_page_token."""
        return _all_pages(
            lambda token: self.get_audit_trail(
                employee_id=employee_id, customer_id=customer_id, page_size=page_size, page_token=token
            ),
            calls.entries_of,
        )

    def verify_integrity(
        self, *, employee_id: str = "", checkpoint: audit_pb2.Checkpoint | None = None
    ) -> audit_pb2.VerifyIntegrityResponse:
        """Recomputes the hash chains (of everything, or of one employee's budget); with ``checkpoint`` (one kept
        outside the database) also checks that the log still holds it. ``ok`` is false with ``violations``."""
        return self._send(calls.verify_integrity(employee_id, checkpoint))

    def stream_events(
        self,
        *,
        after_position: int = 0,
        follow: bool = False,
        event_types: Sequence[str] = (),
        employee_id: str = "",
        timeout: float | None = None,
    ) -> Iterator[audit_pb2.Event]:
        """The events after ``after_position`` in log order; with ``follow``, then every new one as it commits
        (until the iterator is closed or ``timeout`` seconds pass). A retryable failure (the server restarting, a
        rate limit) resumes the stream after the last event received: no event is missed or repeated."""
        request = calls.stream_events(after_position, follow, event_types, employee_id)
        policy = self._policy()
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
            stream = self.audit.StreamEvents(request, timeout=remaining, metadata=self.metadata)
            try:
                for response in stream:
                    attempt = 0  # progress: the retries count again from here
                    request.after_position = response.event.position
                    yield response.event
                return
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]  # (types-grpcio leaves RpcContext.cancel untyped)
            wait = policy.wait(error, attempt, deadline)
            if wait is None:
                raise error from None
            time.sleep(wait)
            attempt += 1

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
        return self._send(calls.get_kpis(team_id, employee_id, start_time, end_time))

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
        return self._send(calls.get_kpi_series(team_id, employee_id, start_time, end_time, granularity))

    def list_wins(
        self, *, team_id: str = "", employee_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> insights_pb2.ListWinsResponse:
        """One page of the celebration feed, newest first."""
        return self._send(calls.list_wins(team_id, employee_id, page_size, page_token))

    def iter_wins(
        self, *, team_id: str = "", employee_id: str = "", page_size: int = 0
    ) -> Iterator[insights_pb2.WinEntry]:
        """Every documented win, newest first, following next_page_token."""
        return _all_pages(
            lambda token: self.list_wins(team_id=team_id, employee_id=employee_id, page_size=page_size, page_token=token),
            calls.wins_of,
        )

    # ------------------------------------------------------------------ teams and organisation caps

    def set_team_cap(self, team_id: str, cap: team_pb2.Cap | None, *, request_id: str | None = None) -> team_pb2.Team:
        """Sets a team's period cap (``make_cap(...)``), or removes it (None)."""
        return self._send(calls.set_team_cap(team_id, cap, request_id))

    def get_team(self, team_id: str) -> team_pb2.Team:
        return self._send(calls.get_team(team_id))

    def erase_customer(self, customer_id: str, reason: str, *, request_id: str | None = None) -> privacy_pb2.Erasure:
        """Forgets a customer's personal data (admin only; ``reason``: a reference such as a ticket, never the data):
        their key is shredded and every answer shows ``[erased]`` from then on; amounts and limits stay."""
        return self._send(calls.erase_customer(customer_id, reason, request_id))

    def erase_employee(self, employee_id: str, reason: str, *, request_id: str | None = None) -> privacy_pb2.Erasure:
        """Forgets an employee's personal data (their display name, the reasons of their budget's life cycle)."""
        return self._send(calls.erase_employee(employee_id, reason, request_id))

    def redact_legacy_data(
        self, reason: str, *, customer_id: str = "", employee_id: str = "", request_id: str | None = None
    ) -> privacy_pb2.LegacyRedaction:
        """Overwrites one subject's personal fields in events stored in clear (before encryption) with [erased],
        recording which events and why (give exactly one of ``customer_id`` and ``employee_id``)."""
        return self._send(calls.redact_legacy_data(customer_id, employee_id, reason, request_id))

    def export_customer_data(
        self, customer_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> privacy_pb2.ExportCustomerDataResponse:
        """One page of everything held about a customer, as a JSON ``document`` (an access request, GDPR art. 15)."""
        return self._send(calls.export_customer_data(customer_id, page_size, page_token))

    def set_customer_cap(
        self, cap: team_pb2.Cap | None, *, currency_code: str = "", request_id: str | None = None
    ) -> team_pb2.SetCustomerCapResponse:
        """Sets the organisation-wide per-customer cap of the cap's currency (the other currencies' caps stay), or
        removes the cap of ``currency_code`` (None), or every cap (None, no currency)."""
        return self._send(calls.set_customer_cap(cap, currency_code, request_id))

    def get_customer_usage(self, customer_id: str) -> team_pb2.GetCustomerUsageResponse:
        return self._send(calls.get_customer_usage(customer_id))


def _all_pages(fetch: Callable[[str], Any], items: Callable[[Any], Sequence[T]]) -> Iterator[T]:
    token = ""
    while True:
        page = fetch(token)
        yield from items(page)
        token = page.next_page_token
        if not token:
            return


__all__ = ["LeewayClient", "LeewayError", "make_cap", "make_policy"]
