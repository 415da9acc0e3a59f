"""Boundaries end to end (issue 3), through the Python client against a real server on SQLite and PostgreSQL.

One test per status mapping and wire behaviour, not one per rule: the reasons, messages and metadata of each
rule are pinned by the domain's unit tests (tests/unit), what needs the application and a real store (refusals
that write nothing, holds, expiry, reversals, caps under concurrency, request validation of every field) by
tests/integration/test_boundaries_application.py. Here: FAILED_PRECONDITION with ErrorInfo and PreconditionFailure
for a limit, the PENDING_APPROVAL flow (approve, deny, expire without a client asking), PERMISSION_DENIED for
self approval, reversals, team and organisation-wide customer caps (also under 16 concurrent clients), GetBudget
as_of, NOT_FOUND, and INVALID_ARGUMENT with BadRequest for what only the wire can send.

The organisation-wide customer cap is global to the server's database, and this module's server is shared by
all its tests: the tests that set it use customer ids of their own and remove it again (try/finally).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import money_pb2
from leeway.v1 import action_pb2, action_pb2_grpc, budget_pb2, budget_pb2_grpc, policy_pb2, team_pb2, team_pb2_grpc
from leeway_client import (
    BendableRule,
    FailedPreconditionError,
    GiftDetails,
    InvalidArgumentError,
    LeewayClient,
    LeewayError,
    NotFoundError,
    PermissionDeniedError,
    RefundDetails,
    RuleBendDetails,
    make_cap,
    to_money,
)

from .helpers import amount, expect_error, expect_raw_error, fields, policy

PENDING = action_pb2.Action.STATE_PENDING_APPROVAL
RECORDED = action_pb2.Action.STATE_RECORDED
APPROVED = action_pb2.Action.STATE_APPROVED
DENIED = action_pb2.Action.STATE_DENIED
EXPIRED = action_pb2.Action.STATE_EXPIRED
REVERSED = action_pb2.Action.STATE_REVERSED


def when(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=timezone.utc)


def refund(client, emp, cust, value, **kwargs):
    return client.record_action(emp, cust, value, "EUR", RefundDetails(order_id="o-1"), reason="goodwill", **kwargs)


def bend(client, emp, cust, code, value="0"):
    return client.record_action(emp, cust, value, "EUR", RuleBendDetails(rule_code=code), reason="exception")


def violation_types(error: LeewayError) -> list[str]:
    return [kind for kind, _, _ in error.precondition_violations]


@pytest.fixture
def sup(uid):
    """A supervisor id of this test's own (approver lists are filtered by it)."""
    return uid("sup")


@pytest.fixture
def action_stub(channel):
    return action_pb2_grpc.ActionServiceStub(channel)


@pytest.fixture
def budget_stub(channel):
    return budget_pb2_grpc.BudgetServiceStub(channel)


@pytest.fixture
def team_stub(channel):
    return team_pb2_grpc.TeamServiceStub(channel)


@pytest.fixture
def customer_cap(client):
    """Sets the organisation-wide per-customer cap for one test and removes it afterwards, whatever happens."""
    def set_cap(value: str, currency: str = "EUR", period: str = "MONTH"):
        return client.set_customer_cap(make_cap(value, currency, period))

    try:
        yield set_cap
    finally:
        client.set_customer_cap(None)


def escalating(emp_client, emp, team, sup, allowance="100", **kwargs):
    """Opens a budget whose over-limit actions wait for ``sup``."""
    kwargs.setdefault("per_action_limit", "40")
    kwargs.setdefault("escalate_to", [sup])
    kwargs.setdefault("approval_timeout", timedelta(hours=1))
    return emp_client.open_budget(emp, team, policy(allowance, **kwargs))


# ---------------------------------------------------------------------------- refusals (escalation: refuse)


def test_per_action_limit_and_budget_exhausted_details(client, uid):
    emp, cust = uid("emp"), uid("cust")
    rules = [
        BendableRule(rule_code="LATE_FEE", description="waive the late fee", max_per_period=2, max_value=to_money("15", "EUR")),
        BendableRule(rule_code="LATE_RETURN"),  # no count or value limit
    ]
    client.open_budget(emp, uid("team"), policy("50", per_action_limit="30", per_customer_limit="500", bendable_rules=rules))
    opened = client.get_budget(emp).policy
    assert [r.rule_code for r in opened.bendable_rules] == ["LATE_FEE", "LATE_RETURN"]
    assert opened.bendable_rules[0].max_per_period == 2 and amount(opened.bendable_rules[0].max_value) == 15
    assert opened.bendable_rules[0].description == "waive the late fee"
    assert not opened.bendable_rules[1].HasField("max_value")
    assert amount(opened.per_customer_limit) == 500
    error = expect_error(FailedPreconditionError, "PER_ACTION_LIMIT_EXCEEDED", lambda: refund(client, emp, cust, "30.5"))
    assert Decimal(error.metadata["limit"]) == 30 and Decimal(error.metadata["requested"]) == Decimal("30.5")
    assert error.metadata["exceeded"] == "PER_ACTION_LIMIT_EXCEEDED"
    assert error.precondition_violations[0][:2] == ("PER_ACTION_LIMIT", f"budgets/{emp}")
    refund(client, emp, cust, "30")
    error = expect_error(FailedPreconditionError, "BUDGET_EXHAUSTED", lambda: refund(client, emp, cust, "20.01"))
    assert Decimal(error.metadata["remaining"]) == 20 and Decimal(error.metadata["held"]) == 0
    assert Decimal(error.metadata["requested"]) == Decimal("20.01")
    period_end = client.get_budget(emp).period_end
    assert datetime.fromisoformat(error.metadata["period_end"]) == when(period_end)
    assert error.precondition_violations == [("PERIOD_ALLOWANCE", f"budgets/{emp}", error.precondition_violations[0][2])]
    # Both at once: the per-action limit is named first.
    error = expect_error(FailedPreconditionError, "PER_ACTION_LIMIT_EXCEEDED", lambda: refund(client, emp, cust, "31"))
    assert error.metadata["exceeded"] == "PER_ACTION_LIMIT_EXCEEDED,BUDGET_EXHAUSTED"
    assert violation_types(error) == ["PER_ACTION_LIMIT", "PERIOD_ALLOWANCE"]


