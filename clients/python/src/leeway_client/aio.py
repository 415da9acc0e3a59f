"""The asyncio client (grpc.aio): ``AsyncLeewayClient`` has the same methods as ``LeewayClient``, awaited; the
``iter_*`` methods and ``stream_events`` are async iterators.

    async with AsyncLeewayClient("127.0.0.1:50051", api_key=...) as leeway:
        budget = await leeway.get_budget("ann")
        async for event in leeway.stream_events(follow=True):
            ...

Requests, request_ids, error conversion and the retry policy are the sync client's (``_calls``, ``errors``): a
retried call sends the same request_id, and a rate limit is retried after the wait its RetryInfo names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
import grpc.aio
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
from ._calls import Amount, Call, Details, RetryPolicy
from .errors import from_rpc_error

R = TypeVar("R")
T = TypeVar("T")


class AsyncLeewayClient:
    """Calls a Leeway server from asyncio. Use as an async context manager, or await ``close()``.

    The arguments are ``LeewayClient``'s (``channel``: a ready ``grpc.aio.Channel``). Make it inside the event
    loop that uses it (grpc.aio binds a channel to its loop).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.aio.Channel | None = None,
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
                grpc.aio.secure_channel(target, credentials)
                if credentials is not None
                else grpc.aio.insecure_channel(target)
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

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncLeewayClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    def _policy(self) -> RetryPolicy:
        return RetryPolicy(self.timeout, self.retries, self.backoff, self.total_timeout)

    async def _send(self, call: Call[R]) -> R:
        """Sends ``call`` (the same request, request_id included, on every attempt) until it succeeds, fails for
        good, or the retries or ``total_timeout`` are used up."""
        method = getattr(getattr(self, call.service), call.method)
        policy = self._policy()
        deadline = policy.deadline()
        attempt = 0
        while True:
            try:
                response = await method(call.request, timeout=policy.attempt_timeout(deadline), metadata=self.metadata)
                return call.result(response)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            wait = policy.wait(error, attempt, deadline)
            if wait is None:
                raise error from None
            await asyncio.sleep(wait)
            attempt += 1

    # ------------------------------------------------------------------ budgets

    async def open_budget(
        self,
        employee_id: str,
        team_id: str,
        policy: policy_pb2.Policy,
        *,
        display_name: str = "",
        request_id: str | None = None,
    ) -> budget_pb2.Budget:
        return await self._send(calls.open_budget(employee_id, team_id, policy, display_name, request_id))

    async def get_budget(
        self, employee_id: str, *, as_of: datetime | None = None, period_start: datetime | None = None
    ) -> budget_pb2.Budget:
        """The budget now, or as it stood at ``as_of``, or the figures now of its period that contains
        ``period_start`` (an ended one too); timezone-aware datetimes."""
        return await self._send(calls.get_budget(employee_id, as_of, period_start))

    async def list_budgets(
        self, team_id: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> budget_pb2.ListBudgetsResponse:
        return await self._send(calls.list_budgets(team_id, page_size, page_token))

    async def update_policy(
        self,
        employee_id: str,
        policy: policy_pb2.Policy,
        *,
        expected_version: int = 0,
        request_id: str | None = None,
    ) -> budget_pb2.Budget:
        return await self._send(calls.update_policy(employee_id, policy, expected_version, request_id))

    async def close_budget(self, employee_id: str, reason: str, *, request_id: str | None = None) -> budget_pb2.Budget:
        return await self._send(calls.close_budget(employee_id, reason, request_id))

    async def reopen_budget(self, employee_id: str, reason: str, *, request_id: str | None = None) -> budget_pb2.Budget:
        return await self._send(calls.reopen_budget(employee_id, reason, request_id))

    async def move_employee(
        self, employee_id: str, team_id: str, *, reason: str = "", request_id: str | None = None
    ) -> budget_pb2.Budget:
        return await self._send(calls.move_employee(employee_id, team_id, reason, request_id))

    # ------------------------------------------------------------------ actions

    async def record_action(
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
        return await self._send(
            calls.record_action(
                employee_id, customer_id, amount, currency, details, reason, case_id, occur_time, request_id
            )
        )

    async def get_action(self, action_id: str) -> action_pb2.Action:
        return await self._send(calls.get_action(action_id))

    async def list_actions(
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
        return await self._send(
            calls.list_actions(
                employee_id, customer_id, kind, state, approver_id, decided_by, page_size, page_token
            )
        )

    async def approve_action(
        self, action_id: str, approver_id: str, *, note: str = "", request_id: str | None = None
    ) -> action_pb2.ApproveActionResponse:
        return await self._send(calls.approve_action(action_id, approver_id, note, request_id))

    async def deny_action(
        self, action_id: str, approver_id: str, *, note: str = "", request_id: str | None = None
    ) -> action_pb2.DenyActionResponse:
        return await self._send(calls.deny_action(action_id, approver_id, note, request_id))

    async def reverse_action(
        self, action_id: str, *, reason: str, actor_id: str, request_id: str | None = None
    ) -> action_pb2.ReverseActionResponse:
        return await self._send(calls.reverse_action(action_id, reason, actor_id, request_id))

    async def document_win(
        self,
        action_id: str,
        story: str,
        *,
        customer_quote: str = "",
        outcome: str = "",
        request_id: str | None = None,
    ) -> action_pb2.Action:
        """Attaches a success story to a recorded or approved action; returns the action with its win."""
        return await self._send(calls.document_win(action_id, story, customer_quote, outcome, request_id))

    # ------------------------------------------------------------------ audit

    async def get_audit_trail(
        self, *, employee_id: str = "", customer_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> audit_pb2.GetAuditTrailResponse:
        """One page of the trail of an employee's budget or of a customer, oldest first."""
        return await self._send(calls.get_audit_trail(employee_id, customer_id, page_size, page_token))

    async def verify_integrity(
        self, *, employee_id: str = "", checkpoint: audit_pb2.Checkpoint | None = None
    ) -> audit_pb2.VerifyIntegrityResponse:
        """Recomputes the hash chains (of everything, or of one employee's budget); with ``checkpoint`` (one kept
        outside the database) also checks that the log still holds it. ``ok`` is false with ``violations``."""
        return await self._send(calls.verify_integrity(employee_id, checkpoint))

    async def get_kpis(
        self,
        *,
        team_id: str = "",
        employee_id: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> insights_pb2.GetKpisResponse:
        """KPIs of everyone, a team or an employee, for actions recorded in [start_time, end_time)."""
        return await self._send(calls.get_kpis(team_id, employee_id, start_time, end_time))

    async def get_kpi_series(
        self,
        *,
        start_time: datetime,
        end_time: datetime,
        granularity: str = "DAY",
        team_id: str = "",
        employee_id: str = "",
    ) -> insights_pb2.GetKpiSeriesResponse:
        """The KPIs of each UTC day, week (from Monday) or month ("DAY", "WEEK", "MONTH") of [start_time, end_time)."""
        return await self._send(calls.get_kpi_series(team_id, employee_id, start_time, end_time, granularity))

    async def list_wins(
        self, *, team_id: str = "", employee_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> insights_pb2.ListWinsResponse:
        """One page of the celebration feed, newest first."""
        return await self._send(calls.list_wins(team_id, employee_id, page_size, page_token))

    async def set_team_cap(self, team_id: str, cap: team_pb2.Cap | None, *, request_id: str | None = None) -> team_pb2.Team:
        """Sets a team's period cap (``make_cap(...)``), or removes it (None)."""
        return await self._send(calls.set_team_cap(team_id, cap, request_id))

    async def get_team(self, team_id: str) -> team_pb2.Team:
        return await self._send(calls.get_team(team_id))

    async def erase_customer(self, customer_id: str, reason: str, *, request_id: str | None = None) -> privacy_pb2.Erasure:
        """Forgets a customer's personal data (admin only; ``reason``: a reference such as a ticket, never the data):
        their key is shredded and every answer shows ``[erased]`` from then on; amounts and limits stay."""
        return await self._send(calls.erase_customer(customer_id, reason, request_id))

    async def erase_employee(self, employee_id: str, reason: str, *, request_id: str | None = None) -> privacy_pb2.Erasure:
        """Forgets an employee's personal data (their display name, the reasons of their budget's life cycle)."""
        return await self._send(calls.erase_employee(employee_id, reason, request_id))

    async def redact_legacy_data(
        self, reason: str, *, customer_id: str = "", employee_id: str = "", request_id: str | None = None
    ) -> privacy_pb2.LegacyRedaction:
        """Overwrites one subject's personal fields in events stored in clear (before encryption) with [erased],
        recording which events and why (give exactly one of ``customer_id`` and ``employee_id``)."""
        return await self._send(calls.redact_legacy_data(customer_id, employee_id, reason, request_id))

    async def export_customer_data(
        self, customer_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> privacy_pb2.ExportCustomerDataResponse:
        """One page of everything held about a customer, as a JSON ``document`` (an access request, GDPR art. 15)."""
        return await self._send(calls.export_customer_data(customer_id, page_size, page_token))

    async def set_customer_cap(
        self, cap: team_pb2.Cap | None, *, currency_code: str = "", request_id: str | None = None
    ) -> team_pb2.SetCustomerCapResponse:
        """Sets the organisation-wide per-customer cap of the cap's currency (the other currencies' caps stay), or
        removes the cap of ``currency_code`` (None), or every cap (None, no currency)."""
        return await self._send(calls.set_customer_cap(cap, currency_code, request_id))

    async def get_customer_usage(self, customer_id: str) -> team_pb2.GetCustomerUsageResponse:
        return await self._send(calls.get_customer_usage(customer_id))


    # ------------------------------------------------------------------ iterating: pages and the event stream

    def iter_budgets(self, team_id: str = "", *, page_size: int = 0) -> AsyncIterator[budget_pb2.Budget]:
        """Every budget (of a team), following next_page_token."""
        return _all_pages(lambda token: self.list_budgets(team_id, page_size=page_size, page_token=token), calls.budgets_of)

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
    ) -> AsyncIterator[action_pb2.Action]:
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

    def iter_audit_trail(
        self, *, employee_id: str = "", customer_id: str = "", page_size: int = 0
    ) -> AsyncIterator[audit_pb2.AuditTrailEntry]:
        """The whole trail, following next_page_token."""
        return _all_pages(
            lambda token: self.get_audit_trail(
                employee_id=employee_id, customer_id=customer_id, page_size=page_size, page_token=token
            ),
            calls.entries_of,
        )

    def iter_wins(
        self, *, team_id: str = "", employee_id: str = "", page_size: int = 0
    ) -> AsyncIterator[insights_pb2.WinEntry]:
        """Every documented win, newest first, following next_page_token."""
        return _all_pages(
            lambda token: self.list_wins(team_id=team_id, employee_id=employee_id, page_size=page_size, page_token=token),
            calls.wins_of,
        )

    async def stream_events(
        self,
        *,
        after_position: int = 0,
        follow: bool = False,
        event_types: Sequence[str] = (),
        employee_id: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[audit_pb2.Event]:
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
                async for response in stream:
                    attempt = 0  # progress: the retries count again from here
                    request.after_position = response.event.position
                    yield response.event
                return
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            finally:
                stream.cancel()
            wait = policy.wait(error, attempt, deadline)
            if wait is None:
                raise error from None
            await asyncio.sleep(wait)
            attempt += 1


async def _all_pages(fetch: Callable[[str], Awaitable[Any]], items: Callable[[Any], Sequence[T]]) -> AsyncIterator[T]:
    token = ""
    while True:
        page = await fetch(token)
        for item in items(page):
            yield item
        token = page.next_page_token
        if not token:
            return


__all__ = ["AsyncLeewayClient"]
