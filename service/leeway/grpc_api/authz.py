"""Who may call what: the one method-to-permission table (the interceptor that enforces it is in interceptors.py).

Every RPC of every Leeway service has a row in ``RULES``: the roles that may call it and, per role, the scope
that must hold for the request (``anything``, the caller's own budget, a budget of one of the caller's teams
...). A method without a row is refused. Health checks are open; reflection is open when it is enabled.

Authentication failures are UNAUTHENTICATED; a peer with too many of them is refused before its credentials
are looked at (``authenticate_call``). A known caller without permission gets PERMISSION_DENIED, and for scoped
roles (agent, supervisor) the answer is the same whether or not the resource exists. Every refusal is logged
(``rpc.refused``) with the caller's ``peer``. Permission is
checked at the resource (AIP-211): a scope that names a resource reads it, and a resource that does not exist is
refused exactly like one the caller may not touch, before anything says whether it exists or what state it is in.

``check`` runs before the handler; ``visible`` runs on its response and clears what the caller may not read.
Both are synchronous (they read the application) and are what any interceptor calls.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import structlog
from leeway.v1 import budget_pb2

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
    peer_address,
)
from ..domain.errors import NotFound, PermissionDenied, ResourceExhausted, Unauthenticated
from ..domain.views import PENDING_APPROVAL
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


def may_decide(principal: Principal, action: Any) -> bool:
    """The action's policy names the caller as an approver, or its approver role is one of the caller's roles in
    the action's team (in any team for an admin). The domain judges the same (``command_rules.check_approver``)."""
    if principal.id in action.approver_ids:
        return True
    role = action.approver_role
    return bool(role) and principal.has(role) and (action.team_id in principal.teams or principal.has(ADMIN))


def decides_as_caller(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    """Decides as themself an action they may decide (``may_decide``), or one they may read anyway (their own or
    their teams'), where the domain's refusal (their own, not an approver, not pending ...) tells them nothing new.
    Any other action, and one that does not exist, gets the same PERMISSION_DENIED."""
    if not approver_is_caller(principal, request, app):
        return False
    action = app.get_action(request.action_id)
    return action.employee_id == principal.id or action.team_id in principal.teams or may_decide(principal, action)


def reverses_team_action_as_caller(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    return request.actor_id == principal.id and _action(app, request.action_id)[1] in principal.teams


def reverses_as_caller(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    return request.actor_id == principal.id


def agent_actions(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    return self_employee(principal, request, app)


def supervisor_actions(principal: Principal, request: Any, app: LeewayApplication) -> bool:
    """Their own or their teams' actions, what they decided themself, or the pending list of what waits for
    them."""
    if request.employee_id:
        return self_or_team_employee(principal, request, app)
    if request.decided_by:
        return bool(request.decided_by == principal.id)
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
    "/leeway.v1.BudgetService/ReopenBudget": {ADMIN: anything},
    "/leeway.v1.BudgetService/MoveEmployee": {ADMIN: anything},
    "/leeway.v1.ActionService/RecordAction": {AGENT: self_employee, SUPERVISOR: self_employee, CRM: anything},
    "/leeway.v1.ActionService/GetAction": {
        AGENT: own_action,
        SUPERVISOR: own_or_team_action,
        CRM: anything,
        **READERS,
    },
    "/leeway.v1.ActionService/ListActions": {AGENT: agent_actions, SUPERVISOR: supervisor_actions, **READERS},
    "/leeway.v1.ActionService/ApproveAction": {SUPERVISOR: decides_as_caller},
    "/leeway.v1.ActionService/DenyAction": {SUPERVISOR: decides_as_caller},
    "/leeway.v1.ActionService/ReverseAction": {SUPERVISOR: reverses_team_action_as_caller, ADMIN: reverses_as_caller},
    "/leeway.v1.ActionService/DocumentWin": {AGENT: own_action, SUPERVISOR: own_or_team_action, CRM: anything},
    "/leeway.v1.TeamService/SetTeamCap": {ADMIN: anything},
    "/leeway.v1.TeamService/GetTeam": {SUPERVISOR: team_in_request, **READERS},
    "/leeway.v1.TeamService/SetCustomerCap": {ADMIN: anything},
    "/leeway.v1.TeamService/GetCustomerUsage": {SUPERVISOR: anything, CRM: anything, **READERS},
    "/leeway.v1.AuditService/StreamEvents": {**READERS},
    "/leeway.v1.AuditService/VerifyIntegrity": {**READERS},
    "/leeway.v1.AuditService/GetAuditTrail": {AGENT: self_employee, SUPERVISOR: self_or_team_employee, **READERS},
    # Issue 22: data subjects' rights are the admin's (a privacy officer holds the admin role).
    "/leeway.v1.PrivacyService/EraseCustomer": {ADMIN: anything},
    "/leeway.v1.PrivacyService/EraseEmployee": {ADMIN: anything},
    "/leeway.v1.PrivacyService/ExportCustomerData": {ADMIN: anything},
    "/leeway.v1.PrivacyService/RedactLegacyData": {ADMIN: anything},
    "/leeway.v1.InsightsService/GetKpis": {AGENT: self_employee, SUPERVISOR: team_or_team_employee, **READERS},
    # A series is the same figures as GetKpis, bucket by bucket: the same scope.
    "/leeway.v1.InsightsService/GetKpiSeries": {AGENT: self_employee, SUPERVISOR: team_or_team_employee, **READERS},
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


# ---------------------------------------------------------------------------- what a response may carry

GET_BUDGET = "/leeway.v1.BudgetService/GetBudget"
#: Methods whose own permission already covers reading the budget they answer with (no second check).
_BUDGET_READ_BY_PERMISSION = {GET_BUDGET, "/leeway.v1.BudgetService/UpdatePolicy"}


LIST_WINS = "/leeway.v1.InsightsService/ListWins"
#: Roles that read every team's wins in full (a CRM holds the customer relationship itself).
_READS_EVERY_WIN = (ADMIN, AUDITOR, CRM)


def reads_win_in_full(principal: Principal, team_id: str, employee_id: str) -> bool:
    """Whether a win's customer id and quote are the caller's to read: their own win, one of their teams', or a
    caller whose role reads every team's (``_READS_EVERY_WIN``). Everybody else sees the story, not the customer."""
    if employee_id == principal.id or team_id in principal.teams:
        return True
    return any(principal.has(role) for role in _READS_EVERY_WIN)


def visible(principal: Principal, method: str, request: Any, response: Any, app: LeewayApplication) -> Any:
    """``response`` without what the caller may not read: its ``budget`` (ApproveAction, DenyAction,
    ReverseAction, RecordAction ...) is cleared unless the caller may call GetBudget for that employee (an
    approver named by another team's policy decides the action, and sees it, but not the employee's budget);
    ListWins' wins of other teams lose their customer id and quote (``reads_win_in_full``: the feed is there to
    celebrate, not to show everybody other teams' customers). Changes ``response`` in place and returns it."""
    if method == LIST_WINS:
        for entry in response.wins:
            if not reads_win_in_full(principal, entry.team_id, entry.employee_id):
                entry.ClearField("customer_id")
                entry.win.ClearField("customer_quote")
        return response
    fields = getattr(getattr(response, "DESCRIPTOR", None), "fields_by_name", {})
    if method in _BUDGET_READ_BY_PERMISSION or "budget" not in fields or not response.HasField("budget"):
        return response
    try:
        check(principal, GET_BUDGET, budget_pb2.GetBudgetRequest(employee_id=response.budget.employee_id), app)
    except PermissionDenied:
        response.ClearField("budget")
    return response