# ---------------------------------------------------------------------------- escalation: holds


def test_hold_then_approve(client, uid, sup):
    emp, cust, team = uid("emp"), uid("cust"), uid("team")
    opened = escalating(client, emp, team, sup)
    escalation = opened.policy.escalation
    assert escalation.mode == policy_pb2.Escalation.MODE_APPROVAL and list(escalation.approver_ids) == [sup]
    assert escalation.approval_timeout.ToTimedelta() == timedelta(hours=1)

    response = refund(client, emp, cust, "50")
    action, budget = response.action, response.budget
    assert action.state == PENDING and list(action.escalation_reasons) == ["PER_ACTION_LIMIT_EXCEEDED"]
    assert list(action.approver_ids) == [sup] and action.approver_role == ""
    assert when(action.expire_time) - when(action.record_time) == timedelta(hours=1)
    assert not action.HasField("decision") and not action.HasField("reversal")
    assert amount(budget.held) == 50 and amount(budget.spent) == 0 and amount(budget.remaining) == 50
    assert budget.pending_action_count == 1 and budget.period_action_count == 0
    assert client.get_action(action.action_id) == action

    # The hold counts against what remains: 50 more would exceed the allowance (and is held too).
    second = refund(client, emp, cust, "30").action
    assert second.state == RECORDED
    over = refund(client, emp, cust, "25").action
    assert over.state == PENDING and list(over.escalation_reasons) == ["BUDGET_EXHAUSTED"]
    deny_rid = uid("deny")
    denied = client.deny_action(over.action_id, sup, note="not this time", request_id=deny_rid)
    assert denied.action.state == DENIED and denied.action.decision.outcome == DENIED
    assert denied.action.decision.approver_id == sup and denied.action.decision.note == "not this time"
    assert denied.action.decision.request_id == deny_rid
    assert amount(denied.budget.held) == 50 and amount(denied.budget.spent) == 30
    assert client.get_action(over.action_id) == denied.action
    error = expect_error(
        FailedPreconditionError, "ACTION_NOT_REVERSIBLE",
        lambda: client.reverse_action(over.action_id, reason="oops", actor_id=sup),
    )
    assert error.metadata["state"] == "DENIED"

    rid = uid("approve")
    approved = client.approve_action(action.action_id, sup, note="fair enough", request_id=rid)
    decided, budget = approved.action, approved.budget
    assert decided.action_id == action.action_id and decided.state == APPROVED
    assert decided.decision.outcome == APPROVED and decided.decision.approver_id == sup
    assert decided.decision.note == "fair enough" and decided.decision.request_id == rid
    assert when(decided.decision.decide_time) >= when(action.record_time)
    assert amount(budget.held) == 0 and amount(budget.spent) == 80 and amount(budget.remaining) == 20
    assert budget.pending_action_count == 0 and budget.period_action_count == 2
    assert client.get_action(action.action_id) == decided
    assert client.get_budget(emp).version == budget.version
    # Approving again with the same request_id replays the answer; another decision is refused.
    assert client.approve_action(action.action_id, sup, note="fair enough", request_id=rid) == approved
    error = expect_error(FailedPreconditionError, "ACTION_ALREADY_DECIDED", lambda: client.approve_action(action.action_id, sup))
    assert error.metadata["outcome"] == "APPROVED" and error.metadata["decided_by"] == sup
    assert error.precondition_violations[0][:2] == ("ACTION_STATE", f"actions/{action.action_id}")
    expect_error(FailedPreconditionError, "ACTION_ALREADY_DECIDED", lambda: client.deny_action(action.action_id, sup))
    # An action that never needed approval cannot be decided.
    expect_error(FailedPreconditionError, "ACTION_NOT_PENDING", lambda: client.approve_action(second.action_id, sup))
    assert client.get_budget(emp).version == budget.version


