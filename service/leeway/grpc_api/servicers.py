"""gRPC servicers: translate protobuf <-> application calls, and domain errors -> status. Nothing else."""

from __future__ import annotations

import asyncio
import functools
import time
import types
from collections.abc import Callable
from typing import Any

import grpc
import structlog
from leeway.v1 import (
    action_pb2,
    action_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    budget_pb2,
    budget_pb2_grpc,
    insights_pb2,
    insights_pb2_grpc,
    privacy_pb2,
    team_pb2,
    team_pb2_grpc,
)

from ..application.commands import Command
from ..application.insights import Insights
from ..application.queries import SCAN_CHUNK
from ..domain.views import ActionView, BudgetView
from ..domain.errors import FieldViolation, InvalidArgument, LeewayError, ResourceExhausted
from ..observability import Metrics, correlation_id
from . import commands, convert, event_wire
from .front import Front, LogHead
from .authz import current_deadline, current_principal
from .errors import abort, internal_status, status_for
from ..domain.reasons import Reason
from ..domain.records import carried

log = structlog.get_logger("leeway.rpc")

#: The most events StreamEvents puts in one message (max_events_per_message above it is treated as this).
MAX_EVENTS_PER_MESSAGE = 500
#: Messages of a batched StreamEvents read (and converted) at a time.
BATCHES_PER_READ = 4


