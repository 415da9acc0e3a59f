"""Issue 19 end to end, through the Python client against a real server on SQLite and PostgreSQL: the status and
details of each new boundary (the hold ceiling, split actions, approvers' authority, policy sanity), the issue's
reproductions, and the new policy parts on the wire. Rules, messages and metadata are pinned by
tests/unit/test_rules_bounds.py and test_policy_rules.py; exactness under concurrency on the application by
tests/integration/test_bounds_application.py."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import grpc
from leeway.v1 import action_pb2
from leeway_client import FailedPreconditionError, InvalidArgumentError, LeewayError, RefundDetails

from .helpers import amount, expect_error, fields, policy

PENDING = action_pb2.Action.STATE_PENDING_APPROVAL
RECORDED = action_pb2.Action.STATE_RECORDED
APPROVED = action_pb2.Action.STATE_APPROVED


def refund(client, emp, cust, value, **kwargs):
    return client.record_action(emp, cust, value, "EUR", RefundDetails(order_id="o-1"), reason="goodwill", **kwargs)


def violation_types(error: LeewayError) -> list[str]:
    return [kind for kind, _, _ in error.precondition_violations]


def test_holds_stop_at_max_held_even_when_32_clients_spend_at_once(client, uid):
    """The issue's reproduction: 32 clients spending 7.33 at once on a 100 budget in approval mode (96 calls) left
    83 pending, 608.39 held. Now at most one allowance waits; the rest is refused MAX_HELD_EXCEEDED."""
    emp, sup = uid("emp"), uid("sup")
    client.open_budget(emp, uid("team"), policy("100", escalate_to=[sup], approval_timeout=timedelta(hours=1)))

    def spend(n: int):
        try:
            return refund(client, emp, uid("cust"), "7.33").action.state
        except FailedPreconditionError as error:
            return error.reason

    with ThreadPoolExecutor(32) as pool:
        outcomes = Counter(pool.map(spend, range(96)))
    assert outcomes == {RECORDED: 13, PENDING: 13, "MAX_HELD_EXCEEDED": 70}
    budget = client.get_budget(emp)
    assert (amount(budget.spent), amount(budget.held), amount(budget.remaining)) == (
        Decimal("95.29"), Decimal("95.29"), Decimal("-90.58"),
    )

    error = expect_error(FailedPreconditionError, "MAX_HELD_EXCEEDED", lambda: refund(client, emp, uid("cust"), "5"))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert violation_types(error) == ["MAX_HELD", "PERIOD_ALLOWANCE"]
    assert error.metadata["exceeded"] == "MAX_HELD_EXCEEDED,BUDGET_EXHAUSTED"
    assert (error.metadata["max_held"], error.metadata["held"], error.metadata["ceiling"]) == ("100", "95.29", "200")


def test_a_manager_may_let_more_wait(client, uid):
    emp, sup = uid("emp"), uid("sup")
    opened = client.open_budget(emp, uid("team"), policy("100", per_action_limit="40", escalate_to=[sup],
                                                             max_held="250"))
    assert amount(opened.policy.escalation.max_held) == 250
    assert refund(client, emp, uid("cust"), "240").action.state == PENDING
    expect_error(FailedPreconditionError, "MAX_HELD_EXCEEDED", lambda: refund(client, emp, uid("cust"), "11"))


def test_two_99_refunds_on_one_case_are_a_split(client, uid):
    """The issue's reproduction: two 99 refunds for the same customer and case both passed a 100 limit."""
    emp, guest = uid("emp"), uid("guest")
    client.open_budget(emp, uid("team"), policy("1000", per_action_limit="100"))
    assert refund(client, emp, guest, "99", case_id="4711").action.state == RECORDED
    error = expect_error(FailedPreconditionError, "SPLIT_ACTION_LIMIT_EXCEEDED",
                         lambda: refund(client, emp, guest, "99", case_id="4711"))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.precondition_violations[0][:2] == ("SPLIT_ACTION_LIMIT", f"budgets/{emp}/cases/4711")
    assert (error.metadata["case_id"], error.metadata["earlier"], error.metadata["window"]) == ("4711", "99", "24 hours")
    # Another case, or none, is another problem; the opt-in counts the customer's actions too.
    assert refund(client, emp, guest, "99", case_id="4712").action.state == RECORDED
    assert refund(client, emp, guest, "99").action.state == RECORDED
    client.update_policy(emp, policy("1000", per_action_limit="100", split_same_customer=True,
                                     split_window=timedelta(hours=2)))
    assert client.get_budget(emp).policy.split_detection.window.ToTimedelta() == timedelta(hours=2)
    refund(client, emp, guest, "60")  # counted from the opt-in on
    error = expect_error(FailedPreconditionError, "SPLIT_ACTION_LIMIT_EXCEEDED", lambda: refund(client, emp, guest, "41"))
    assert error.metadata["customer_id"] == guest


