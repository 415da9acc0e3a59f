"""ActionService end to end: every kind, GetAction, ListActions filters and paging, and every refusal."""

from __future__ import annotations

from decimal import Decimal

import grpc
import pytest
from google.type import money_pb2
from leeway.v1 import action_pb2, action_pb2_grpc, policy_pb2
from leeway_client import (
    AlreadyExistsError,
    CreditDetails,
    FailedPreconditionError,
    GiftDetails,
    InvalidArgumentError,
    NotFoundError,
    RefundDetails,
    RuleBendDetails,
)

from .helpers import amount, expect_error, expect_raw_error, fields, policy


@pytest.fixture
def emp(client, uid):
    employee = uid("emp")
    client.open_budget(employee, uid("team"), policy("100", per_action_limit="40"))
    return employee


@pytest.fixture
def stub(channel):
    return action_pb2_grpc.ActionServiceStub(channel)


def valid_request(employee: str, customer: str, **overrides) -> action_pb2.RecordActionRequest:
    request = action_pb2.RecordActionRequest(
        employee_id=employee,
        customer_id=customer,
        amount=money_pb2.Money(currency_code="EUR", units=5),
        reason="late delivery",
        refund=action_pb2.RefundDetails(order_id="o-1"),
    )
    for key, value in overrides.items():
        if isinstance(value, (money_pb2.Money, action_pb2.GiftDetails, action_pb2.RuleBendDetails)):
            getattr(request, key).CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


def test_record_each_kind_and_get_action(client, emp, uid):
    cust = uid("cust")
    kinds = [
        ("12.50", RefundDetails(order_id="ord-1"), policy_pb2.ACTION_KIND_REFUND, "refund"),
        ("10", CreditDetails(account_ref="acc-9"), policy_pb2.ACTION_KIND_CREDIT, "credit"),
        ("0", RuleBendDetails(rule_code="LATE_RETURN", description="30 days late"), policy_pb2.ACTION_KIND_RULE_BEND, "rule_bend"),
        ("7.25", GiftDetails(gift_type="flowers", note="so sorry"), policy_pb2.ACTION_KIND_GIFT, "gift"),
    ]
    spent = Decimal(0)
    last_version = 1
    for value, details, kind, oneof in kinds:
        response = client.record_action(emp, cust, value, "EUR", details, reason=f"because {oneof}", case_id="case-1")
        action, budget = response.action, response.budget
        spent += Decimal(value)
        assert action.action_id and action.kind == kind and action.WhichOneof("details") == oneof
        assert getattr(action, oneof) == details
        assert amount(action.amount) == Decimal(value) and action.amount.currency_code == "EUR"
        assert action.employee_id == emp and action.customer_id == cust and action.case_id == "case-1"
        assert action.state == action_pb2.Action.STATE_RECORDED and action.policy_version == 1
        assert action.request_id and action.budget_version == budget.version == last_version + 1
        last_version = budget.version
        assert amount(budget.spent) == spent and amount(budget.remaining) == 100 - spent
        assert client.get_action(action.action_id) == action
    budget = client.get_budget(emp)
    assert budget.period_action_count == 4 and amount(budget.spent) == Decimal("29.75")


