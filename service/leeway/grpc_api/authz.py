"""Who may call what: the one method-to-permission table, and the interceptor that enforces it.

Every RPC of every Leeway service has a row in ``RULES``: the roles that may call it and, per role, the scope
that must hold for the request (``anything``, the caller's own budget, a budget of one of the caller's teams
...). A method without a row is refused. Health checks are open; reflection is open when it is enabled.

Authentication failures are UNAUTHENTICATED; a peer with too many of them is refused before its credentials
are looked at (``authenticate_call``). A known caller without permission gets PERMISSION_DENIED, and for scoped
roles (agent, supervisor) the answer is the same whether or not the resource exists. Every refusal is logged
(``rpc.refused``) with the caller's ``peer``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from ..application import LeewayApplication
from ..auth import (
    ADMIN,
    AGENT,
    ANONYMOUS,
    AUDITOR,
    CRM,
    SUPERVISOR,
    AuthenticationError,
    Authenticator,
    Principal,
    RateLimiter,
    peer_address,
)
from ..domain.views import PENDING_APPROVAL
from ..domain.errors import (
    FieldViolation,
    InvalidArgument,
    LeewayError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from ..observability import correlation_id
from .errors import abort, status_for
from ..domain.reasons import Reason

log = structlog.get_logger("leeway.auth")

#: The caller of the current RPC (ANONYMOUS while authentication is off).
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("leeway_principal", default=ANONYMOUS)
#: time.monotonic() by which the current RPC must be done: the caller's deadline, clamped to the server maximum.
current_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("leeway_deadline", default=float("inf"))

Scope = Callable[[Principal, Any, LeewayApplication], bool]

OPEN_METHODS = {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"}
REFLECTION_METHODS = {
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
}


# ---------------------------------------------------------------------------- scopes


def anything(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    return True


def _team_of_employee(app: LeewayApplication, employee_id: str) -> str:
    return app.get_budget(employee_id).team_id


def _action(app: LeewayApplication, action_id: str) -> tuple[str, str]:
    action = app.get_action(action_id)
    return action.employee_id, action.team_id


def self_employee(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    """The request's employee_id is the caller."""
    return bool(request.employee_id) and request.employee_id == principal.id


