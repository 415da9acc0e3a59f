"""BudgetService end to end: OpenBudget, GetBudget, ListBudgets, UpdatePolicy, CloseBudget and their errors."""

from __future__ import annotations

from decimal import Decimal

import grpc
from leeway.v1 import budget_pb2, budget_pb2_grpc, policy_pb2
from leeway_client import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RefundDetails,
)

from builders import all_pages

from .helpers import amount, expect_error, expect_raw_error, fields, policy


def test_open_and_get_budget(client, uid):
    emp, team = uid("emp"), uid("team")
    opened = client.open_budget(
        emp, team, policy("250.50", per_action_limit="50", allowed_kinds=["GIFT", "REFUND"]), display_name="Ann"
    )
    assert opened.employee_id == emp and opened.team_id == team and opened.display_name == "Ann"
    assert opened.state == budget_pb2.Budget.STATE_OPEN
    assert opened.version == 1 and opened.policy_version == 1
    assert amount(opened.allowance) == Decimal("250.50") and opened.allowance.currency_code == "EUR"
    assert amount(opened.spent) == 0 and amount(opened.remaining) == Decimal("250.50")
    assert amount(opened.policy.per_action_limit) == 50
    assert list(opened.policy.allowed_kinds) == [policy_pb2.ACTION_KIND_REFUND, policy_pb2.ACTION_KIND_GIFT]
    assert opened.period_start.ToDatetime() < opened.period_end.ToDatetime()
    assert not opened.HasField("close_time")

    fetched = client.get_budget(emp)
    assert fetched.employee_id == emp and fetched.version == 1
    assert fetched.policy == opened.policy


def test_open_budget_twice_is_already_exists(client, uid):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy())
    error = expect_error(AlreadyExistsError, "BUDGET_ALREADY_EXISTS", lambda: client.open_budget(emp, uid("team"), policy()))
    assert emp in error.message or error.metadata


def test_get_unknown_budget_is_not_found(client, uid):
    expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.get_budget(uid("nobody")))


def test_list_budgets_pagination(client, uid):
    team = uid("team")
    opened = [client.open_budget(f"{uid('emp')}-{i}", team, policy()).employee_id for i in range(5)]
    client.open_budget(uid("other"), uid("team2"), policy())

    def fetch(token: str) -> tuple[list[str], str]:
        page = client.list_budgets(team, page_size=2, page_token=token)
        return [b.employee_id for b in page.budgets], page.next_page_token

    seen, pages = all_pages(fetch, page_size=2)
    assert seen == opened, "ListBudgets must return the team's budgets in the order they were opened"
    assert pages == 3
    assert [b.employee_id for b in client.iter_budgets(team, page_size=3)] == opened
    everything = [b.employee_id for b in client.iter_budgets(page_size=500)]
    assert set(opened) <= set(everything)


def test_list_budgets_bad_token_and_negative_page_size(client, uid):
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.list_budgets(uid("t"), page_size=-1))
    assert "page_size" in fields(error)
    error = expect_error(
        InvalidArgumentError, "INVALID_PAGE_TOKEN", lambda: client.list_budgets(uid("t"), page_token="garbage")
    )
    assert "page_token" in fields(error)


def test_update_policy_and_version_mismatch(client, uid):
    emp = uid("emp")
    opened = client.open_budget(emp, uid("team"), policy("100"))
    updated = client.update_policy(emp, policy("300", per_action_limit="20"), expected_version=opened.version)
    assert updated.policy_version == 2 and updated.version == opened.version + 1
    assert amount(updated.allowance) == 300 and amount(updated.remaining) == 300
    assert amount(updated.policy.per_action_limit) == 20

    error = expect_error(
        AbortedError, "VERSION_MISMATCH", lambda: client.update_policy(emp, policy("400"), expected_version=opened.version)
    )
    assert error.code is grpc.StatusCode.ABORTED
    assert not error.retryable
    assert client.get_budget(emp).policy_version == 2, "a refused update changes nothing"

    # Currency of a budget is fixed.
    error = expect_error(
        FailedPreconditionError, "CURRENCY_MISMATCH", lambda: client.update_policy(emp, policy("400", currency="USD"))
    )
    assert error.precondition_violations
    # Unknown budget.
    expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.update_policy(uid("ghost"), policy()))


def test_close_budget(client, uid):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy())
    closed = client.close_budget(emp, "left the company")
    assert closed.state == budget_pb2.Budget.STATE_CLOSED
    assert closed.close_reason == "left the company" and closed.HasField("close_time")
    assert client.get_budget(emp).state == budget_pb2.Budget.STATE_CLOSED

    error = expect_error(
        FailedPreconditionError,
        "BUDGET_CLOSED",
        lambda: client.record_action(emp, uid("cust"), "5", "EUR", RefundDetails(order_id="o-1"), reason="sorry"),
    )
    assert error.precondition_violations, "BUDGET_CLOSED must carry a PreconditionFailure"
    error = expect_error(FailedPreconditionError, "BUDGET_CLOSED", lambda: client.update_policy(emp, policy("5")))
    assert error.precondition_violations
    # A closed budget still exists: re-opening is refused.
    expect_error(AlreadyExistsError, "BUDGET_ALREADY_EXISTS", lambda: client.open_budget(emp, uid("team"), policy()))
    expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.close_budget(uid("ghost"), "why"))


def test_request_id_reused_for_different_budget_request(client, uid):
    emp = uid("emp")
    request_id = uid("req")
    first = client.open_budget(emp, uid("team"), policy(), request_id=request_id)
    again = client.open_budget(emp, first.team_id, policy(), request_id=request_id)
    assert again.version == first.version and again.employee_id == emp
    error = expect_error(
        AlreadyExistsError, "REQUEST_ID_REUSED", lambda: client.open_budget(uid("emp2"), uid("team"), policy(), request_id=request_id)
    )
    assert error.code is grpc.StatusCode.ALREADY_EXISTS
    # A request is (caller, method, request_id): on another method the same request_id is a new request.
    closed = client.close_budget(emp, "x", request_id=request_id)
    assert closed.state == budget_pb2.Budget.STATE_CLOSED
    assert client.close_budget(emp, "x", request_id=request_id) == closed


def test_open_budget_invalid_arguments(channel, uid):
    stub = budget_pb2_grpc.BudgetServiceStub(channel)
    request = budget_pb2.OpenBudgetRequest(employee_id="", team_id=uid("team"))
    error = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: stub.OpenBudget(request, timeout=10))
    assert {"employee_id", "policy"} <= fields(error)
    bad = policy("10")
    bad.period_allowance.currency_code = "ZZZ"
    request = budget_pb2.OpenBudgetRequest(employee_id=uid("emp"), team_id=uid("team"), policy=bad)
    error = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: stub.OpenBudget(request, timeout=10))
    assert any(f.startswith("policy.period_allowance") for f in fields(error)), error.field_violations