def test_hold_expires_without_any_client_call(client, uid, sup):
    emp, cust, team = uid("emp"), uid("cust"), uid("team")
    escalating(client, emp, team, sup, approval_timeout=timedelta(seconds=1))
    client.set_team_cap(team, make_cap("1000", "EUR"))
    response = refund(client, emp, cust, "50")
    action = response.action
    assert action.state == PENDING and amount(response.budget.held) == 50
    assert when(action.expire_time) - when(action.record_time) == timedelta(seconds=1)
    assert amount(client.get_team(team).held) == 50

    # Only reads from here on: the server's background task must record the expiry by itself.
    deadline = time.monotonic() + 10
    seen = client.get_action(action.action_id)
    while not seen.HasField("decision") and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = client.get_action(action.action_id)
    assert seen.HasField("decision"), "the expiry task did not record the expiry within 10 s"
    assert seen.state == EXPIRED and seen.decision.outcome == EXPIRED
    assert seen.decision.approver_id == "leeway" and seen.decision.request_id == f"expire:{action.action_id}"
    assert when(seen.decision.decide_time) >= when(action.expire_time)

    budget = client.get_budget(emp)
    assert amount(budget.held) == 0 and amount(budget.spent) == 0 and amount(budget.remaining) == 100
    assert budget.pending_action_count == 0 and budget.version == response.budget.version + 1
    team_now = client.get_team(team)
    assert amount(team_now.held) == 0 and amount(team_now.spent) == 0 and amount(team_now.remaining) == 1000
    assert action.action_id not in [a.action_id for a in client.iter_actions(state="PENDING_APPROVAL", approver_id=sup)]
    assert [a.action_id for a in client.list_actions(employee_id=emp, state="EXPIRED").actions] == [action.action_id]

    error = expect_error(FailedPreconditionError, "ACTION_ALREADY_DECIDED", lambda: client.approve_action(action.action_id, sup))
    assert error.metadata["outcome"] == "EXPIRED" and error.metadata["decided_by"] == "leeway"
    expect_error(
        FailedPreconditionError, "ACTION_NOT_REVERSIBLE",
        lambda: client.reverse_action(action.action_id, reason="r", actor_id=sup),
    )
    # The released amount can be spent again.
    assert refund(client, emp, cust, "40").action.state == RECORDED


def test_self_approval_refused(client, uid, sup):
    emp, cust = uid("emp"), uid("cust")
    # (A policy may not list the employee as an approver: tests/e2e/test_bounds.py.)
    escalating(client, emp, uid("team"), sup)
    action = refund(client, emp, cust, "50").action
    assert action.state == PENDING
    for decide in (client.approve_action, client.deny_action):
        error = expect_error(PermissionDeniedError, "SELF_APPROVAL_NOT_ALLOWED", lambda decide=decide: decide(action.action_id, emp))
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert error.metadata["approver_id"] == emp and error.metadata["employee_id"] == emp
    assert client.get_action(action.action_id).state == PENDING
    assert client.approve_action(action.action_id, sup).action.state == APPROVED


def test_list_pending_actions_for_a_supervisor(client, uid, sup):
    emp_a, emp_b, emp_c, other_sup = uid("empA"), uid("empB"), uid("empC"), uid("othersup")
    team = uid("team")
    escalating(client, emp_a, team, sup)
    escalating(client, emp_b, team, sup, escalate_to=[sup, other_sup])
    escalating(client, emp_c, team, sup, escalate_to=[other_sup])
    a1 = refund(client, emp_a, uid("c1"), "41").action
    refund(client, emp_a, uid("c1"), "5")  # recorded, not pending
    b1 = refund(client, emp_b, uid("c2"), "42").action
    c1 = refund(client, emp_c, uid("c3"), "43").action
    a2 = refund(client, emp_a, uid("c4"), "44").action

    def ids(actions):
        return [a.action_id for a in actions]

    mine = client.list_actions(state="PENDING_APPROVAL", approver_id=sup)
    assert ids(mine.actions) == [a1.action_id, b1.action_id, a2.action_id] and not mine.next_page_token
    assert all(a.state == PENDING for a in mine.actions)
    assert ids(client.list_actions(state="PENDING_APPROVAL", approver_id=other_sup).actions) == [b1.action_id, c1.action_id]
    # Paging, and filtering by employee too.
    first = client.list_actions(state="PENDING_APPROVAL", approver_id=sup, page_size=2)
    assert ids(first.actions) == [a1.action_id, b1.action_id] and first.next_page_token
    rest = client.list_actions(state="PENDING_APPROVAL", approver_id=sup, page_size=2, page_token=first.next_page_token)
    assert ids(rest.actions) == [a2.action_id] and not rest.next_page_token
    assert ids(client.list_actions(state="PENDING_APPROVAL", approver_id=sup, employee_id=emp_a).actions) == [
        a1.action_id, a2.action_id
    ]
    assert ids(client.list_actions(employee_id=emp_a, state="PENDING_APPROVAL").actions) == [a1.action_id, a2.action_id]
    # Without any other filter: every pending action (of everyone), ours among them, oldest first.
    everyone = ids(client.iter_actions(state="PENDING_APPROVAL", page_size=3))
    ours = [x for x in everyone if x in {a1.action_id, b1.action_id, c1.action_id, a2.action_id}]
    assert ours == [a1.action_id, b1.action_id, c1.action_id, a2.action_id]

    # Decided actions leave the list; state filters work on employee lists too.
    client.approve_action(a1.action_id, sup)
    client.deny_action(b1.action_id, other_sup)
    assert ids(client.list_actions(state="PENDING_APPROVAL", approver_id=sup).actions) == [a2.action_id]
    assert ids(client.list_actions(employee_id=emp_a, state="APPROVED").actions) == [a1.action_id]
    assert ids(client.list_actions(employee_id=emp_b, state="DENIED").actions) == [b1.action_id]
    assert len(client.list_actions(employee_id=emp_a, state="RECORDED").actions) == 1


# ---------------------------------------------------------------------------- reversals


