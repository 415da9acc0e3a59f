"""The employee life cycle end to end (issue 19), through a real `leeway serve` and the Python client: CloseBudget
decides the holds (they are no longer listed to their approver, and ApproveAction gives a clear precondition
failure), ReopenBudget, MoveEmployee, and their refusals."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from leeway.v1 import action_pb2, budget_pb2
from leeway_client import FailedPreconditionError, InvalidArgumentError, NotFoundError, RefundDetails, make_cap

from .helpers import amount, expect_error, fields, policy

PENDING = action_pb2.Action.STATE_PENDING_APPROVAL
DENIED = action_pb2.Action.STATE_DENIED


def refund(client, employee: str, value: str, customer: str = "cust-1"):
    return client.record_action(employee, customer, Decimal(value), "EUR", RefundDetails(order_id="o-1"), reason="x")


def test_closing_decides_the_holds_and_an_approval_finds_them_decided(server, client, uid):
    from .test_operations import sample, scrape

    emp, boss = uid("emp"), uid("boss")
    client.open_budget(emp, uid("team"), policy("500", per_action_limit="50", escalate_to=[boss],
                                                approval_timeout=timedelta(hours=1)))
    held = refund(client, emp, "60").action
    assert held.state == PENDING
    assert [a.action_id for a in client.iter_actions(state="PENDING_APPROVAL", approver_id=boss)] == [held.action_id]
    denied_before = sample(scrape(server.metrics_url()), "leeway_action_decisions_total", outcome="denied")

    closed = client.close_budget(emp, "left the company")

    assert closed.state == budget_pb2.Budget.STATE_CLOSED
    assert amount(closed.held) == 0 and closed.pending_action_count == 0
    assert list(client.iter_actions(state="PENDING_APPROVAL", approver_id=boss)) == []
    action = client.get_action(held.action_id)
    assert action.state == DENIED
    assert (action.decision.approver_id, action.decision.note) == ("leeway", "budget closed: left the company")
    error = expect_error(FailedPreconditionError, "ACTION_ALREADY_DECIDED",
                         lambda: client.approve_action(held.action_id, boss))
    assert error.metadata == {"outcome": "DENIED", "decided_by": "leeway"}
    assert error.precondition_violations == [("ACTION_STATE", f"actions/{held.action_id}", "action is DENIED")]
    denied = sample(scrape(server.metrics_url()), "leeway_action_decisions_total", outcome="denied")
    assert denied == denied_before + 1


def test_reopen_a_closed_budget(client, uid):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy("100"))
    refund(client, emp, "30")
    client.close_budget(emp, "parental leave")
    expect_error(FailedPreconditionError, "BUDGET_CLOSED", lambda: refund(client, emp, "1"))

    reopened = client.reopen_budget(emp, "back from leave")

    assert reopened.state == budget_pb2.Budget.STATE_OPEN
    assert not reopened.HasField("close_time") and reopened.close_reason == ""
    assert amount(refund(client, emp, "5").budget.spent) == 35
    error = expect_error(FailedPreconditionError, "BUDGET_NOT_CLOSED", lambda: client.reopen_budget(emp, "again"))
    assert error.precondition_violations == [("BUDGET_STATE", f"budgets/{emp}", "budget is open")]
    expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.reopen_budget(uid("nobody"), "x"))
    bad = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.reopen_budget(emp, ""))
    assert fields(bad) == {"reason"}


def test_move_an_employee_to_another_team(client, uid):
    emp, boss, old, new = uid("emp"), uid("boss"), uid("old"), uid("new")
    client.set_team_cap(old, make_cap("1000", "EUR"))
    client.set_team_cap(new, make_cap("100", "EUR"))
    client.open_budget(emp, old, policy("500", per_action_limit="50", escalate_to=[boss],
                                        approval_timeout=timedelta(hours=1)))
    refund(client, emp, "30")
    waiting = refund(client, emp, "60").action

    moved = client.move_employee(emp, new, reason="reorganisation")

    assert moved.team_id == new and amount(moved.spent) == 30
    assert [b.employee_id for b in client.iter_budgets(new)] == [emp]
    assert list(client.iter_budgets(old)) == []
    assert (client.get_team(old).member_count, client.get_team(new).member_count) == (0, 1)
    after = refund(client, emp, "20").action
    assert after.team_id == new
    client.approve_action(waiting.action_id, boss)
    assert client.get_action(waiting.action_id).team_id == old
    assert amount(client.get_team(old).spent) == 90, "the approval counts for the team it was requested in"
    assert amount(client.get_team(new).spent) == 20
    capped = expect_error(FailedPreconditionError, "TEAM_CAP_EXCEEDED", lambda: refund(client, emp, "81"))
    assert capped.metadata["team_id"] == new

    same = expect_error(FailedPreconditionError, "ALREADY_IN_TEAM", lambda: client.move_employee(emp, new))
    assert same.metadata == {"employee_id": emp, "team_id": new}
    bad = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.move_employee(emp, "no such team!"))
    assert fields(bad) == {"team_id"}
    expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.move_employee(uid("nobody"), new))
    client.close_budget(emp, "left")
    expect_error(FailedPreconditionError, "BUDGET_CLOSED", lambda: client.move_employee(emp, old))
