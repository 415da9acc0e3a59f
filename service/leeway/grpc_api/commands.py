"""Wire requests -> application commands. Problems found while translating (a malformed Money, a kind that does
not match the details) travel in the command and are reported with its own shape checks.

What the domain judges about the caller (the teams in which a policy's approver_role counts, whether an admin
decides, whose own policy bounds a supervisor's policy change) comes from the authenticated principal of the
call (``authz.current_principal``); a caller without authentication asserts nothing."""

from __future__ import annotations

from leeway.v1 import action_pb2, budget_pb2, policy_pb2, team_pb2

from ..application.commands import (
    CloseBudget,
    DecideAction,
    DocumentWin,
    MoveEmployee,
    OpenBudget,
    RecordAction,
    ReopenBudget,
    ReverseAction,
    SetCustomerCap,
    SetTeamCap,
    UpdatePolicy,
)
from ..auth import ADMIN, Principal
from ..domain.errors import FieldViolation
from ..domain.records import carried
from .authz import current_principal
from .convert import KIND_FROM_PROTO, KIND_OF_ONEOF, cap_from_proto, money_from_proto, policy_from_proto, time_from_proto


def _authenticated() -> Principal | None:
    """The caller of the current RPC if they authenticated (their roles and teams count), else None."""
    principal = current_principal.get()
    return principal if principal.method != "none" else None


def open_budget_command(request: budget_pb2.OpenBudgetRequest) -> OpenBudget:
    policy, problems = policy_from_proto(request)
    same = carried(request, "request_id", "employee_id", "team_id", "display_name")
    # Without authentication nobody holds a role: a policy's approver_role alone names no possible approver.
    roles_count = _authenticated() is not None
    return OpenBudget(**same, policy=policy, policy_problems=problems, roles_count=roles_count)


def update_policy_command(request: budget_pb2.UpdatePolicyRequest) -> UpdatePolicy:
    policy, problems = policy_from_proto(request)
    same = carried(request, "request_id", "employee_id", "expected_version")
    caller = _authenticated()
    # Anyone but an admin (a supervisor) grants under the ceiling of their own policy.
    granted_by = caller.id if caller is not None and not caller.has(ADMIN) else ""
    return UpdatePolicy(
        **same, policy=policy, policy_problems=problems, granted_by=granted_by, roles_count=caller is not None
    )


def close_budget_command(request: budget_pb2.CloseBudgetRequest) -> CloseBudget:
    return CloseBudget(**carried(request, "request_id", "employee_id", "reason"))


def reopen_budget_command(request: budget_pb2.ReopenBudgetRequest) -> ReopenBudget:
    return ReopenBudget(**carried(request, "request_id", "employee_id", "reason"))


def move_employee_command(request: budget_pb2.MoveEmployeeRequest) -> MoveEmployee:
    return MoveEmployee(**carried(request, "request_id", "employee_id", "team_id", "reason"))


def record_action_command(request: action_pb2.RecordActionRequest) -> RecordAction:
    problems: list[FieldViolation] = []
    amount = None
    if request.HasField("amount"):
        amount, bad = money_from_proto(request.amount, "amount")
        problems += bad
    occur_time = None
    if request.HasField("occur_time"):
        occur_time, bad = time_from_proto(request.occur_time, "occur_time")
        problems += bad
    oneof = request.WhichOneof("details")
    kind = KIND_OF_ONEOF.get(oneof) if oneof else None
    details: dict[str, str] = {}
    if kind is None:
        problems.append(FieldViolation("details", "one of refund, credit, rule_bend or gift is required"))
    else:
        details = {f.name: value for f, value in getattr(request, oneof).ListFields()}
    if request.kind != policy_pb2.ACTION_KIND_UNSPECIFIED:
        asked = KIND_FROM_PROTO.get(request.kind)
        if asked is None:
            problems.append(FieldViolation("kind", f"unknown action kind {request.kind}"))
        elif kind is not None and asked is not kind:
            problems.append(
                FieldViolation("kind", f"is {policy_pb2.ActionKind.Name(request.kind)} but the details are {oneof}")
            )
    return RecordAction(
        **carried(request, "request_id", "employee_id", "customer_id", "case_id", "reason"),
        kind=kind,
        amount=amount,
        details=details,
        occur_time=occur_time,
        wire_problems=tuple(problems),
    )


def decide_action_command(
    request: action_pb2.ApproveActionRequest | action_pb2.DenyActionRequest,
    *,
    approve: bool,
    roles: frozenset[str] = frozenset(),
) -> DecideAction:
    same = carried(request, "request_id", "action_id", "approver_id", "note")
    caller = _authenticated()
    teams = caller.teams if caller is not None else frozenset()
    any_team = caller is not None and caller.has(ADMIN)
    return DecideAction(
        **same, approve=approve, approver_roles=frozenset(roles), approver_teams=frozenset(teams), any_team=any_team
    )


def reverse_action_command(request: action_pb2.ReverseActionRequest) -> ReverseAction:
    return ReverseAction(**carried(request, "request_id", "action_id", "reason", "actor_id"))


def document_win_command(request: action_pb2.DocumentWinRequest) -> DocumentWin:
    return DocumentWin(**carried(request, "request_id", "action_id", "story", "customer_quote", "outcome"))


def set_team_cap_command(request: team_pb2.SetTeamCapRequest) -> SetTeamCap:
    cap, problems = cap_from_proto(request)
    return SetTeamCap(**carried(request, "request_id", "team_id"), cap=cap, cap_problems=problems)


def set_customer_cap_command(request: team_pb2.SetCustomerCapRequest) -> SetCustomerCap:
    cap, problems = cap_from_proto(request)
    return SetCustomerCap(**carried(request, "request_id", "currency_code"), cap=cap, cap_problems=problems)