def test_reverse_action(client, uid, sup):
    emp, cust, team, actor = uid("emp"), uid("cust"), uid("team"), uid("manager")
    escalating(client, emp, team, sup)
    client.set_team_cap(team, make_cap("500", "EUR"))
    recorded = refund(client, emp, cust, "30").action
    refund(client, emp, cust, "5")

    rid = uid("rev")
    response = client.reverse_action(recorded.action_id, reason="charged twice", actor_id=actor, request_id=rid)
    action, budget = response.action, response.budget
    assert response.restored_to_current_period is True
    assert "current period" in response.explanation and "30" in response.explanation
    assert action.action_id == recorded.action_id and action.state == REVERSED
    assert action.reversal.actor_id == actor and action.reversal.reason == "charged twice"
    assert action.reversal.restored_to_current_period is True and action.reversal.request_id == rid
    assert when(action.reversal.reverse_time) >= when(recorded.record_time)
    # The original stays as it was recorded: amount, reason, record_time.
    assert amount(action.amount) == 30 and action.reason == recorded.reason and action.record_time == recorded.record_time
    assert amount(budget.spent) == 5 and amount(budget.remaining) == 95 and budget.period_action_count == 1
    assert client.get_action(recorded.action_id) == action
    assert [a.state for a in client.list_actions(employee_id=emp).actions] == [REVERSED, RECORDED]
    assert amount(client.get_team(team).spent) == 5
    # Replay, then a second reversal.
    assert client.reverse_action(recorded.action_id, reason="charged twice", actor_id=actor, request_id=rid) == response
    error = expect_error(
        FailedPreconditionError, "ACTION_ALREADY_REVERSED",
        lambda: client.reverse_action(recorded.action_id, reason="again", actor_id=actor),
    )
    assert error.precondition_violations[0][:2] == ("ACTION_STATE", f"actions/{recorded.action_id}")

    # An approved action can be reversed; a pending one cannot (deny it instead).
    held = refund(client, emp, cust, "50").action
    error = expect_error(
        FailedPreconditionError, "ACTION_NOT_REVERSIBLE",
        lambda: client.reverse_action(held.action_id, reason="r", actor_id=actor),
    )
    assert error.metadata["state"] == "PENDING_APPROVAL"
    client.approve_action(held.action_id, sup)
    assert amount(client.get_budget(emp).spent) == 55
    reversed_ = client.reverse_action(held.action_id, reason="customer returned it", actor_id=actor)
    assert reversed_.restored_to_current_period and reversed_.action.state == REVERSED
    assert reversed_.action.decision.outcome == APPROVED, "the decision stays on record"
    assert amount(reversed_.budget.spent) == 5
    assert amount(client.get_team(team).spent) == 5

    missing = recorded.action_id.rsplit("_", 1)[0] + "_999"
    expect_error(NotFoundError, "ACTION_NOT_FOUND", lambda: client.reverse_action(missing, reason="r", actor_id=actor))


# ---------------------------------------------------------------------------- teams and the organisation's customer cap


def test_team_cap(client, uid, sup):
    team, emp_a, emp_b, cust = uid("team"), uid("empA"), uid("empB"), uid("cust")
    expect_error(NotFoundError, "TEAM_NOT_FOUND", lambda: client.get_team(team))
    client.open_budget(emp_a, team, policy("500"))
    escalating(client, emp_b, team, sup, allowance="500")
    uncapped = client.get_team(team)
    assert uncapped.team_id == team and uncapped.member_count == 2
    assert not uncapped.HasField("cap") and not uncapped.HasField("spent") and not uncapped.HasField("period_start")

    capped = client.set_team_cap(team, make_cap("100", "EUR", "MONTH"))
    assert capped.cap == make_cap("100", "EUR", "MONTH") and capped.member_count == 2
    assert amount(capped.spent) == 0 and amount(capped.held) == 0 and amount(capped.remaining) == 100
    assert when(capped.period_start) <= datetime.now(timezone.utc) < when(capped.period_end)
    assert when(capped.period_start).day == 1
    refund(client, emp_a, cust, "30")
    held = refund(client, emp_b, cust, "45").action  # over emp_b's per-action limit: held, and counted by the team
    assert held.state == PENDING
    team_now = client.get_team(team)
    assert amount(team_now.spent) == 30 and amount(team_now.held) == 45 and amount(team_now.remaining) == 25
    assert team_now.version > capped.version

    error = expect_error(FailedPreconditionError, "TEAM_CAP_EXCEEDED", lambda: refund(client, emp_a, cust, "25.01"))
    assert error.metadata["team_id"] == team
    assert Decimal(error.metadata["cap"]) == 100 and Decimal(error.metadata["remaining"]) == 25
    assert Decimal(error.metadata["requested"]) == Decimal("25.01")
    assert datetime.fromisoformat(error.metadata["period_end"]) == when(team_now.period_end)
    assert error.precondition_violations[0][:2] == ("TEAM_CAP", f"teams/{team}")
    # A hard wall: escalation does not turn it into a hold.
    expect_error(FailedPreconditionError, "TEAM_CAP_EXCEEDED", lambda: refund(client, emp_b, cust, "41"))
    assert client.get_budget(emp_b).pending_action_count == 1

    # Denial releases the team's hold too.
    client.deny_action(held.action_id, sup)
    assert amount(client.get_team(team).remaining) == 70
    refund(client, emp_a, cust, "70")
    assert amount(client.get_team(team).remaining) == 0
    expect_error(FailedPreconditionError, "TEAM_CAP_EXCEEDED", lambda: refund(client, emp_a, cust, "0.01"))
    bend(client, emp_a, cust, "WAIVE_FEE")  # free: always fits

    # A cap below what was spent: refused until the cap is raised or removed.
    lowered = client.set_team_cap(team, make_cap("50", "EUR"))
    assert amount(lowered.remaining) == -50
    removed = client.set_team_cap(team, None)
    assert not removed.HasField("cap") and removed.member_count == 2
    assert refund(client, emp_a, cust, "60").action.state == RECORDED
    uncapped = client.get_team(team)
    assert not uncapped.HasField("cap") and not uncapped.HasField("remaining")
    # Without a cap the spend still shows (this calendar month, in each currency spent in).
    assert amount(uncapped.spent) == 30 + 70 + 60 and uncapped.spent.currency_code == "EUR"
    assert [(u.currency_code, amount(u.spent)) for u in uncapped.usage] == [("EUR", 160)]
    assert when(uncapped.period_start).day == 1

    # A cap in another currency refuses the team's actions rather than mixing currencies.
    client.set_team_cap(team, make_cap("1000", "USD"))
    error = expect_error(FailedPreconditionError, "CURRENCY_MISMATCH", lambda: refund(client, emp_a, cust, "1"))
    assert error.metadata["cap_currency"] == "USD" and error.metadata["amount_currency"] == "EUR"
    client.set_team_cap(team, None)