def test_list_actions_filters_and_paging(client, uid):
    emp_a, emp_b, cust_x, cust_y = uid("empA"), uid("empB"), uid("cust-x"), uid("cust-y")
    for e in (emp_a, emp_b):
        client.open_budget(e, uid("team"), policy("1000"))
    recorded = []
    plan = [
        (emp_a, cust_x, RefundDetails(order_id="o1")),
        (emp_a, cust_y, GiftDetails(gift_type="voucher")),
        (emp_b, cust_x, RefundDetails(order_id="o2")),
        (emp_a, cust_x, CreditDetails(account_ref="a1")),
        (emp_b, cust_y, RefundDetails(order_id="o3")),
        (emp_a, cust_x, RefundDetails(order_id="o4")),
    ]
    for e, c, d in plan:
        recorded.append(client.record_action(e, c, "1", "EUR", d, reason="r").action)

    def ids(actions):
        return [a.action_id for a in actions]

    by_a = [a for a in recorded if a.employee_id == emp_a]
    assert ids(client.list_actions(employee_id=emp_a).actions) == ids(by_a)
    assert ids(client.list_actions(customer_id=cust_x).actions) == ids(a for a in recorded if a.customer_id == cust_x)
    # Any spelling of a customer id finds the customer (ids are compared as keys: trimmed and case-folded).
    assert ids(client.list_actions(customer_id=f" {cust_x.upper()}").actions) == ids(
        a for a in recorded if a.customer_id == cust_x
    )
    assert ids(client.list_actions(employee_id=emp_a, customer_id=cust_x).actions) == ids(
        a for a in by_a if a.customer_id == cust_x
    )
    refunds = client.list_actions(employee_id=emp_a, kind="REFUND").actions
    assert ids(refunds) == ids(a for a in by_a if a.kind == policy_pb2.ACTION_KIND_REFUND)
    assert len(refunds) == 2
    assert ids(client.list_actions(customer_id=cust_y, kind="GIFT").actions) == [recorded[1].action_id]

    # Paging: 4 actions of emp_a, page size 3 -> two pages; the token carries on where the last page ended.
    first = client.list_actions(employee_id=emp_a, page_size=3)
    assert len(first.actions) == 3 and first.next_page_token
    second = client.list_actions(employee_id=emp_a, page_size=3, page_token=first.next_page_token)
    assert len(second.actions) == 1 and not second.next_page_token
    assert ids(first.actions) + ids(second.actions) == ids(by_a)
    assert ids(client.iter_actions(customer_id=cust_x, page_size=1)) == ids(a for a in recorded if a.customer_id == cust_x)
    # A token is bound to its filters.
    error = expect_error(
        InvalidArgumentError,
        "INVALID_PAGE_TOKEN",
        lambda: client.list_actions(employee_id=emp_b, page_size=3, page_token=first.next_page_token),
    )
    assert "page_token" in fields(error)


def test_list_actions_invalid(client, uid):
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.list_actions(employee_id=uid("e"), page_size=-1))
    assert "page_size" in fields(error)
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.list_actions())
    assert error.field_violations


def test_get_action_not_found(client, emp, uid):
    action = client.record_action(emp, uid("cust"), "1", "EUR", RefundDetails(order_id="o"), reason="r").action
    budget_hex, version = action.action_id.rsplit("_", 1)
    missing = f"{budget_hex}_{int(version) + 100}"
    error = expect_error(NotFoundError, "ACTION_NOT_FOUND", lambda: client.get_action(missing))
    assert error.metadata.get("resource_name", missing).endswith(missing)
    # The budget's opening event has a valid id shape but is not an action.
    expect_error(NotFoundError, "ACTION_NOT_FOUND", lambda: client.get_action(f"{budget_hex}_1"))
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.get_action("not-an-id"))
    assert "action_id" in fields(error)


def test_per_action_limit_exceeded(client, emp, uid):
    error = expect_error(
        FailedPreconditionError,
        "PER_ACTION_LIMIT_EXCEEDED",
        lambda: client.record_action(emp, uid("cust"), "40.01", "EUR", RefundDetails(order_id="o"), reason="r"),
    )
    assert error.precondition_violations and error.precondition_violations[0][0] == "PER_ACTION_LIMIT"
    assert error.metadata["limit"] == "40" and error.metadata["requested"] == "40.01"
    assert amount(client.get_budget(emp).spent) == 0