def _logged(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``method`` as gRPC runs it: one log line per call, and every failure turned into a proper status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        fields = {
            "method": name,
            "request_id": getattr(request, "request_id", ""),
            "correlation_id": correlation_id.get(),
            # Who called: "anonymous" until callers authenticate; the peer address either way.
            "principal": current_principal.get().id,
            "peer": context.peer(),
        }
        try:
            response = await method(self, request, context)
        except LeewayError as error:
            code, status = status_for(error)
            log.info(
                "rpc",
                **fields,
                code=code.name,
                reason=error.reason,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            metrics: Metrics | None = getattr(self, "metrics", None)
            if metrics is not None:
                metrics.refusals.labels(name.rsplit("/", 1)[-1], error.reason).inc()
        except Exception:
            log.exception("rpc.internal_error", **fields)
            status = internal_status()
        else:
            log.info("rpc", **fields, code="OK", duration_ms=round((time.perf_counter() - started) * 1000, 2))
            return response
        await abort(context, status, correlation_id.get())

    return wrapper


class rpc:  # noqa: N801 (used as a decorator)
    """A unary servicer method, run through ``_logged`` under its full name ``/<servicer's service>/<name>``."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method

    def __set_name__(self, owner: type, name: str) -> None:
        self.method.__name__ = name
        self.run = _logged(self.method, f"/{owner.service}/{name}")  # type: ignore[attr-defined]

    def __get__(self, servicer: Any, owner: type | None = None) -> Any:
        return self.run if servicer is None else types.MethodType(self.run, servicer)


def _caller() -> dict[str, Any]:
    """Who runs a command and until when: the authenticated principal and the clamped deadline."""
    return {"actor": current_principal.get().id, "deadline": current_deadline.get()}


def _roles() -> frozenset[str]:
    """The caller's roles for a policy's approver_role: none unless the caller authenticated."""
    principal = current_principal.get()
    return principal.roles if principal.method != "none" else frozenset()


def _command(to_command: Callable[[Any], Command], respond: Callable[[Any], Any]) -> rpc:
    """A call that runs the request's command as the caller and answers with ``respond(result)``."""

    async def run(servicer: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return respond(await servicer.front.execute(to_command(request), **_caller()))

    return rpc(run)


# The responses below are filled in place (convert.*_into): building the action and the budget apart and passing
# them to the response's constructor would copy each of them once more.


def _budget_response(response_type: Any) -> Callable[[BudgetView], Any]:
    def respond(view: BudgetView) -> Any:
        response = response_type()
        convert.budget_into(response.budget, view)
        return response

    return respond


def _action_response(response_type: Any) -> Callable[[tuple[ActionView, BudgetView]], Any]:
    def respond(pair: tuple[ActionView, BudgetView]) -> Any:
        response = response_type()
        convert.action_into(response.action, pair[0])
        convert.budget_into(response.budget, pair[1])
        return response

    return respond


def _decided_response(response_type: Any, *fields: str) -> Callable[[Any], Any]:
    """The action and budget that a decision or reversal left, with the named fields of its result."""

    def respond(result: Any) -> Any:
        response = response_type(**{name: getattr(result, name) for name in fields})
        convert.action_into(response.action, result.action)
        convert.budget_into(response.budget, result.budget)
        return response

    return respond


def _decision(approve: bool) -> Callable[[Any], Command]:
    return lambda request: commands.decide_action_command(request, approve=approve, roles=_roles())


class _AppServicer:
    """A servicer answering from the application: commands through the writer, reads on the read pool."""

    service: str

    def __init__(self, front: Front, metrics: Metrics | None = None):
        self.front = front
        self.app = front.app
        self.read = front.read
        self.metrics = metrics


class BudgetServicer(_AppServicer, budget_pb2_grpc.BudgetServiceServicer):
    service = "leeway.v1.BudgetService"

    OpenBudget = _command(commands.open_budget_command, _budget_response(budget_pb2.OpenBudgetResponse))
    UpdatePolicy = _command(commands.update_policy_command, _budget_response(budget_pb2.UpdatePolicyResponse))
    CloseBudget = _command(commands.close_budget_command, _budget_response(budget_pb2.CloseBudgetResponse))
    ReopenBudget = _command(commands.reopen_budget_command, _budget_response(budget_pb2.ReopenBudgetResponse))
    MoveEmployee = _command(commands.move_employee_command, _budget_response(budget_pb2.MoveEmployeeResponse))

    @rpc
    async def GetBudget(self, request: budget_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext) -> Any:
        view = await self.read(
            self.app.get_budget,
            request.employee_id,
            convert.as_of_from_proto(request),
            convert.as_of_from_proto(request, "period_start"),
        )
        return budget_pb2.GetBudgetResponse(budget=convert.budget_to_proto(view))

    @rpc
    async def ListBudgets(self, request: budget_pb2.ListBudgetsRequest, context: grpc.aio.ServicerContext) -> Any:
        page = await self.read(self.app.list_budgets, request.team_id, request.page_size, request.page_token)
        return budget_pb2.ListBudgetsResponse(
            budgets=[convert.budget_to_proto(v) for v in page.items], next_page_token=page.next_page_token
        )


class ActionServicer(_AppServicer, action_pb2_grpc.ActionServiceServicer):
    service = "leeway.v1.ActionService"

    def __init__(self, front: Front, metrics: Metrics | None = None, insights: Insights | None = None):
        super().__init__(front, metrics)
        # ListActions(decided_by) reads what an approver decided from the `trail` read model.
        self.insights = insights

    RecordAction = _command(commands.record_action_command, _action_response(action_pb2.RecordActionResponse))
    ApproveAction = _command(
        _decision(approve=True),
        _decided_response(action_pb2.ApproveActionResponse, "spent_in_current_period", "explanation"),
    )
    DenyAction = _command(_decision(approve=False), _decided_response(action_pb2.DenyActionResponse))
    ReverseAction = _command(
        commands.reverse_action_command,
        _decided_response(action_pb2.ReverseActionResponse, "restored_to_current_period", "explanation"),
    )
    DocumentWin = _command(
        commands.document_win_command,
        lambda action: action_pb2.DocumentWinResponse(action=convert.action_to_proto(action)),
    )

    @rpc
    async def GetAction(self, request: action_pb2.GetActionRequest, context: grpc.aio.ServicerContext) -> Any:
        action = await self.read(self.app.get_action, request.action_id)
        return action_pb2.GetActionResponse(action=convert.action_to_proto(action))

    @rpc
    async def ListActions(self, request: action_pb2.ListActionsRequest, context: grpc.aio.ServicerContext) -> Any:
        page = await self.read(
            self.app.list_actions,
            request.employee_id,
            request.customer_id,
            convert.kind_filter(request.kind),
            request.page_size,
            request.page_token,
            state=convert.state_filter(request.state),
            approver_id=request.approver_id,
            decided_by=request.decided_by,
            decisions=self.insights.decisions_by if self.insights is not None else None,
        )
        return action_pb2.ListActionsResponse(
            actions=[convert.action_to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )


def _customer_cap_response(result: Any) -> team_pb2.SetCustomerCapResponse:
    response = team_pb2.SetCustomerCapResponse(caps=[convert.cap_to_proto(cap) for cap in result.in_force])
    if result.cap is not None:
        response.cap.CopyFrom(convert.cap_to_proto(result.cap))
    return response


class TeamServicer(_AppServicer, team_pb2_grpc.TeamServiceServicer):
    service = "leeway.v1.TeamService"

    SetTeamCap = _command(
        commands.set_team_cap_command, lambda view: team_pb2.SetTeamCapResponse(team=convert.team_to_proto(view))
    )
    SetCustomerCap = _command(commands.set_customer_cap_command, _customer_cap_response)

    @rpc
    async def GetTeam(self, request: team_pb2.GetTeamRequest, context: grpc.aio.ServicerContext) -> Any:
        return team_pb2.GetTeamResponse(team=convert.team_to_proto(await self.read(self.app.get_team, request.team_id)))

    @rpc
    async def GetCustomerUsage(self, request: team_pb2.GetCustomerUsageRequest, context: grpc.aio.ServicerContext) -> Any:
        return convert.customer_usage_to_proto(await self.read(self.app.get_customer_usage, request.customer_id))


class AuditServicer(_AppServicer, audit_pb2_grpc.AuditServiceServicer):
    service = "leeway.v1.AuditService"

    def __init__(
        self,
        front: Front,
        insights: Insights,
        head: LogHead,
        metrics: Metrics | None = None,
        max_follow_streams: int = 1000,
    ):
        super().__init__(front, metrics)
        # A following stream waits on the log head (front.LogHead): a suspended coroutine, no thread. The cap
        # bounds the memory and the reads that followers cost (RESOURCE_EXHAUSTED / TOO_MANY_STREAMS beyond it).
        self.head = head
        self.max_follow_streams = max_follow_streams
        self.following = 0
        # GetAuditTrail reads the `trail` read model (a projection of the log).
        self.insights = insights

    async def StreamEvents(self, request: audit_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext) -> Any:
        name = f"/{self.service}/StreamEvents"
        following = False
        try:
            problems = []
            if request.after_position < 0:
                problems.append(FieldViolation("after_position", "must not be negative"))
            if request.max_events_per_message < 0:
                problems.append(FieldViolation("max_events_per_message", "must not be negative (0 or 1: one event "
                                               f"per message; at most {MAX_EVENTS_PER_MESSAGE} are used)"))
            if problems:
                raise InvalidArgument(problems)
            position = request.after_position
            types = tuple(request.event_types)
            batch = min(max(request.max_events_per_message, 1), MAX_EVENTS_PER_MESSAGE)
            if request.follow:
                if self.following >= self.max_follow_streams:
                    raise ResourceExhausted(
                        f"at most {self.max_follow_streams} following streams may be open at once; retry later "
                        "(or read without follow and poll)",
                        subject="streams:follow",
                        retry_after=5.0,
                        reason=Reason.TOO_MANY_STREAMS,
                    )
                self.following += 1  # the event loop is one thread: no lock needed
                following = True
            # The batch size is part of what is read and converted: readers share a chunk only with the same one.
            filters = (types, request.employee_id, batch)

            def read_after(after: int) -> tuple[list[tuple[int, Any]], bool]:
                return self._chunk(after, *filters)

            # Readers at the same place with the same filters share one read and its conversion.
            chunk = await self.front.read_shared(("log", position, filters), read_after, position)
            while chunk is not None:
                items, more = chunk
                # More right after this chunk: read it (on the read pool) while this one is being sent.
                ahead = (
                    asyncio.ensure_future(self.front.read_shared(("log", items[-1][0], filters), read_after,
                                                                 items[-1][0]))
                    if more and items else None
                )
                try:
                    for event_position, response in items:
                        position = event_position
                        if response is not None:
                            yield response
                except BaseException:
                    if ahead is not None:
                        ahead.cancel()  # the caller went away (the shared read itself goes on for the others)
                    raise
                if ahead is not None:
                    chunk = await ahead
                elif more:
                    chunk = await self.front.read_shared(("log", position, filters), read_after, position)
                elif request.follow:
                    # Waits (a suspended coroutine) until the log has something for it; the head hands it out.
                    chunk = await self.head.next_chunk(position, filters, read_after, _nothing_to_send)
                else:
                    return
        except LeewayError as error:
            code, status = status_for(error)
            log.info("rpc", method=name, code=code.name, reason=error.reason, correlation_id=correlation_id.get(),
                     principal=current_principal.get().id, peer=context.peer())
            await abort(context, status, correlation_id.get())
        finally:
            if following:
                self.following -= 1

    def _chunk(
        self, position: int, types: tuple[str, ...], employee: str, batch: int = 1
    ) -> tuple[list[tuple[int, Any]], bool]:
        """The events after ``position`` as (position of the last event in it, response), markers (filtered-out
        stretches) as (position, None), and whether more may follow at once; run on the read pool. ``batch`` 1:
        one event per response, in ``event``; more: up to ``batch`` events per response, in ``events``."""
        # Batched: a few messages' worth per read (fewer hops between the read pool and the event loop).
        limit = SCAN_CHUNK if batch == 1 else max(SCAN_CHUNK, BATCHES_PER_READ * batch)
        events, more = self.app.log_chunk(position, event_types=types, employee_id=employee, limit=limit)
        return event_wire.stream_items(events, batch), more

    @rpc
    async def GetAuditTrail(self, request: audit_pb2.GetAuditTrailRequest, context: grpc.aio.ServicerContext) -> Any:
        page = await self.read(
            self.insights.audit_trail, request.employee_id, request.customer_id, request.page_size, request.page_token
        )
        return audit_pb2.GetAuditTrailResponse(
            entries=[_trail_entry_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )

    @rpc
    async def VerifyIntegrity(self, request: audit_pb2.VerifyIntegrityRequest, context: grpc.aio.ServicerContext) -> Any:
        checkpoints = convert.checkpoints_from_proto(request)
        result = await self.read(self.app.verify_integrity, request.employee_id, checkpoints, full=request.full)
        response = audit_pb2.VerifyIntegrityResponse(
            events_checked=result.events_checked,
            ok=result.ok,
            violations=[
                audit_pb2.Violation(
                    **carried(v, "position", "aggregate_id", "kind", "description"), aggregate_version=v.version
                )
                for v in result.violations or []
            ],
        )
        if result.head is not None:
            response.head.CopyFrom(convert.checkpoint_to_proto(result.head))
        if result.verified_from is not None:
            response.verified_from.CopyFrom(convert.checkpoint_to_proto(result.verified_from))
        return response


class InsightsServicer(insights_pb2_grpc.InsightsServiceServicer):
    """Queries over the projected read models."""

    service = "leeway.v1.InsightsService"

    def __init__(self, front: Front, insights: Insights, metrics: Metrics | None = None):
        self.insights = insights
        self.read = front.read
        self.metrics = metrics

    @rpc
    async def GetKpis(self, request: insights_pb2.GetKpisRequest, context: grpc.aio.ServicerContext) -> Any:
        start, end, problems = convert.time_range_from_proto(request)
        if problems:
            raise InvalidArgument(problems)
        return convert.kpis_to_proto(
            await self.read(self.insights.get_kpis, request.team_id, request.employee_id, start, end)
        )

    @rpc
    async def GetKpiSeries(self, request: insights_pb2.GetKpiSeriesRequest, context: grpc.aio.ServicerContext) -> Any:
        start, end, problems = convert.time_range_from_proto(request)
        if problems:
            raise InvalidArgument(problems)
        granularity = convert.granularity_from_proto(request.granularity)
        return convert.kpi_series_to_proto(
            await self.read(self.insights.get_kpi_series, request.team_id, request.employee_id, start, end, granularity)
        )

    @rpc
    async def ListWins(self, request: insights_pb2.ListWinsRequest, context: grpc.aio.ServicerContext) -> Any:
        page = await self.read(
            self.insights.list_wins, request.team_id, request.employee_id, request.page_size, request.page_token
        )
        return insights_pb2.ListWinsResponse(
            wins=[convert.win_entry_to_proto(w) for w in page.wins], next_page_token=page.next_page_token
        )


def _nothing_to_send(chunk: tuple[list[tuple[int, Any]], bool]) -> int | None:
    """The position a follower may wait on from, if ``chunk`` holds nothing to send it (filtered-out events)."""
    items, more = chunk
    if more or any(response is not None for _, response in items):
        return None
    return items[-1][0] if items else 0


def _trail_entry_to_proto(entry: Any) -> audit_pb2.AuditTrailEntry:
    message = audit_pb2.AuditTrailEntry(
        time=convert.time_to_proto(entry.time),
        **carried(entry, "actor", "employee_id", "customer_id", "action_id", "event_type", "policy_version"),
        **carried(entry, "reason", "summary"),
    )
    if entry.amount is not None:
        message.amount.CopyFrom(convert.money_to_proto(entry.amount))
    return message


#: The full names of Leeway's services (health reports each of them; reflection lists them).
SERVICE_NAMES = (
    budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name,
    action_pb2.DESCRIPTOR.services_by_name["ActionService"].full_name,
    team_pb2.DESCRIPTOR.services_by_name["TeamService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    insights_pb2.DESCRIPTOR.services_by_name["InsightsService"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name,  # grpc_api/privacy_servicer.py
)


def add_services(
    server: grpc.aio.Server,
    front: Front,
    insights: Insights,
    head: LogHead,
    metrics: Metrics,
    max_follow_streams: int,
) -> dict[str, Any]:
    """Adds a servicer for each of SERVICE_NAMES to ``server``; returns them by full service name (the HTTP
    front serves the same servicers)."""
    servicers: dict[str, Any] = {
        s.service: s
        for s in (
            BudgetServicer(front, metrics),
            ActionServicer(front, metrics, insights),
            TeamServicer(front, metrics),
            AuditServicer(front, insights, head, metrics, max_follow_streams=max_follow_streams),
            InsightsServicer(front, insights, metrics),
        )
    }
    budget_pb2_grpc.add_BudgetServiceServicer_to_server(servicers["leeway.v1.BudgetService"], server)
    action_pb2_grpc.add_ActionServiceServicer_to_server(servicers["leeway.v1.ActionService"], server)
    team_pb2_grpc.add_TeamServiceServicer_to_server(servicers["leeway.v1.TeamService"], server)
    # StreamEvents yields its responses in wire form (event_wire.stream_items): sent as they are.
    event_wire.add_passing_encoded(
        audit_pb2_grpc.add_AuditServiceServicer_to_server, servicers["leeway.v1.AuditService"], server
    )
    insights_pb2_grpc.add_InsightsServiceServicer_to_server(servicers["leeway.v1.InsightsService"], server)
    return servicers