def test_customer_cap_across_employees(client, uid, customer_cap):
    emp_a, emp_b, cust, other = uid("empA"), uid("empB"), uid("cust"), uid("cust2")
    client.open_budget(emp_a, uid("teamA"), policy("500"))
    client.open_budget(emp_b, uid("teamB"), policy("500"))
    refund(client, emp_a, cust, "20")  # before any cap: counted once the cap is set

    usage = client.get_customer_usage(cust)
    assert usage.customer_id == cust and usage.action_count == 1
    # Without a cap the spend still shows (this calendar month).
    assert not usage.HasField("cap") and not usage.HasField("remaining") and amount(usage.spent) == 20
    assert [(u.currency_code, amount(u.spent), u.HasField("cap")) for u in usage.usage] == [("EUR", 20, False)]

    response = customer_cap("50")
    assert response.cap == make_cap("50", "EUR", "MONTH")
    usage = client.get_customer_usage(cust)
    assert usage.cap == response.cap and amount(usage.spent) == 20 and amount(usage.held) == 0
    assert amount(usage.remaining) == 30
    assert when(usage.period_start) <= datetime.now(timezone.utc) < when(usage.period_end)

    refund(client, emp_b, cust, "25")
    error = expect_error(FailedPreconditionError, "CUSTOMER_CAP_EXCEEDED", lambda: refund(client, emp_a, cust, "5.01"))
    assert error.metadata["customer_id"] == cust
    assert Decimal(error.metadata["cap"]) == 50 and Decimal(error.metadata["remaining"]) == 5
    assert Decimal(error.metadata["requested"]) == Decimal("5.01")
    assert error.precondition_violations[0][:2] == ("CUSTOMER_CAP", f"customers/{cust}")
    expect_error(FailedPreconditionError, "CUSTOMER_CAP_EXCEEDED", lambda: refund(client, emp_b, cust, "6"))
    refund(client, emp_b, cust, "5")
    bend(client, emp_a, cust, "WAIVE_FEE")  # free rule bends always fit
    usage = client.get_customer_usage(cust)
    assert amount(usage.spent) == 50 and amount(usage.remaining) == 0 and usage.action_count == 4
    # Another customer has a cap of their own; an unknown customer has used nothing.
    refund(client, emp_a, other, "50")
    fresh = client.get_customer_usage(uid("nobody"))
    assert fresh.action_count == 0 and amount(fresh.spent) == 0 and amount(fresh.remaining) == 50

    # Reversal gives room back under the cap.
    first = client.list_actions(customer_id=cust).actions[0]
    client.reverse_action(first.action_id, reason="mistake", actor_id=uid("mgr"))
    assert amount(client.get_customer_usage(cust).remaining) == 20

    removed = client.set_customer_cap(None)
    assert not removed.HasField("cap")
    usage = client.get_customer_usage(cust)
    assert not usage.HasField("cap") and usage.action_count == 4
    refund(client, emp_a, cust, "100")


def test_customer_caps_per_currency(client, uid, customer_cap):
    """A cap in USD no longer refuses every EUR action with CURRENCY_MISMATCH: each currency has its own cap."""
    emp, usd_emp, cust = uid("emp"), uid("empU"), uid("cust")
    client.open_budget(emp, uid("team"), policy("500"))
    client.open_budget(usd_emp, uid("team"), policy("500", currency="USD"))
    customer_cap("40", "USD")
    assert refund(client, emp, cust, "100").action.state == RECORDED  # no EUR cap
    response = customer_cap("120", "EUR")
    assert [(c.amount.currency_code, amount(c.amount)) for c in response.caps] == [("EUR", 120), ("USD", 40)]
    error = expect_error(FailedPreconditionError, "CUSTOMER_CAP_EXCEEDED", lambda: refund(client, emp, cust, "20.01"))
    assert Decimal(error.metadata["cap"]) == 120
    client.record_action(usd_emp, cust, "40", "USD", RefundDetails(order_id="o-1"), reason="goodwill")
    expect_error(
        FailedPreconditionError,
        "CUSTOMER_CAP_EXCEEDED",
        lambda: client.record_action(usd_emp, cust, "0.01", "USD", RefundDetails(order_id="o-2"), reason="goodwill"),
    )
    usage = client.get_customer_usage(cust)
    assert [(u.currency_code, amount(u.spent), amount(u.remaining)) for u in usage.usage] == [
        ("EUR", 100, 20), ("USD", 40, 0)
    ]
    removed = client.set_customer_cap(None, currency_code="EUR")
    assert not removed.HasField("cap") and [c.amount.currency_code for c in removed.caps] == ["USD"]
    assert refund(client, emp, cust, "21").action.state == RECORDED
    error = expect_error(
        InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.set_customer_cap(None, currency_code="euro")
    )
    assert fields(error) == {"currency_code"}