def test_a_split_waits_for_approval_like_any_limit(client, uid):
    emp, sup = uid("emp"), uid("sup")
    client.open_budget(emp, uid("team"), policy("1000", per_action_limit="100", escalate_to=[sup]))
    refund(client, emp, uid("guest"), "99", case_id="c-1")
    second = refund(client, emp, uid("guest"), "99", case_id="c-1").action
    assert second.state == PENDING and list(second.escalation_reasons) == ["SPLIT_ACTION_LIMIT_EXCEEDED"]


def test_an_approver_beyond_their_authority_is_refused_and_another_approves(client, uid):
    emp, lead, manager = uid("emp"), uid("lead"), uid("manager")
    team = uid("team")
    opened = client.open_budget(lead, team, policy("500", approval_per_action="80", approval_per_period="100"))
    assert amount(opened.policy.approval_limits.per_action) == 80
    client.open_budget(emp, team, policy("1000", per_action_limit="40", escalate_to=[lead, manager]))
    big = refund(client, emp, uid("cust"), "99").action
    small = refund(client, emp, uid("cust"), "60").action
    other = refund(client, emp, uid("cust"), "50").action
    error = expect_error(FailedPreconditionError, "APPROVAL_LIMIT_EXCEEDED", lambda: client.approve_action(big.action_id, lead))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.precondition_violations[0][:2] == ("APPROVAL_LIMITS", f"budgets/{lead}")
    assert (error.metadata["per_action"], error.metadata["approved"]) == ("80", "0")
    assert client.approve_action(small.action_id, lead).action.state == APPROVED  # 60 of the lead's 100 a month
    error = expect_error(FailedPreconditionError, "APPROVAL_LIMIT_EXCEEDED",
                         lambda: client.approve_action(other.action_id, lead))
    assert error.metadata["approved"] == "60"
    # The actions keep waiting for the manager (no limits of their own): the next level approves.
    assert client.get_action(big.action_id).state == PENDING
    assert client.approve_action(big.action_id, manager).action.state == APPROVED
    assert client.deny_action(other.action_id, lead).action.state == action_pb2.Action.STATE_DENIED
    # The approval under limits is in the lead's own budget (log and audit trail); the refused ones are not.
    given = [e for e in client.iter_audit_trail(employee_id=lead) if e.event_type == "Budget.ApprovalGiven"]
    assert [(e.action_id, e.actor, e.summary) for e in given] == [
        (small.action_id, "anonymous", f"approved {emp}'s action {small.action_id} (60 EUR) under their own approval "
                                       "limits")
    ]


def test_a_policy_may_not_name_its_employee_as_approver(client, uid):
    emp, sup, team = uid("emp"), uid("sup"), uid("team")
    error = expect_error(InvalidArgumentError, "SELF_APPROVER_NOT_ALLOWED",
                         lambda: client.open_budget(emp, team, policy("100", escalate_to=[sup, emp])))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(error) == {"policy.escalation.approver_ids[1]"}
    client.open_budget(emp, team, policy("100", escalate_to=[sup]))
    expect_error(InvalidArgumentError, "SELF_APPROVER_NOT_ALLOWED",
                 lambda: client.update_policy(emp, policy("100", escalate_to=[emp])))
    assert client.get_budget(emp).policy_version == 1


def test_a_role_alone_is_no_possible_approver_without_authentication(client, uid):
    """This server runs without authentication: nobody holds a role (with it, a role is enough: test_security)."""
    emp, team = uid("emp"), uid("team")
    error = expect_error(InvalidArgumentError, "NO_POSSIBLE_APPROVER",
                         lambda: client.open_budget(emp, team, policy("100", approver_role="duty-manager")))
    assert fields(error) == {"policy.escalation.approver_role"}
    client.open_budget(emp, team, policy("100", approver_role="duty-manager", escalate_to=[uid("sup")]))
    expect_error(InvalidArgumentError, "NO_POSSIBLE_APPROVER",
                 lambda: client.update_policy(emp, policy("100", approver_role="duty-manager")))
