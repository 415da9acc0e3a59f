"""gRPC servicers: translate protobuf <-> application calls, and domain errors -> status. Nothing else."""

from __future__ import annotations

import functools
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import grpc
import structlog
from google.protobuf import struct_pb2
from leeway.v1 import (
    action_pb2,
    action_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    budget_pb2,
    budget_pb2_grpc,
    insights_pb2,
    insights_pb2_grpc,
    team_pb2,
    team_pb2_grpc,
)

from ..application import LeewayApplication
from ..application.commands import Command
from ..application.insights import Insights
from ..domain.views import ActionView, BudgetView
from ..domain.errors import FieldViolation, InvalidArgument, LeewayError, ResourceExhausted
from ..observability import Metrics, correlation_id
from . import commands, convert
from .authz import current_deadline, current_principal
from .errors import abort, internal_status, status_for
from ..domain.reasons import Reason
from ..domain.records import carried

log = structlog.get_logger("leeway.rpc")


def _logged(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``method`` as gRPC runs it: one log line per call, and every failure turned into a proper status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
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
            response = method(self, request, context)
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
        abort(context, status, correlation_id.get())

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

    def run(servicer: Any, request: Any, context: grpc.ServicerContext) -> Any:
        return respond(servicer.app.execute(to_command(request), **_caller()))

    return rpc(run)


def _budget_response(response_type: Any) -> Callable[[BudgetView], Any]:
    return lambda view: response_type(budget=convert.budget_to_proto(view))


def _action_response(response_type: Any) -> Callable[[tuple[ActionView, BudgetView]], Any]:
    return lambda pair: response_type(action=convert.action_to_proto(pair[0]), budget=convert.budget_to_proto(pair[1]))


def _decision(approve: bool) -> Callable[[Any], Command]:
    return lambda request: commands.decide_action_command(request, approve=approve, roles=_roles())


class _AppServicer:
    """A servicer answering from the application."""

    service: str

    def __init__(self, app: LeewayApplication, metrics: Metrics | None = None):
        self.app = app
        self.metrics = metrics


class BudgetServicer(_AppServicer, budget_pb2_grpc.BudgetServiceServicer):
    service = "leeway.v1.BudgetService"

    OpenBudget = _command(commands.open_budget_command, _budget_response(budget_pb2.OpenBudgetResponse))
    UpdatePolicy = _command(commands.update_policy_command, _budget_response(budget_pb2.UpdatePolicyResponse))
    CloseBudget = _command(commands.close_budget_command, _budget_response(budget_pb2.CloseBudgetResponse))

    @rpc
    def GetBudget(self, request: budget_pb2.GetBudgetRequest, context: grpc.ServicerContext) -> Any:
        view = self.app.get_budget(request.employee_id, convert.as_of_from_proto(request))
        return budget_pb2.GetBudgetResponse(budget=convert.budget_to_proto(view))

    @rpc
    def ListBudgets(self, request: budget_pb2.ListBudgetsRequest, context: grpc.ServicerContext) -> Any:
        page = self.app.list_budgets(request.team_id, request.page_size, request.page_token)
        return budget_pb2.ListBudgetsResponse(
            budgets=[convert.budget_to_proto(v) for v in page.items], next_page_token=page.next_page_token
        )


class ActionServicer(_AppServicer, action_pb2_grpc.ActionServiceServicer):
    service = "leeway.v1.ActionService"

    RecordAction = _command(commands.record_action_command, _action_response(action_pb2.RecordActionResponse))
    ApproveAction = _command(_decision(approve=True), _action_response(action_pb2.ApproveActionResponse))
    DenyAction = _command(_decision(approve=False), _action_response(action_pb2.DenyActionResponse))
    ReverseAction = _command(
        commands.reverse_action_command,
        lambda result: action_pb2.ReverseActionResponse(
            action=convert.action_to_proto(result.action),
            budget=convert.budget_to_proto(result.budget),
            restored_to_current_period=result.restored_to_current_period,
            explanation=result.explanation,
        ),
    )
    DocumentWin = _command(
        commands.document_win_command,
        lambda action: action_pb2.DocumentWinResponse(action=convert.action_to_proto(action)),
    )

    @rpc
    def GetAction(self, request: action_pb2.GetActionRequest, context: grpc.ServicerContext) -> Any:
        return action_pb2.GetActionResponse(action=convert.action_to_proto(self.app.get_action(request.action_id)))

    @rpc
    def ListActions(self, request: action_pb2.ListActionsRequest, context: grpc.ServicerContext) -> Any:
        page = self.app.list_actions(
            request.employee_id,
            request.customer_id,
            convert.kind_filter(request.kind),
            request.page_size,
            request.page_token,
            state=convert.state_filter(request.state),
            approver_id=request.approver_id,
        )
        return action_pb2.ListActionsResponse(
            actions=[convert.action_to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )


def _customer_cap_response(cap: Any) -> team_pb2.SetCustomerCapResponse:
    response = team_pb2.SetCustomerCapResponse()
    if cap is not None:
        response.cap.CopyFrom(convert.cap_to_proto(cap))
    return response


class TeamServicer(_AppServicer, team_pb2_grpc.TeamServiceServicer):
    service = "leeway.v1.TeamService"

    SetTeamCap = _command(
        commands.set_team_cap_command, lambda view: team_pb2.SetTeamCapResponse(team=convert.team_to_proto(view))
    )
    SetCustomerCap = _command(commands.set_customer_cap_command, _customer_cap_response)

    @rpc
    def GetTeam(self, request: team_pb2.GetTeamRequest, context: grpc.ServicerContext) -> Any:
        return team_pb2.GetTeamResponse(team=convert.team_to_proto(self.app.get_team(request.team_id)))

    @rpc
    def GetCustomerUsage(self, request: team_pb2.GetCustomerUsageRequest, context: grpc.ServicerContext) -> Any:
        return convert.customer_usage_to_proto(self.app.get_customer_usage(request.customer_id))


#: How often a following StreamEvents looks for newly committed events.
FOLLOW_POLL_SECONDS = 0.2


class AuditServicer(_AppServicer, audit_pb2_grpc.AuditServiceServicer):
    service = "leeway.v1.AuditService"

    def __init__(
        self,
        app: LeewayApplication,
        insights: Insights,
        metrics: Metrics | None = None,
        stopping: Any = None,
        max_follow_streams: int = 8,
    ):
        super().__init__(app, metrics)
        self.stopping = stopping  # a threading.Event set at shutdown: following streams end then
        # A following stream holds a worker thread for as long as it is open: at most this many at once, so that
        # idle followers can never take every thread from ordinary calls (RESOURCE_EXHAUSTED beyond it).
        self.max_follow_streams = max_follow_streams
        self._followers = threading.BoundedSemaphore(max_follow_streams)
        # GetAuditTrail reads the `trail` read model (a projection of the log).
        self.insights = insights

    def StreamEvents(self, request: audit_pb2.StreamEventsRequest, context: grpc.ServicerContext) -> Any:
        name = f"/{self.service}/StreamEvents"
        try:
            if request.after_position < 0:
                raise InvalidArgument([FieldViolation("after_position", "must not be negative")])
            position = request.after_position
            types = tuple(request.event_types)
            if request.follow:
                if not self._followers.acquire(blocking=False):
                    raise ResourceExhausted(
                        f"at most {self.max_follow_streams} following streams may be open at once; retry later "
                        "(or read without follow and poll)",
                        subject="streams:follow",
                        retry_after=5.0,
                        reason=Reason.TOO_MANY_STREAMS,
                    )
                if not context.add_callback(self._followers.release):
                    self._followers.release()  # the call had already ended
                    return
            while context.is_active():
                events = self.app.read_log(position, event_types=types, employee_id=request.employee_id)
                for event in events:
                    position = event.position
                    if not event.is_marker:
                        yield audit_pb2.StreamEventsResponse(event=_event_to_proto(event))
                if events:
                    continue
                if not request.follow or (self.stopping is not None and self.stopping.is_set()):
                    return
                time.sleep(FOLLOW_POLL_SECONDS)
        except LeewayError as error:
            code, status = status_for(error)
            log.info("rpc", method=name, code=code.name, reason=error.reason, correlation_id=correlation_id.get())
            abort(context, status, correlation_id.get())

    @rpc
    def GetAuditTrail(self, request: audit_pb2.GetAuditTrailRequest, context: grpc.ServicerContext) -> Any:
        page = self.insights.audit_trail(request.employee_id, request.customer_id, request.page_size, request.page_token)
        return audit_pb2.GetAuditTrailResponse(
            entries=[_trail_entry_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )

    @rpc
    def VerifyIntegrity(self, request: audit_pb2.VerifyIntegrityRequest, context: grpc.ServicerContext) -> Any:
        result = self.app.verify_integrity(request.employee_id)
        return audit_pb2.VerifyIntegrityResponse(
            events_checked=result.events_checked,
            ok=result.ok,
            violations=[
                audit_pb2.Violation(
                    **carried(v, "position", "aggregate_id", "kind", "description"), aggregate_version=v.version
                )
                for v in result.violations or []
            ],
        )


class InsightsServicer(insights_pb2_grpc.InsightsServiceServicer):
    """Queries over the projected read models."""

    service = "leeway.v1.InsightsService"

    def __init__(self, insights: Insights, metrics: Metrics | None = None):
        self.insights = insights
        self.metrics = metrics

    @rpc
    def GetKpis(self, request: insights_pb2.GetKpisRequest, context: grpc.ServicerContext) -> Any:
        start, end, problems = convert.time_range_from_proto(request)
        if problems:
            raise InvalidArgument(problems)
        return convert.kpis_to_proto(self.insights.get_kpis(request.team_id, request.employee_id, start, end))

    @rpc
    def ListWins(self, request: insights_pb2.ListWinsRequest, context: grpc.ServicerContext) -> Any:
        page = self.insights.list_wins(request.team_id, request.employee_id, request.page_size, request.page_token)
        return insights_pb2.ListWinsResponse(
            wins=[convert.win_entry_to_proto(w) for w in page.wins], next_page_token=page.next_page_token
        )


def _trail_entry_to_proto(entry: Any) -> audit_pb2.AuditTrailEntry:
    message = audit_pb2.AuditTrailEntry(
        time=convert.time_to_proto(entry.time),
        **carried(entry, "actor", "employee_id", "customer_id", "action_id", "event_type", "policy_version"),
        **carried(entry, "reason", "summary"),
    )
    if entry.amount is not None:
        message.amount.CopyFrom(convert.money_to_proto(entry.amount))
    return message


def _event_to_proto(event: Any) -> audit_pb2.Event:
    payload = struct_pb2.Struct()
    payload.update(event.payload)
    message = audit_pb2.Event(
        **carried(event, "position", "event_type", "employee_id", "aggregate_id", "hash", "prev_hash"),
        event_id=f"{event.aggregate_id}/{event.version}",
        aggregate_version=event.version,
        payload=payload,
    )
    if event.record_time is not None:
        message.record_time.CopyFrom(convert.time_to_proto(event.record_time))
    return message


#: The full names of Leeway's services (health reports each of them; reflection lists them).
SERVICE_NAMES = (
    budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name,
    action_pb2.DESCRIPTOR.services_by_name["ActionService"].full_name,
    team_pb2.DESCRIPTOR.services_by_name["TeamService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    insights_pb2.DESCRIPTOR.services_by_name["InsightsService"].full_name,
)


def add_services(
    server: grpc.Server,
    app: LeewayApplication,
    insights: Insights,
    metrics: Metrics,
    stopping: threading.Event,
    max_follow_streams: int,
) -> None:
    """Adds a servicer for each of SERVICE_NAMES to ``server``."""
    budget_pb2_grpc.add_BudgetServiceServicer_to_server(BudgetServicer(app, metrics), server)
    action_pb2_grpc.add_ActionServiceServicer_to_server(ActionServicer(app, metrics), server)
    team_pb2_grpc.add_TeamServiceServicer_to_server(TeamServicer(app, metrics), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(app, insights, metrics, stopping, max_follow_streams=max_follow_streams), server
    )
    insights_pb2_grpc.add_InsightsServiceServicer_to_server(InsightsServicer(insights, metrics), server)