def test_team_and_customer_caps_hold_under_16_concurrent_clients(server, client, uid, customer_cap):
    """The acceptance test of issue 3: 16 clients over 4 employees of one team, a team cap and an org-wide
    per-customer cap, asking for far more than the caps allow."""
    team = uid("team")
    employees = [uid(f"emp{i}") for i in range(4)]
    for emp in employees:
        client.open_budget(emp, team, policy("10000"))
    heavy, light = uid("cust-h"), [uid(f"cust{i}") for i in range(3)]  # keys: lower case (see Boundaries)
    customers = [heavy, *light]
    team_cap, cust_cap = Decimal(300), Decimal(100)
    client.set_team_cap(team, make_cap(team_cap, "EUR"))
    customer_cap(str(cust_cap))
    # Half of all attempts go to the heavy customer: their cap binds; the four customers together could take
    # 400, so the team cap binds too.
    plan = [heavy, light[0], heavy, light[1], heavy, light[2]]
    threads, attempts = 16, 6
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(worker: int) -> None:
        emp = employees[worker % len(employees)]
        with LeewayClient(server.target, timeout=60) as own:
            barrier.wait()
            for attempt in range(attempts):
                cust = plan[(worker + attempt) % len(plan)]
                try:
                    own.record_action(emp, cust, "10", "EUR", GiftDetails(gift_type="voucher"), reason="sorry")
                    result = "OK"
                except LeewayError as error:
                    result = f"{error.code.name}:{error.reason}"
                except Exception as error:  # noqa: BLE001 - reported below
                    result = f"{type(error).__name__}:{error}"
                with lock:
                    outcomes.append((cust, result))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not any(w.is_alive() for w in workers), "clients still running after 120 s"
    counts = Counter(result for _, result in outcomes)
    assert sum(counts.values()) == threads * attempts, counts
    allowed = {"OK", "FAILED_PRECONDITION:TEAM_CAP_EXCEEDED", "FAILED_PRECONDITION:CUSTOMER_CAP_EXCEEDED"}
    assert set(counts) <= allowed, f"unexpected outcomes: {counts}"
    # Every request either fitted or was refused by a cap; more was asked than fits, so the team cap filled up.
    assert counts["FAILED_PRECONDITION:TEAM_CAP_EXCEEDED"] > 0, counts

    recorded = [a for emp in employees for a in client.iter_actions(employee_id=emp, page_size=7)]
    assert all(a.state == RECORDED for a in recorded)
    assert len(recorded) == counts["OK"]
    total = sum((amount(a.amount) for a in recorded), Decimal(0))
    team_now = client.get_team(team)
    assert amount(team_now.spent) == total, "the team ledger agrees with the recorded actions"
    assert amount(team_now.spent) <= team_cap and amount(team_now.held) == 0
    # With 10 a piece and room left for some customer until the end, the team cap is met exactly.
    assert amount(team_now.spent) == team_cap, counts
    assert sum((amount(client.get_budget(e).spent) for e in employees), Decimal(0)) == total
    for cust in customers:
        usage = client.get_customer_usage(cust)
        mine = [a for a in recorded if a.customer_id == cust]
        assert amount(usage.spent) <= cust_cap, f"customer {cust} got {amount(usage.spent)}"
        assert amount(usage.spent) == sum((amount(a.amount) for a in mine), Decimal(0))
        assert usage.action_count == len(mine) == len(list(client.iter_actions(customer_id=cust)))
        refused_for_cap = [r for c, r in outcomes if c == cust and r.endswith("CUSTOMER_CAP_EXCEEDED")]
        if refused_for_cap:
            assert amount(usage.spent) == cust_cap


# ---------------------------------------------------------------------------- history: GetBudget as_of


def test_get_budget_as_of_three_points(client, uid):
    emp, cust = uid("emp"), uid("cust")
    opened = client.open_budget(emp, uid("team"), policy("100"))
    t0 = when(opened.create_time)
    assert when(opened.update_time) == t0
    first = refund(client, emp, cust, "10")
    t1 = when(first.action.record_time)
    assert when(first.budget.update_time) == t1
    updated = client.update_policy(emp, policy("200", per_action_limit="50"))
    t2 = when(updated.update_time)
    second = refund(client, emp, cust, "20")
    t3 = when(second.budget.update_time)
    assert t0 <= t1 <= t2 <= t3

    at_open = client.get_budget(emp, as_of=t0)
    assert at_open.version == 1 and at_open.policy_version == 1 and amount(at_open.allowance) == 100
    assert amount(at_open.spent) == 0 and amount(at_open.remaining) == 100 and at_open.period_action_count == 0
    assert not at_open.policy.HasField("per_action_limit")

    after_first = client.get_budget(emp, as_of=t1)
    assert after_first.version == 2 and after_first.policy_version == 1
    assert amount(after_first.spent) == 10 and amount(after_first.remaining) == 90 and after_first.period_action_count == 1

    after_update = client.get_budget(emp, as_of=t2)
    assert after_update.version == 3 and after_update.policy_version == 2
    assert amount(after_update.allowance) == 200 and amount(after_update.policy.per_action_limit) == 50
    assert amount(after_update.spent) == 10 and amount(after_update.remaining) == 190

    now = client.get_budget(emp)
    assert now.version == 4 and amount(now.spent) == 30 and amount(now.remaining) == 170
    assert client.get_budget(emp, as_of=t3).version == 4
    # Between two events: the earlier one.
    if t2 - t1 > timedelta(microseconds=1):
        assert client.get_budget(emp, as_of=t2 - timedelta(microseconds=1)).version == 2

    error = expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.get_budget(emp, as_of=t0 - timedelta(microseconds=1)))
    assert error.metadata["resource_name"] == f"budgets/{emp}"
    error = expect_error(
        InvalidArgumentError, "INVALID_ARGUMENT",
        lambda: client.get_budget(emp, as_of=datetime.now(timezone.utc) + timedelta(hours=1)),
    )
    assert "as_of" in fields(error)