def test_budget_exhausted(client, emp, uid):
    for _ in range(2):
        client.record_action(emp, uid("cust"), "40", "EUR", GiftDetails(gift_type="wine"), reason="r")
    error = expect_error(
        FailedPreconditionError,
        "BUDGET_EXHAUSTED",
        lambda: client.record_action(emp, uid("cust"), "20.01", "EUR", GiftDetails(gift_type="wine"), reason="r"),
    )
    assert error.precondition_violations and error.precondition_violations[0][0] == "PERIOD_ALLOWANCE"
    assert error.metadata["remaining"] == "20" and error.metadata["requested"] == "20.01"
    # Exactly the remainder still fits.
    budget = client.record_action(emp, uid("cust"), "20", "EUR", GiftDetails(gift_type="wine"), reason="r").budget
    assert amount(budget.remaining) == 0
    # A free rule bend is still possible on an exhausted budget.
    budget = client.record_action(emp, uid("cust"), "0", "EUR", RuleBendDetails(rule_code="WAIVE_FEE"), reason="r").budget
    assert amount(budget.remaining) == 0 and budget.period_action_count == 4


def test_kind_not_allowed(client, uid):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy("100", allowed_kinds=["REFUND"]))
    error = expect_error(
        FailedPreconditionError,
        "KIND_NOT_ALLOWED",
        lambda: client.record_action(emp, uid("cust"), "1", "EUR", GiftDetails(gift_type="flowers"), reason="r"),
    )
    assert error.precondition_violations and error.metadata["kind"] == "GIFT"


def test_currency_mismatch(client, emp, uid):
    error = expect_error(
        FailedPreconditionError,
        "CURRENCY_MISMATCH",
        lambda: client.record_action(emp, uid("cust"), "1", "USD", RefundDetails(order_id="o"), reason="r"),
    )
    assert error.precondition_violations
    assert error.metadata["budget_currency"] == "EUR" and error.metadata["amount_currency"] == "USD"


def test_record_action_on_unknown_budget(client, uid):
    expect_error(
        NotFoundError,
        "BUDGET_NOT_FOUND",
        lambda: client.record_action(uid("ghost"), uid("cust"), "1", "EUR", RefundDetails(order_id="o"), reason="r"),
    )


def test_record_action_request_id_reused(client, emp, uid):
    rid = uid("req")
    client.record_action(emp, uid("cust"), "1", "EUR", RefundDetails(order_id="o"), reason="r", request_id=rid)
    error = expect_error(
        AlreadyExistsError,
        "REQUEST_ID_REUSED",
        lambda: client.record_action(emp, uid("cust"), "2", "EUR", RefundDetails(order_id="o"), reason="r", request_id=rid),
    )
    assert error.metadata.get("request_id") == rid
    assert client.get_budget(emp).period_action_count == 1


INVALID = {
    "negative amount": (dict(amount=money_pb2.Money(currency_code="EUR", units=-5)), "amount"),
    "zero gift": (
        dict(amount=money_pb2.Money(currency_code="EUR"), gift=action_pb2.GiftDetails(gift_type="flowers")),
        "amount",
    ),
    "missing employee_id": (dict(employee_id=""), "employee_id"),
    "unknown currency": (dict(amount=money_pb2.Money(currency_code="ZZZ", units=5)), "amount.currency_code"),
    "too many decimals": (dict(amount=money_pb2.Money(currency_code="EUR", units=5, nanos=1_000_000)), "amount"),
    "JPY decimals": (dict(amount=money_pb2.Money(currency_code="JPY", units=5, nanos=500_000_000)), "amount"),
    "nanos out of range": (dict(amount=money_pb2.Money(currency_code="EUR", units=1, nanos=1_000_000_000)), "amount.nanos"),
    "nanos sign mismatch": (dict(amount=money_pb2.Money(currency_code="EUR", units=1, nanos=-500_000_000)), "amount.nanos"),
    "missing amount": (dict(), "amount"),
    "kind mismatches details": (dict(kind=policy_pb2.ACTION_KIND_GIFT), "kind"),
    "oversized reason": (dict(reason="x" * 3000), "reason"),
    "missing reason": (dict(reason=""), "reason"),
    "bad rule code": (dict(rule_bend=action_pb2.RuleBendDetails(rule_code="no spaces allowed")), "rule_bend.rule_code"),
    "bad customer id": (dict(customer_id="-starts-with-dash"), "customer_id"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_record_action_invalid_argument(stub, client, emp, uid, case):
    overrides, field = INVALID[case]
    request = valid_request(emp, uid("cust"), request_id=uid("req"), **overrides)
    if case == "missing amount":
        request.ClearField("amount")
    error = expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: stub.RecordAction(request, timeout=10)
    )
    assert isinstance(error, InvalidArgumentError)
    assert field in fields(error), f"{case}: expected a violation of {field}, got {error.field_violations}"
    assert all(description for _, description in error.field_violations)
    assert client.get_budget(emp).period_action_count == 0, "an invalid request records nothing"


def test_record_action_details_missing(stub, emp, uid):
    request = valid_request(emp, uid("cust"))
    request.ClearField("refund")
    error = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: stub.RecordAction(request, timeout=10))
    assert "details" in fields(error)