def self_or_team_employee(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    if self_employee(principal, request, app):
        return True
    return bool(request.employee_id) and _team_of_employee(app, request.employee_id) in principal.teams


def other_team_employee(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    """A budget of one of the caller's teams, not the caller's own (nobody sets their own policy)."""
    if not request.employee_id or request.employee_id == principal.id:
        return False
    return _team_of_employee(app, request.employee_id) in principal.teams


def own_action(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    employee, _ = _action(app, request.action_id)
    return employee == principal.id


def own_or_team_action(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    employee, team = _action(app, request.action_id)
    return employee == principal.id or team in principal.teams


def team_in_request(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    return bool(request.team_id) and request.team_id in principal.teams


def approver_is_caller(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    """Decides as themself (the policy recorded with the action then says whether they may)."""
    return request.approver_id == principal.id


def reverses_team_action_as_caller(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    return request.actor_id == principal.id and _action(app, request.action_id)[1] in principal.teams


def reverses_as_caller(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    return request.actor_id == principal.id


def agent_actions(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    return self_employee(principal, request, app)


def supervisor_actions(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    """Their own or their teams' actions, or the pending list of what waits for them."""
    if request.employee_id:
        return self_or_team_employee(principal, request, app)
    from .convert import state_filter

    return state_filter(request.state) == PENDING_APPROVAL and request.approver_id == principal.id


def team_or_team_employee(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    """KPIs of one of the caller's teams, or of themself or an employee of their teams."""
    if request.employee_id:
        return self_or_team_employee(principal, request, app)
    return team_in_request(principal, request, app)


# ---------------------------------------------------------------------------- the table

READERS = {AUDITOR: anything, ADMIN: anything}

#: Full method name -> {role: scope}. Every RPC is listed; a test fails if one is missing.
RULES: dict[str, dict[str, Scope]] = {
    "/leeway.v1.BudgetService/OpenBudget": {ADMIN: anything},
    "/leeway.v1.BudgetService/GetBudget": {
        AGENT: self_employee,
        SUPERVISOR: self_or_team_employee,
        CRM: anything,
        **READERS,
    },
    "/leeway.v1.BudgetService/ListBudgets": {SUPERVISOR: team_in_request, **READERS},
    "/leeway.v1.BudgetService/UpdatePolicy": {SUPERVISOR: other_team_employee, ADMIN: anything},
    "/leeway.v1.BudgetService/CloseBudget": {ADMIN: anything},
    "/leeway.v1.ActionService/RecordAction": {AGENT: self_employee, SUPERVISOR: self_employee, CRM: anything},
    "/leeway.v1.ActionService/GetAction": {
        AGENT: own_action,
        SUPERVISOR: own_or_team_action,
        CRM: anything,
        **READERS,
    },
    "/leeway.v1.ActionService/ListActions": {AGENT: agent_actions, SUPERVISOR: supervisor_actions, **READERS},
    "/leeway.v1.ActionService/ApproveAction": {SUPERVISOR: approver_is_caller},
    "/leeway.v1.ActionService/DenyAction": {SUPERVISOR: approver_is_caller},
    "/leeway.v1.ActionService/ReverseAction": {SUPERVISOR: reverses_team_action_as_caller, ADMIN: reverses_as_caller},
    "/leeway.v1.ActionService/DocumentWin": {AGENT: own_action, SUPERVISOR: own_or_team_action, CRM: anything},
    "/leeway.v1.TeamService/SetTeamCap": {ADMIN: anything},
    "/leeway.v1.TeamService/GetTeam": {SUPERVISOR: team_in_request, **READERS},
    "/leeway.v1.TeamService/SetCustomerCap": {ADMIN: anything},
    "/leeway.v1.TeamService/GetCustomerUsage": {SUPERVISOR: anything, CRM: anything, **READERS},
    "/leeway.v1.AuditService/StreamEvents": {**READERS},
    "/leeway.v1.AuditService/VerifyIntegrity": {**READERS},
    "/leeway.v1.AuditService/GetAuditTrail": {AGENT: self_employee, SUPERVISOR: self_or_team_employee, **READERS},
    "/leeway.v1.InsightsService/GetKpis": {AGENT: self_employee, SUPERVISOR: team_or_team_employee, **READERS},
    # Wins are documented so that everyone learns from them: every role reads the celebration feed.
    "/leeway.v1.InsightsService/ListWins": {AGENT: anything, SUPERVISOR: anything, CRM: anything, **READERS},
}


def check(principal: Principal, method: str, request: Any, app: LeewayApplication) -> None:
    """Raises PermissionDenied unless one of the caller's roles may call ``method`` with ``request``."""
    rules = RULES.get(method, {})
    scopes = [scope for role, scope in rules.items() if principal.has(role)]
    denied = PermissionDenied(
        f"{principal.id} may not call {method.rsplit('/', 1)[-1]} for this request",
        reason=Reason.PERMISSION_DENIED,
        metadata={"method": method, "principal": principal.id},
    )
    if not scopes:
        raise denied
    for scope in scopes:
        try:
            if scope(principal, request, app):
                return
        except NotFound:
            continue  # the same answer whether or not the resource exists
    raise denied


# ---------------------------------------------------------------------------- authentication of one call


def authenticate_call(authenticator: Authenticator, peer: str, metadata: Any) -> Principal:
    """The authentication step of a guarded call (any transport; ``peer`` is ``context.peer()``), in this order:

    1. a peer over its failed-authentication limit (``authenticator.failures``) is refused before any credential
       is looked at: RESOURCE_EXHAUSTED / TOO_MANY_AUTH_FAILURES with QuotaFailure (subject ``peer:<address>``)
       and RetryInfo (the wait). RESOURCE_EXHAUSTED rather than UNAUTHENTICATED: nothing about the credentials
       was decided, and a caller whose credentials are good must not be told they are bad; it is gRPC's code
       for "slow down", and RetryInfo says when to come back;
    2. the credentials are checked (exactly one; ``Authenticator.authenticate``);
    3. a failure counts against the peer and is UNAUTHENTICATED with the authenticator's reason.

    A success costs one lookup (none while no peer has failed) and resets nothing. Raises LeewayError.
    """
    wait = authenticator.failures.wait(peer)
    if wait > 0:
        raise ResourceExhausted(
            f"too many failed authentications from this address; retry in {wait:.2f} s",
            subject=f"peer:{peer_address(peer)}",
            retry_after=wait,
            reason=Reason.TOO_MANY_AUTH_FAILURES,
        )
    try:
        return authenticator.authenticate(metadata)
    except AuthenticationError as error:
        authenticator.failures.failed(peer)
        raise Unauthenticated(str(error), reason=error.reason) from None


# ---------------------------------------------------------------------------- the interceptor


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates (when required), rate-limits per principal, clamps deadlines and applies ``RULES``."""

    def __init__(
        self,
        app: LeewayApplication,
        authenticator: Authenticator,
        *,
        required: bool,
        reflection: bool,
        limiter: RateLimiter,
        max_deadline_seconds: float,
    ):
        self.app = app
        self.authenticator = authenticator
        self.required = required
        self.open_methods = OPEN_METHODS | (REFLECTION_METHODS if reflection else set())
        self.limiter = limiter
        self.max_deadline = max_deadline_seconds

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or method in self.open_methods:
            return handler
        metadata = tuple(details.invocation_metadata or ())
        deserializer = _tolerant(handler.request_deserializer)
        if handler.request_streaming or handler.response_streaming:
            behavior = handler.unary_stream if not handler.request_streaming else None
            if behavior is None:  # no Leeway RPC streams requests; refuse rather than let one through unchecked
                return _refusal(handler, PermissionDenied("streaming requests are not allowed", reason=Reason.PERMISSION_DENIED))

            def guarded_stream(request: Any, context: grpc.ServicerContext) -> Any:
                _refuse_undecodable(request, context)
                tokens = self._admit(method, metadata, request, context)
                try:
                    yield from behavior(request, context)
                finally:
                    _reset(tokens)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            _refuse_undecodable(request, context)
            tokens = self._admit(method, metadata, request, context)
            try:
                return handler.unary_unary(request, context)
            finally:
                _reset(tokens)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )

    def _admit(self, method: str, metadata: Any, request: Any, context: grpc.ServicerContext) -> tuple[Any, Any]:
        """Authenticates and authorizes the call, or aborts it; returns context-variable tokens to reset."""
        principal = ANONYMOUS
        peer = context.peer()
        try:
            if self.required:
                principal = authenticate_call(self.authenticator, peer, metadata)
            # The limit is per authenticated principal; without authentication there is nobody to tell apart.
            wait = self.limiter.acquire(principal.id) if self.required else 0.0
            if wait > 0:
                raise ResourceExhausted(
                    f"rate limit of {self.limiter.rate:g} calls per second exceeded; retry in {wait:.2f} s",
                    subject=f"principal:{principal.id}",
                    retry_after=wait,
                )
            if self.required:
                check(principal, method, request, self.app)
            elif method not in RULES:
                raise PermissionDenied(f"{method} is not an allowed method", reason=Reason.PERMISSION_DENIED)
        except LeewayError as error:
            code, status = status_for(error)
            log.info(
                "rpc.refused", method=method, principal=principal.id, peer=peer, code=code.name, reason=error.reason
            )
            abort(context, status, correlation_id.get())
        remaining = context.time_remaining()
        budget = self.max_deadline if remaining is None else min(remaining, self.max_deadline)
        return current_principal.set(principal), current_deadline.set(time.monotonic() + budget)


class _Undecodable:
    """Stands in for a request whose bytes are not a protobuf of the request message."""


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpcio answers bytes that do not parse with a bare INTERNAL before any servicer runs; this lets the call
    through as _Undecodable so that it is refused with INVALID_ARGUMENT and an ErrorInfo like any bad input."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure is the caller's malformed request
            return _Undecodable()

    return parse


def _refuse_undecodable(request: Any, context: grpc.ServicerContext) -> None:
    if isinstance(request, _Undecodable):
        error = InvalidArgument(
            [FieldViolation("request", "is not a valid serialized message of the request type")],
            reason=Reason.MALFORMED_REQUEST,
        )
        log.info("rpc.refused", reason=error.reason, code="INVALID_ARGUMENT", peer=context.peer())
        abort(context, status_for(error)[1], correlation_id.get())


def _reset(tokens: tuple[Any, Any]) -> None:
    current_principal.reset(tokens[0])
    current_deadline.reset(tokens[1])


def _refusal(handler: Any, error: LeewayError) -> Any:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        code, status = status_for(error)
        log.info("rpc.refused", reason=error.reason, code=code.name, peer=context.peer())
        abort(context, status)

    return grpc.stream_stream_rpc_method_handler(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