@pytest.mark.parametrize(
    "stamp",
    [Timestamp(seconds=1_700_000_000, nanos=-1), Timestamp(seconds=1_700_000_000, nanos=1_000_000_000),
     Timestamp(seconds=253_402_300_800)],  # negative nanos, nanos too large, the year 10000
    ids=["negative-nanos", "nanos-too-large", "year-10000"],
)
def test_get_budget_invalid_as_of(budget_stub, client, uid, stamp):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy())
    request = budget_pb2.GetBudgetRequest(employee_id=emp, as_of=stamp)
    error = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: budget_stub.GetBudget(request, timeout=10))
    assert "as_of" in fields(error)


# ---------------------------------------------------------------------------- bad input on the new requests


@pytest.fixture
def pending(client, uid, sup):
    emp = uid("emp")
    escalating(client, emp, uid("team"), sup)
    return refund(client, emp, uid("cust"), "50").action


# Every field's check is pinned by test_boundaries_application.py (DECISION_CASES, REVERSE_CASES); here the
# answer on the wire: INVALID_ARGUMENT with a BadRequest naming the field, from either RPC.
DECISION_CASES = {
    "malformed action_id": (dict(action_id="act_nope"), "action_id"),
    "control characters in note": (dict(note="bad\x00note"), "note"),
}


@pytest.mark.parametrize("method", ["ApproveAction", "DenyAction"])
@pytest.mark.parametrize("case", list(DECISION_CASES))
def test_decision_invalid_argument(action_stub, client, pending, sup, method, case):
    overrides, field = DECISION_CASES[case]
    values = dict(action_id=pending.action_id, approver_id=sup, note="ok", request_id="")
    values.update(overrides)
    message = action_pb2.ApproveActionRequest if method == "ApproveAction" else action_pb2.DenyActionRequest
    call = getattr(action_stub, method)
    error = expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: call(message(**values), timeout=10)
    )
    assert isinstance(error, InvalidArgumentError)
    assert field in fields(error), f"{case}: expected a violation of {field}, got {error.field_violations}"
    assert client.get_action(pending.action_id).state == PENDING, "an invalid request decides nothing"


def test_decision_on_unknown_action(client, pending, sup):
    budget_part, version = pending.action_id.rsplit("_", 1)
    missing = f"{budget_part}_{int(version) + 50}"
    expect_error(NotFoundError, "ACTION_NOT_FOUND", lambda: client.approve_action(missing, sup))
    expect_error(NotFoundError, "ACTION_NOT_FOUND", lambda: client.deny_action(f"{budget_part}_1", sup))  # the opening


REVERSE_CASES = {
    "missing reason and actor_id": (dict(reason="", actor_id=""), {"reason", "actor_id"}),
}


@pytest.mark.parametrize("case", list(REVERSE_CASES))
def test_reverse_invalid_argument(action_stub, client, uid, case):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy())
    action = refund(client, emp, uid("cust"), "5").action
    overrides, expected = REVERSE_CASES[case]
    values = dict(action_id=action.action_id, reason="mistake", actor_id=uid("mgr"))
    values.update(overrides)
    request = action_pb2.ReverseActionRequest(**values)
    error = expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: action_stub.ReverseAction(request, timeout=10)
    )
    assert expected <= fields(error), f"{case}: expected {expected}, got {error.field_violations}"
    assert client.get_action(action.action_id).state == RECORDED


def _policy(**overrides) -> policy_pb2.Policy:
    message = policy_pb2.Policy(
        period_allowance=money_pb2.Money(currency_code="EUR", units=100),
        period=policy_pb2.PERIOD_MONTH,
        allowed_kinds=[policy_pb2.ACTION_KIND_REFUND, policy_pb2.ACTION_KIND_RULE_BEND],
    )
    for key, value in overrides.items():
        if key in ("bendable_rules",):
            message.bendable_rules.extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(message, key).CopyFrom(value)
        else:
            setattr(message, key, value)
    return message


def _escalation(**kwargs) -> policy_pb2.Escalation:
    return policy_pb2.Escalation(**kwargs)


# Policy.build's problems and their field paths are pinned by tests/unit/test_policy.py; here one of them, and
# what only a protobuf request can carry (an unknown enum value, a sub-second Duration, a nested Money).
POLICY_CASES = {
    "duplicate bendable rule codes": (
        dict(bendable_rules=[policy_pb2.BendableRule(rule_code="LATE_FEE"), policy_pb2.BendableRule(rule_code="LATE_FEE")]),
        "policy.bendable_rules[1].rule_code",
    ),
    "max_value in another currency": (
        dict(bendable_rules=[policy_pb2.BendableRule(rule_code="LATE_FEE", max_value=money_pb2.Money(currency_code="USD", units=5))]),
        "policy.bendable_rules[0].max_value.currency_code",
    ),
    "approval timeout below a second": (
        dict(escalation=_escalation(mode=policy_pb2.Escalation.MODE_APPROVAL, approver_ids=["boss"],
                                    approval_timeout=Duration(nanos=500_000_000))),
        "policy.escalation.approval_timeout",
    ),
    "unknown escalation mode": (
        dict(escalation=_escalation(mode=7, approver_ids=["boss"])),
        "policy.escalation.mode",
    ),
}