def test_record_action_kind_matching_details_is_fine(stub, emp, uid):
    request = valid_request(emp, uid("cust"), kind=policy_pb2.ACTION_KIND_REFUND)
    response = stub.RecordAction(request, timeout=10)
    assert response.action.kind == policy_pb2.ACTION_KIND_REFUND


def test_invalid_request_reports_every_problem(stub, uid):
    request = valid_request("", "", reason="y" * 3000, amount=money_pb2.Money(currency_code="EUR", units=-1))
    error = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: stub.RecordAction(request, timeout=10))
    assert {"employee_id", "customer_id", "reason", "amount"} <= fields(error)


def test_occur_time(client, emp, uid):
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    past = (now - timedelta(days=29)).replace(microsecond=0)
    action = client.record_action(emp, uid("cust"), "1", "EUR", RefundDetails(order_id="o"), reason="r", occur_time=past).action
    assert action.occur_time.ToDatetime(tzinfo=timezone.utc) == past
    assert action.record_time.ToDatetime(tzinfo=timezone.utc) > past
    for when, description in [
        (now + timedelta(hours=1), "must not be more than 5 minutes in the future"),
        (datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "must not be more than 30 days in the past"),
        (now - timedelta(days=31), "must not be more than 30 days in the past"),
    ]:
        error = expect_error(
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            lambda: client.record_action(emp, uid("cust"), "1", "EUR", RefundDetails(order_id="o"), reason="r", occur_time=when),
        )
        assert error.field_violations == [("occur_time", description)]


def test_occur_time_horizon_is_a_setting(make_server, tmp_path, uid):
    from datetime import datetime, timezone

    from leeway_client import LeewayClient

    server = make_server(f"sqlite:///{tmp_path}/horizon.sqlite", {"LEEWAY_OCCUR_TIME_MAX_AGE_DAYS": "3650"})
    server.start()
    years_ago = datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with LeewayClient(server.target, timeout=10.0) as leeway:
        leeway.open_budget("ann", "desk", policy("100"))
        action = leeway.record_action("ann", "c-1", "1", "EUR", RefundDetails(order_id="o"), reason="r", occur_time=years_ago).action
    assert action.occur_time.ToDatetime(tzinfo=timezone.utc) == years_ago


def test_lowered_allowance_leaves_negative_remaining(client, emp, uid):
    client.record_action(emp, uid("cust"), "30.5", "EUR", RefundDetails(order_id="o"), reason="r")
    budget = client.update_policy(emp, policy("10"))
    assert amount(budget.remaining) == Decimal("-20.5")
    assert budget.remaining.units == -20 and budget.remaining.nanos == -500_000_000, "nanos share the sign of units"
    error = expect_error(
        FailedPreconditionError,
        "BUDGET_EXHAUSTED",
        lambda: client.record_action(emp, uid("cust"), "0.01", "EUR", RefundDetails(order_id="o"), reason="r"),
    )
    assert error.metadata["remaining"] == "-20.5"