@pytest.mark.parametrize("case", list(POLICY_CASES))
def test_policy_invalid_argument(budget_stub, client, uid, case):
    overrides, field = POLICY_CASES[case]
    emp = uid("emp")
    request = budget_pb2.OpenBudgetRequest(employee_id=emp, team_id=uid("team"), policy=_policy(**overrides))
    error = expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: budget_stub.OpenBudget(request, timeout=10)
    )
    assert field in fields(error), f"{case}: expected a violation of {field}, got {error.field_violations}"
    expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.get_budget(emp))
    # UpdatePolicy validates the same way and changes nothing.
    client.open_budget(emp, uid("team"), policy())
    update = budget_pb2.UpdatePolicyRequest(employee_id=emp, policy=_policy(**overrides))
    error = expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: budget_stub.UpdatePolicy(update, timeout=10)
    )
    assert field in fields(error)
    assert client.get_budget(emp).policy_version == 1


def test_duplicate_rule_codes_through_the_client(client, uid):
    error = expect_error(
        InvalidArgumentError, "INVALID_ARGUMENT",
        lambda: client.open_budget(uid("emp"), uid("team"), policy(bendable_rules=["LATE_FEE", "WAIVE_FEE", "LATE_FEE"])),
    )
    assert "policy.bendable_rules[2].rule_code" in fields(error)


CAP_CASES = {
    "cap without period": (team_pb2.Cap(amount=money_pb2.Money(currency_code="EUR", units=100)), "cap.period"),
    "cap without amount": (team_pb2.Cap(period=policy_pb2.PERIOD_MONTH), "cap.amount"),
    "negative cap": (team_pb2.Cap(amount=money_pb2.Money(currency_code="EUR", units=-1), period=policy_pb2.PERIOD_MONTH), "cap.amount"),
    "unknown currency": (team_pb2.Cap(amount=money_pb2.Money(currency_code="XYZ", units=1), period=policy_pb2.PERIOD_MONTH), "cap.amount.currency_code"),
    "unknown period": (team_pb2.Cap(amount=money_pb2.Money(currency_code="EUR", units=1), period=42), "cap.period"),
    "bad nanos": (team_pb2.Cap(amount=money_pb2.Money(currency_code="EUR", units=1, nanos=-5), period=policy_pb2.PERIOD_MONTH), "cap.amount.nanos"),
}


@pytest.mark.parametrize("case", list(CAP_CASES))
def test_cap_invalid_argument(team_stub, client, uid, case):
    cap, field = CAP_CASES[case]
    team = uid("team")
    request = team_pb2.SetTeamCapRequest(team_id=team, cap=cap)
    error = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: team_stub.SetTeamCap(request, timeout=10))
    assert field in fields(error), f"{case}: expected {field}, got {error.field_violations}"
    expect_error(NotFoundError, "TEAM_NOT_FOUND", lambda: client.get_team(team))
    request = team_pb2.SetCustomerCapRequest(cap=cap)
    error = expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: team_stub.SetCustomerCap(request, timeout=10)
    )
    assert field in fields(error)
    assert not client.get_customer_usage(uid("cust")).HasField("cap"), "an invalid request sets no cap"


def test_team_requests_invalid_argument(team_stub, client):
    for request, call, field in [
        (team_pb2.SetTeamCapRequest(team_id="", cap=make_cap("1", "EUR")), team_stub.SetTeamCap, "team_id"),
        (team_pb2.SetTeamCapRequest(team_id="bad team"), team_stub.SetTeamCap, "team_id"),
        (team_pb2.GetTeamRequest(team_id=""), team_stub.GetTeam, "team_id"),
        (team_pb2.GetTeamRequest(team_id="-x"), team_stub.GetTeam, "team_id"),
        (team_pb2.GetCustomerUsageRequest(customer_id=""), team_stub.GetCustomerUsage, "customer_id"),
        (team_pb2.GetCustomerUsageRequest(customer_id="no/slash"), team_stub.GetCustomerUsage, "customer_id"),
    ]:
        error = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda call=call, request=request: call(request, timeout=10))
        assert field in fields(error), (request, error.field_violations)


def test_list_actions_new_filters_invalid_argument(action_stub, client, uid):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy())
    for request, field in [
        (action_pb2.ListActionsRequest(employee_id=emp, state=99), "state"),
        (action_pb2.ListActionsRequest(state=action_pb2.Action.STATE_PENDING_APPROVAL, approver_id="-bad"), "approver_id"),
    ]:
        error = expect_raw_error(
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda request=request: action_stub.ListActions(request, timeout=10)
        )
        assert field in fields(error), (request, error.field_violations)
    # Only the PENDING_APPROVAL state lists without an employee or customer.
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.list_actions(state="APPROVED"))
    assert {"employee_id", "customer_id"} <= fields(error)
    # A page token is bound to the state and approver filters too.
    sup = uid("sup")
    other = uid("emp2")
    escalating(client, other, uid("team"), sup)
    for value in ("41", "42"):
        refund(client, other, uid("cust"), value)
    first = client.list_actions(state="PENDING_APPROVAL", approver_id=sup, page_size=1)
    assert first.next_page_token
    error = expect_error(
        InvalidArgumentError, "INVALID_PAGE_TOKEN",
        lambda: client.list_actions(state="PENDING_APPROVAL", approver_id=uid("sup2"), page_size=1, page_token=first.next_page_token),
    )
    assert "page_token" in fields(error)
