"""Boundaries through LeewayApplication on a real event store (SQLite and PostgreSQL): refusals of every
limit above and around an employee, holds that wait for approval (approve, deny, expire), reversals, as_of
reads and caps that hold under concurrent writers (one shared app, or one app per thread on one database)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from leeway.application.commands import (
    CloseBudget,
    DecideAction,
    ExpireAction,
    RecordAction,
    ReverseAction,
    UpdatePolicy,
)
from leeway.domain.budget import Budget
from leeway.domain.ids import budget_id_for
from leeway.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
)
from leeway.application.idempotency import RequestRecord
from leeway.domain.ledgers import CustomerLedger
from leeway.domain.approvals import HoldBook
from leeway.domain.ledgers import TeamLedger
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import BendableRule
from leeway.domain.tally import Cap

from builders import (
    drain,
    TIMEOUT,
    action_cmd,
    approve,
    bend_cmd,
    customer_cap,
    deny,
    eur,
    make_policy,
    open_cmd,
    team_cap,
    usd,
)


def stream(app, aggregate_id: UUID) -> list:
    return list(app.events.get(aggregate_id))


def budget_events(app, employee: str, cls: type) -> list:
    return [e for e in stream(app, budget_id_for(employee)) if isinstance(e, cls)]


def ledgers(employees: Iterable[str], teams: Iterable[str], customers: Iterable[str]) -> list[UUID]:
    return [
        *(budget_id_for(e) for e in employees),
        *(TeamLedger.create_id(t) for t in teams),
        *(CustomerLedger.create_id(c) for c in customers),
        HoldBook.create_id(HoldBook.NAME),
    ]


def snapshot_lengths(app, ids: Iterable[UUID]) -> dict[UUID, int]:
    return {i: len(stream(app, i)) for i in ids}


def last_notification(app) -> int:
    return app.recorder.max_notification_id() or 0


# ============================================================================ refusals write nothing
# One employee-level wall and one employee-level limit (the reason, message and metadata of every rule are pinned
# by the domain's unit tests), and every refusal above the employee (caps, and the team cap's currency; the
# organisation's per-customer caps are per currency: tests/integration/test_caps_and_spend.py).


def _setup_not_bendable(app) -> RecordAction:
    app.execute(open_cmd("emp-1"))
    return bend_cmd("emp-1", rule="NO_SUCH_RULE")


def _setup_per_customer(app) -> RecordAction:
    app.execute(open_cmd("emp-1", policy=make_policy(per_customer=30)))
    app.execute(action_cmd("emp-1", 20, customer="cust-1"))
    app.execute(action_cmd("emp-1", 10, customer="cust-1"))  # exactly the limit
    app.execute(action_cmd("emp-1", 30, customer="cust-2"))  # another customer has their own limit
    return action_cmd("emp-1", "0.01", customer="cust-1")


def _setup_team_cap(app) -> RecordAction:
    app.execute(open_cmd("emp-1", "team-a"))
    app.execute(open_cmd("emp-2", "team-a"))
    app.execute(team_cap("team-a", usd(70)))
    app.execute(action_cmd("emp-1", 40, customer="cust-1"))
    app.execute(action_cmd("emp-2", 20, customer="cust-2"))
    return action_cmd("emp-2", "10.01", customer="cust-3")  # 70 - 60 = 10 left for the team


def _setup_customer_cap(app) -> RecordAction:
    # Different employees of different teams: the cap is the organisation's, per customer.
    app.execute(open_cmd("emp-1", "team-a"))
    app.execute(open_cmd("emp-2", "team-b"))
    app.execute(customer_cap(usd(45)))
    app.execute(action_cmd("emp-1", 25, customer="cust-1"))
    app.execute(action_cmd("emp-2", 15, customer="cust-1"))
    app.execute(action_cmd("emp-2", 45, customer="cust-2"))  # another customer: untouched by cust-1's spend
    return action_cmd("emp-2", "5.01", customer="cust-1")


def _setup_team_cap_currency(app) -> RecordAction:
    app.execute(open_cmd("emp-1", "team-a"))
    app.execute(team_cap("team-a", eur(1000)))
    return action_cmd("emp-1", 1, customer="cust-1")


REFUSALS = {
    "RULE_NOT_BENDABLE": _setup_not_bendable,
    "PER_CUSTOMER_LIMIT_EXCEEDED": _setup_per_customer,
    "TEAM_CAP_EXCEEDED": _setup_team_cap,
    "CUSTOMER_CAP_EXCEEDED": _setup_customer_cap,
    "CURRENCY_MISMATCH/team": _setup_team_cap_currency,
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_writes_nothing(app, case: str) -> None:
    cmd = REFUSALS[case](app)
    employees = ("emp-1", "emp-2") if case in ("TEAM_CAP_EXCEEDED", "CUSTOMER_CAP_EXCEEDED") else ("emp-1",)
    ids = ledgers(employees, ("team-a", "team-b"), ("cust-1", "cust-2", "cust-3"))
    before_lengths = snapshot_lengths(app, ids)
    before_budget = app.get_budget(cmd.employee_id)
    before_team = app.get_team(before_budget.team_id)
    before_customer = app.get_customer_usage(cmd.customer_id)
    before_notification = last_notification(app)

    with pytest.raises(PreconditionFailed) as info:
        app.execute(cmd)
    reason = case.split("/")[0]
    assert info.value.reason == reason
    assert info.value.violations, "every refusal says which limit"

    assert snapshot_lengths(app, ids) == before_lengths
    assert last_notification(app) == before_notification
    after_budget = app.get_budget(cmd.employee_id)
    assert after_budget == before_budget
    assert after_budget.version == before_budget.version
    assert app.get_team(before_budget.team_id) == before_team
    assert app.get_customer_usage(cmd.customer_id) == before_customer
    assert app.get_or_none(RequestRecord.create_id(cmd.request_id, cmd.method)) is None
    # The same request is refused again (nothing was remembered), for the same reason.
    with pytest.raises(PreconditionFailed) as again:
        app.execute(cmd)
    assert again.value.reason == reason


def test_refusal_details_of_caps(app) -> None:
    cmd = _setup_team_cap(app)
    with pytest.raises(PreconditionFailed) as info:
        app.execute(cmd)
    assert info.value.metadata["team_id"] == "team-a"
    assert Decimal(info.value.metadata["remaining"]) == Decimal(10)
    assert [v.type for v in info.value.violations] == ["TEAM_CAP"]
    # What is left fits exactly; then nothing more.
    app.execute(action_cmd("emp-2", 10, customer="cust-3"))
    team = app.get_team("team-a")
    assert team.usage.spent == usd(70)
    assert team.usage.remaining == usd(0)
    assert team.member_count == 2
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", "0.01", customer="cust-9"))
    assert info.value.reason == "TEAM_CAP_EXCEEDED"
    # A zero-cost rule bend never passes a cap.
    app.execute(bend_cmd("emp-1", 0, customer="cust-9"))

    # The organisation's per-customer cap counts every team's employees.
    app.execute(open_cmd("emp-3", "team-b"))
    app.execute(open_cmd("emp-4", "team-c"))
    app.execute(customer_cap(usd(30)))
    app.execute(action_cmd("emp-4", 20, customer="cust-x"))
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-3", 11, customer="cust-x"))
    assert info.value.reason == "CUSTOMER_CAP_EXCEEDED"
    assert info.value.metadata["customer_id"] == "cust-x"
    assert Decimal(info.value.metadata["remaining"]) == Decimal(10)
    assert [v.type for v in info.value.violations] == ["CUSTOMER_CAP"]
    app.execute(action_cmd("emp-3", 10, customer="cust-x"))
    usage = app.get_customer_usage("cust-x")
    assert (usage.usage.spent, usage.usage.remaining, usage.action_count) == (usd(30), usd(0), 2)


def test_escalating_policy_still_refuses_caps(app) -> None:
    """Caps are hard walls: an action over a cap is refused even under an approval policy (not held)."""
    app.execute(open_cmd("emp-1", policy=make_policy(1000, limit=50, approvers=["mgr-1"])))
    app.execute(team_cap("team-a", usd(100)))
    app.execute(action_cmd("emp-1", 50, customer="cust-1"))
    before = last_notification(app)
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", 60, customer="cust-2"))  # over the per-action limit AND the team cap
    assert info.value.reason == "TEAM_CAP_EXCEEDED"
    assert last_notification(app) == before
    assert app.list_actions("", "", None, 0, "", state="PENDING_APPROVAL").items == []
    assert app.get_budget("emp-1").held == usd(0)

    # The organisation's customer cap likewise, and it counts holds while they wait.
    app.execute(open_cmd("emp-2", "team-b", policy=make_policy(1000, limit=50, approvers=["mgr-1"])))
    app.execute(customer_cap(usd(100)))
    held, _ = app.execute(action_cmd("emp-2", 30, customer="cust-7"))
    hold, _ = app.execute(action_cmd("emp-2", 60, customer="cust-7"))  # over the per-action limit: held
    assert (held.state, hold.state) == ("RECORDED", "PENDING_APPROVAL")
    before = last_notification(app)
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-2", 11, customer="cust-7"))  # 100 - 30 - 60 = 10 left
    assert info.value.reason == "CUSTOMER_CAP_EXCEEDED"
    assert last_notification(app) == before
    assert app.get_budget("emp-2").pending_action_count == 1
    app.execute(approve(hold.action_id))
    usage = app.get_customer_usage("cust-7").usage
    assert (usage.spent, usage.held, usage.remaining) == (usd(90), usd(0), usd(10))


# ============================================================================ holds: approve, deny, expire


def _three_holds(app) -> tuple[str, str, str, str]:
    """emp-1 (approver mgr-1), emp-2 (approver mgr-2), emp-3 (mgr-1 and mgr-2), all in team-a, all over their
    per-action limit of 50; emp-1 also has one normal action. Returns (recorded, hold1, hold2, hold3)."""
    app.execute(team_cap("team-a", usd(1000)))
    app.execute(customer_cap(usd(1000)))
    app.execute(open_cmd("emp-1", policy=make_policy(100, approvers=["mgr-1"])))
    app.execute(open_cmd("emp-2", policy=make_policy(100, approvers=["mgr-2"])))
    app.execute(open_cmd("emp-3", policy=make_policy(100, approvers=["mgr-1", "mgr-2"])))
    recorded, _ = app.execute(action_cmd("emp-1", 30, customer="cust-1"))
    h1, _ = app.execute(action_cmd("emp-1", 60, customer="cust-1"))
    h2, _ = app.execute(action_cmd("emp-2", 55, customer="cust-2"))
    h3, _ = app.execute(action_cmd("emp-3", 70, customer="cust-1"))
    assert recorded.state == "RECORDED"
    assert h1.state == h2.state == h3.state == "PENDING_APPROVAL"
    return recorded.action_id, h1.action_id, h2.action_id, h3.action_id


def test_hold_is_reported_everywhere(app, clock) -> None:
    _, h1, _, _ = _three_holds(app)
    action = app.get_action(h1)
    assert action.state == "PENDING_APPROVAL"
    assert action.escalation_reasons == ("PER_ACTION_LIMIT_EXCEEDED",)
    assert action.expire_time == clock.now + TIMEOUT
    assert action.approver_ids == ("mgr-1",)
    assert action.decision is None

    budget = app.get_budget("emp-1")
    assert budget.spent == usd(30)
    assert budget.held == usd(60)
    assert budget.remaining == usd(10)
    assert budget.pending_action_count == 1
    assert budget.period_action_count == 1

    team = app.get_team("team-a")
    assert team.usage.spent == usd(30)
    assert team.usage.held == usd(60 + 55 + 70)
    assert team.usage.remaining == usd(1000 - 30 - 185)
    assert team.member_count == 3

    cust1 = app.get_customer_usage("cust-1")
    assert cust1.usage.spent == usd(30)
    assert cust1.usage.held == usd(130)
    assert cust1.usage.remaining == usd(1000 - 160)
    assert cust1.action_count == 3
    cust2 = app.get_customer_usage("cust-2")
    assert (cust2.usage.spent, cust2.usage.held, cust2.action_count) == (usd(0), usd(55), 1)

    # The budget's remaining room counts the hold: 10 more fits without escalation.
    _, after = app.execute(action_cmd("emp-1", 10, customer="cust-3"))
    assert after.remaining == usd(0)
    assert after.held == usd(60)


def test_list_pending_actions(app) -> None:
    recorded, h1, h2, h3 = _three_holds(app)
    ids = lambda page: [a.action_id for a in page.items]

    everything = app.list_actions("", "", None, 0, "", state="PENDING_APPROVAL")
    assert ids(everything) == [h1, h2, h3]
    assert everything.next_page_token == ""
    assert all(a.state == "PENDING_APPROVAL" for a in everything.items)
    assert ids(app.list_actions("", "", None, 0, "", state="PENDING_APPROVAL", approver_id="mgr-1")) == [h1, h3]
    assert ids(app.list_actions("", "", None, 0, "", state="PENDING_APPROVAL", approver_id="mgr-2")) == [h2, h3]
    assert ids(app.list_actions("", "", None, 0, "", state="PENDING_APPROVAL", approver_id="mgr-9")) == []
    assert ids(app.list_actions("", "cust-1", None, 0, "", state="PENDING_APPROVAL")) == [h1, h3]
    assert ids(app.list_actions("emp-1", "", None, 0, "", state="PENDING_APPROVAL")) == [h1]
    assert ids(app.list_actions("emp-1", "", None, 0, "", state="RECORDED")) == [recorded]
    assert ids(app.list_actions("emp-1", "", None, 0, "")) == [recorded, h1]
    assert ids(app.list_actions("", "cust-1", None, 0, "", state="RECORDED")) == [recorded]

    # Paging one at a time through the waiting list.
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = app.list_actions("", "", None, 1, token, state="PENDING_APPROVAL")
        pages += 1
        assert len(page.items) <= 1
        seen += ids(page)
        token = page.next_page_token
        if not token:
            break
        assert pages < 10
    assert seen == [h1, h2, h3]
    assert pages == 3

    # A token stays valid while the list changes under it: the decided action simply drops out.
    first = app.list_actions("", "", None, 1, "", state="PENDING_APPROVAL", approver_id="mgr-1")
    assert ids(first) == [h1]
    app.execute(approve(h3, "mgr-2"))
    rest = app.list_actions("", "", None, 1, first.next_page_token, state="PENDING_APPROVAL", approver_id="mgr-1")
    assert ids(rest) == []
    assert rest.next_page_token == ""
    # A token of one filter is not accepted for another.
    with pytest.raises(InvalidArgument) as info:
        app.list_actions("", "", None, 1, first.next_page_token, state="PENDING_APPROVAL", approver_id="mgr-2")
    assert info.value.reason == "INVALID_PAGE_TOKEN"

    # Decided actions: listed by employee with their state.
    app.execute(deny(h1, "mgr-1"))
    assert ids(app.list_actions("", "", None, 0, "", state="PENDING_APPROVAL")) == [h2]
    assert ids(app.list_actions("emp-1", "", None, 0, "", state="DENIED")) == [h1]
    assert ids(app.list_actions("emp-3", "", None, 0, "", state="APPROVED")) == [h3]
    assert ids(app.list_actions("emp-1", "", None, 0, "", state="PENDING_APPROVAL")) == []


def test_approve_settles_the_hold(app, clock) -> None:
    _, h1, h2, h3 = _three_holds(app)
    clock.advance(timedelta(minutes=10))
    decided = app.execute(approve(h1, "mgr-1", note="good customer", request_id="approve-1"))
    action, budget = decided.action, decided.budget
    assert action.action_id == h1
    assert action.state == "APPROVED"
    assert action.decision is not None
    assert (action.decision.outcome, action.decision.approver_id, action.decision.note) == (
        "APPROVED",
        "mgr-1",
        "good customer",
    )
    assert action.decision.at == clock.now
    assert action.decision.request_id == "approve-1"
    assert budget.spent == usd(90)
    assert budget.held == usd(0)
    assert budget.remaining == usd(10)
    assert budget.pending_action_count == 0
    assert budget.period_action_count == 2
    assert app.get_action(h1) == action
    assert app.get_budget("emp-1").spent == usd(90)

    team = app.get_team("team-a")
    assert team.usage.spent == usd(90)
    assert team.usage.held == usd(55 + 70)
    cust1 = app.get_customer_usage("cust-1")
    assert (cust1.usage.spent, cust1.usage.held) == (usd(90), usd(70))
    assert app.get_or_none(HoldBook.create_id(HoldBook.NAME)).open.keys() == {h2, h3}
    assert len(budget_events(app, "emp-1", Budget.ActionApproved)) == 1


def test_deny_releases_the_hold(app, clock) -> None:
    _, _, h2, _ = _three_holds(app)
    decided = app.execute(deny(h2, "mgr-2", note="too much"))
    action, budget = decided.action, decided.budget
    assert action.state == "DENIED"
    assert action.decision is not None and action.decision.approver_id == "mgr-2"
    assert budget.spent == usd(0)
    assert budget.held == usd(0)
    assert budget.remaining == usd(100)
    assert app.get_team("team-a").usage.held == usd(60 + 70)
    assert app.get_team("team-a").usage.spent == usd(30)
    cust2 = app.get_customer_usage("cust-2")
    assert (cust2.usage.spent, cust2.usage.held, cust2.action_count) == (usd(0), usd(0), 1)
    # The room is back: emp-2 may now spend the whole allowance (its per-action limit is 50, so twice).
    app.execute(action_cmd("emp-2", 50, customer="cust-2"))
    _, after = app.execute(action_cmd("emp-2", 50, customer="cust-2"))
    assert after.remaining == usd(0)
    # A denied action cannot be reversed.
    with pytest.raises(PreconditionFailed) as info:
        app.execute(ReverseAction(request_id="rv", action_id=h2, reason="oops", actor_id="mgr-2"))
    assert info.value.reason == "ACTION_NOT_REVERSIBLE"


def test_approver_checks(app) -> None:
    # A policy may not name its employee as an approver (issue 19) ...
    with pytest.raises(InvalidArgument) as refused:
        app.execute(open_cmd("emp-1", policy=make_policy(100, approvers=["mgr-1", "emp-1"])))
    assert refused.value.reason == "SELF_APPROVER_NOT_ALLOWED"
    assert [v.field for v in refused.value.violations] == ["policy.escalation.approver_ids[1]"]
    assert last_notification(app) == 0
    # ... and nobody decides their own action anyway.
    app.execute(open_cmd("emp-1", policy=make_policy(100, approvers=["mgr-1"]), request_id="open-emp-1-again"))
    hold, _ = app.execute(action_cmd("emp-1", 60))
    plain, _ = app.execute(action_cmd("emp-1", 5))
    before = last_notification(app)
    for cmd in (approve(hold.action_id, "emp-1"), deny(hold.action_id, "emp-1")):
        with pytest.raises(PermissionDenied) as info:
            app.execute(cmd)
        assert info.value.reason == "SELF_APPROVAL_NOT_ALLOWED"
        assert app.get_or_none(RequestRecord.create_id(cmd.request_id, cmd.method)) is None
    for cmd in (approve(hold.action_id, "mgr-2"), deny(hold.action_id, "mgr-2")):
        with pytest.raises(PermissionDenied) as info:
            app.execute(cmd)
        assert info.value.reason == "APPROVER_NOT_AUTHORIZED"
    with pytest.raises(PreconditionFailed) as info:
        app.execute(approve(plain.action_id, "mgr-1"))
    assert info.value.reason == "ACTION_NOT_PENDING"
    assert last_notification(app) == before
    assert app.get_action(hold.action_id).state == "PENDING_APPROVAL"
    budget = app.get_budget("emp-1")
    assert (budget.held, budget.spent) == (usd(60), usd(5))
    # The rightful approver still can.
    action = app.execute(approve(hold.action_id, "mgr-1")).action
    assert action.state == "APPROVED"


def test_already_decided(app) -> None:
    _, h1, h2, _ = _three_holds(app)
    app.execute(approve(h1, "mgr-1"))
    app.execute(deny(h2, "mgr-2"))
    before = last_notification(app)
    for cmd, outcome in (
        (deny(h1, "mgr-1"), "APPROVED"),
        (approve(h1, "mgr-1"), "APPROVED"),
        (approve(h2, "mgr-2"), "DENIED"),
        (deny(h2, "mgr-2"), "DENIED"),
    ):
        with pytest.raises(PreconditionFailed) as info:
            app.execute(cmd)
        assert info.value.reason == "ACTION_ALREADY_DECIDED"
        assert info.value.metadata["outcome"] == outcome
    assert last_notification(app) == before
    assert app.get_action(h1).state == "APPROVED"
    assert app.get_action(h2).state == "DENIED"
    assert len(budget_events(app, "emp-1", Budget.ActionApproved)) == 1
    assert len(budget_events(app, "emp-2", Budget.ActionDenied)) == 1


def test_decisions_on_a_closed_budget(app) -> None:
    """A closed budget spends nothing more: closing it denied its holds (issue 19), so an approver's decision
    finds them decided already (tests/integration/test_lifecycle.py has the rest)."""
    app.execute(open_cmd("emp-1", policy=make_policy(100, approvers=["mgr-1"], max_held=200)))
    first, _ = app.execute(action_cmd("emp-1", 60))
    second, _ = app.execute(action_cmd("emp-1", 55))
    app.execute(CloseBudget(request_id="close-1", employee_id="emp-1", reason="left the company"))
    for decision in (approve(first.action_id), deny(first.action_id)):
        with pytest.raises(PreconditionFailed) as info:
            app.execute(decision)
        assert info.value.reason == "ACTION_ALREADY_DECIDED"
    assert app.get_action(first.action_id).state == app.get_action(second.action_id).state == "DENIED"


def test_a_role_alone_lets_no_named_person_decide(app) -> None:
    """Callers assert no roles yet: a hold for a role only is refused to everyone who decides by name."""
    app.execute(open_cmd("emp-1", policy=make_policy(100, role="duty-manager")))
    held, _ = app.execute(action_cmd("emp-1", 60))
    assert held.state == "PENDING_APPROVAL"
    assert (held.approver_ids, held.approver_role) == ((), "duty-manager")
    with pytest.raises(PermissionDenied) as info:
        app.execute(approve(held.action_id, "mgr-1"))
    assert info.value.reason == "APPROVER_NOT_AUTHORIZED"
    assert info.value.metadata["approver_role"] == "duty-manager"


def test_team_cap_on_a_team_without_budgets(app) -> None:
    app.execute(team_cap("team-z", usd(250), PeriodKind.WEEK))
    team = app.get_team("team-z")
    assert team.member_count == 0
    assert team.usage.period_end - team.usage.period_start == timedelta(days=7)
    app.execute(open_cmd("emp-1", "team-z", make_policy(1000, limit=None)))
    assert app.get_team("team-z").member_count == 1
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", "250.01"))
    assert info.value.reason == "TEAM_CAP_EXCEEDED"
    app.execute(action_cmd("emp-1", 250))
    assert app.get_team("team-z").usage.remaining == usd(0)


DECISION_CASES = {
    "missing action_id": (dict(action_id=""), {"action_id"}),
    "malformed action_id": (dict(action_id="act_nope"), {"action_id"}),
    "missing approver_id": (dict(approver_id=""), {"approver_id"}),
    "bad approver_id": (dict(approver_id="-starts-with-dash"), {"approver_id"}),
    "approver_id with spaces": (dict(approver_id="a b"), {"approver_id"}),
    "oversized note": (dict(note="n" * 2001), {"note"}),
    "control characters in note": (dict(note="bad\x00note"), {"note"}),
    "oversized request_id": (dict(request_id="r" * 129), {"request_id"}),
}


@pytest.mark.parametrize("approve_it", [True, False], ids=["approve", "deny"])
@pytest.mark.parametrize("case", list(DECISION_CASES))
def test_decision_invalid_argument(app, case: str, approve_it: bool) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(100, approvers=["mgr-1"])))
    held, _ = app.execute(action_cmd("emp-1", 60))
    overrides, expected = DECISION_CASES[case]
    values = dict(action_id=held.action_id, approver_id="mgr-1", note="ok", request_id="dec-1", approve=approve_it)
    values.update(overrides)
    before = last_notification(app)
    with pytest.raises(InvalidArgument) as info:
        app.execute(DecideAction(**values))
    assert expected <= {v.field for v in info.value.violations}, info.value.violations
    assert last_notification(app) == before
    assert app.get_action(held.action_id).state == "PENDING_APPROVAL", "an invalid request decides nothing"


REVERSE_CASES = {
    "missing action_id": (dict(action_id=""), {"action_id"}),
    "malformed action_id": (dict(action_id="42"), {"action_id"}),
    "missing reason": (dict(reason=""), {"reason"}),
    "blank reason": (dict(reason="   "), {"reason"}),
    "oversized reason": (dict(reason="r" * 2001), {"reason"}),
    "missing actor_id": (dict(actor_id=""), {"actor_id"}),
    "bad actor_id": (dict(actor_id="no spaces please"), {"actor_id"}),
    "missing reason and actor_id": (dict(reason="", actor_id=""), {"reason", "actor_id"}),
}


@pytest.mark.parametrize("case", list(REVERSE_CASES))
def test_reverse_invalid_argument(app, case: str) -> None:
    app.execute(open_cmd("emp-1"))
    action, _ = app.execute(action_cmd("emp-1", 5))
    overrides, expected = REVERSE_CASES[case]
    values = dict(request_id="rv-1", action_id=action.action_id, reason="mistake", actor_id="mgr-1")
    values.update(overrides)
    with pytest.raises(InvalidArgument) as info:
        app.execute(ReverseAction(**values))
    assert expected <= {v.field for v in info.value.violations}, info.value.violations
    assert app.get_action(action.action_id).state == "RECORDED"


def test_idempotent_decisions_and_reversal(app) -> None:
    _, h1, h2, h3 = _three_holds(app)
    first_approve = app.execute(approve(h1, "mgr-1", request_id="ap-same", note="ok"))
    first_deny = app.execute(deny(h2, "mgr-2", request_id="dn-same", note="no"))
    first_reverse = app.execute(ReverseAction(request_id="rv-same", action_id=h1, reason="mistake", actor_id="mgr-1"))
    # Later changes do not alter the replayed responses.
    app.execute(approve(h3, "mgr-1"))
    app.execute(action_cmd("emp-1", 5))
    before = last_notification(app)

    assert app.execute(approve(h1, "mgr-1", request_id="ap-same", note="ok")) == first_approve
    assert app.execute(deny(h2, "mgr-2", request_id="dn-same", note="no")) == first_deny
    again = app.execute(ReverseAction(request_id="rv-same", action_id=h1, reason="mistake", actor_id="mgr-1"))
    assert again == first_reverse
    assert again.restored_to_current_period is True
    assert last_notification(app) == before
    assert len(budget_events(app, "emp-1", Budget.ActionApproved)) == 1
    assert len(budget_events(app, "emp-2", Budget.ActionDenied)) == 1
    assert len(budget_events(app, "emp-1", Budget.ActionReversed)) == 1

    for cmd in (
        approve(h1, "mgr-1", request_id="ap-same", note="other note"),
        deny(h2, "mgr-2", request_id="dn-same", note="changed"),
        ReverseAction(request_id="rv-same", action_id=h1, reason="other reason", actor_id="mgr-1"),
    ):
        with pytest.raises(AlreadyExists) as info:
            app.execute(cmd)
        assert info.value.reason == "REQUEST_ID_REUSED"
    # A request is (caller, method, request_id): on another method the same request_id is a new request, decided
    # on its own (here refused by the actions' state, not as a reuse).
    for cmd, reason in (
        (deny(h1, "mgr-1", request_id="ap-same", note="ok"), "ACTION_ALREADY_DECIDED"),
        (approve(h3, "mgr-2", request_id="dn-same", note="no"), "ACTION_ALREADY_DECIDED"),
        (ReverseAction(request_id="ap-same", action_id=h1, reason="mistake", actor_id="mgr-1"), "ACTION_ALREADY_REVERSED"),
    ):
        with pytest.raises(PreconditionFailed) as refused:
            app.execute(cmd)
        assert refused.value.reason == reason
    assert last_notification(app) == before


def test_idempotent_decision_on_another_replica(app_factory) -> None:
    first_app = app_factory()
    _, h1, _, _ = _three_holds(first_app)
    response = first_app.execute(approve(h1, "mgr-1", request_id="ap-x"))
    replica = app_factory()
    assert replica.execute(approve(h1, "mgr-1", request_id="ap-x")) == response
    with pytest.raises(AlreadyExists):
        replica.execute(approve(h1, "mgr-1", request_id="ap-x", note="changed"))
    with pytest.raises(PreconditionFailed) as info:
        replica.execute(approve(h1, "mgr-1", request_id="ap-y"))
    assert info.value.reason == "ACTION_ALREADY_DECIDED"


# ============================================================================ expiry


def test_expiry(app, clock) -> None:
    app.execute(team_cap("team-a", usd(100)))
    app.execute(customer_cap(usd(80)))
    app.execute(open_cmd("emp-1", policy=make_policy(100, approvers=["mgr-1"])))
    app.execute(open_cmd("emp-2", policy=make_policy(100)))
    hold, _ = app.execute(action_cmd("emp-1", 60, customer="cust-1"))
    assert hold.expire_time == clock.now + TIMEOUT
    # While the hold lives it counts against the team cap and the customer cap.
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-2", 50, customer="cust-2"))
    assert info.value.reason == "TEAM_CAP_EXCEEDED"
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-2", 30, customer="cust-1"))
    assert info.value.reason == "CUSTOMER_CAP_EXCEEDED"
    assert app.expire_due() == 0  # nothing due yet
    assert app.pending_counts() == (1, 0)  # /metrics: leeway_pending_approvals, leeway_approvals_overdue

    clock.advance(TIMEOUT - timedelta(seconds=1))
    assert app.get_action(hold.action_id).state == "PENDING_APPROVAL"
    assert app.get_budget("emp-1").held == usd(60)
    assert app.expire_due() == 0
    assert app.pending_counts() == (1, 0)

    clock.advance(timedelta(seconds=2))
    assert app.pending_counts() == (0, 1)  # overdue until the expiry task runs
    before = last_notification(app)
    # Past the timeout, before the expiry task ran: shown EXPIRED, holding nothing anywhere.
    action = app.get_action(hold.action_id)
    assert action.state == "EXPIRED"
    assert action.decision is None
    budget = app.get_budget("emp-1")
    assert budget.held == usd(0)
    assert budget.remaining == usd(100)
    assert budget.pending_action_count == 0
    team = app.get_team("team-a")
    assert (team.usage.held, team.usage.remaining) == (usd(0), usd(100))
    assert app.get_customer_usage("cust-1").usage.held == usd(0)
    assert app.list_actions("", "", None, 0, "", state="PENDING_APPROVAL").items == []
    assert last_notification(app) == before  # reading wrote nothing
    with pytest.raises(PreconditionFailed) as info:
        app.execute(approve(hold.action_id, "mgr-1"))
    assert info.value.reason == "APPROVAL_EXPIRED"
    with pytest.raises(PreconditionFailed) as info:
        app.execute(deny(hold.action_id, "mgr-1"))
    assert info.value.reason == "APPROVAL_EXPIRED"
    # The freed room can be used before the expiry task ran.
    app.execute(action_cmd("emp-2", 50, customer="cust-1"))

    assert app.expire_due() == 1
    assert app.pending_counts() == (0, 0)
    expired = budget_events(app, "emp-1", Budget.ActionExpired)
    assert len(expired) == 1
    action = app.get_action(hold.action_id)
    assert action.state == "EXPIRED"
    assert action.decision is not None
    assert action.decision.outcome == "EXPIRED"
    assert action.decision.request_id == f"expire:{hold.action_id}"
    assert app.get_or_none(HoldBook.create_id(HoldBook.NAME)).open == {}
    # One request record, with the expiry task's (empty) actor: the same key on every replica.
    assert app.get_or_none(RequestRecord.create_id(f"expire:{hold.action_id}", ExpireAction.method)) is not None
    team = app.get_team("team-a")
    assert (team.usage.spent, team.usage.held) == (usd(50), usd(0))
    cust1 = app.get_customer_usage("cust-1")
    assert (cust1.usage.spent, cust1.usage.held, cust1.usage.remaining) == (usd(50), usd(0), usd(30))
    assert cust1.action_count == 2

    after = last_notification(app)
    assert app.expire_due() == 0
    assert last_notification(app) == after
    assert len(budget_events(app, "emp-1", Budget.ActionExpired)) == 1
    with pytest.raises(PreconditionFailed) as info:
        app.execute(approve(hold.action_id, "mgr-1"))
    assert info.value.reason == "ACTION_ALREADY_DECIDED"
    with pytest.raises(PreconditionFailed) as info:
        app.execute(ReverseAction(request_id="rv", action_id=hold.action_id, reason="x", actor_id="mgr-1"))
    assert info.value.reason == "ACTION_NOT_REVERSIBLE"


def test_expire_due_respects_limit_and_order(app, clock) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(1000, approvers=["mgr-1"])))
    holds = []
    for i in range(3):
        holds.append(app.execute(action_cmd("emp-1", 60, customer=f"cust-{i}"))[0].action_id)
        clock.advance(timedelta(minutes=1))
    clock.advance(TIMEOUT)
    assert app.expire_due(limit=2) == 2
    assert [app.get_action(h).decision is not None for h in holds] == [True, True, False]
    assert app.expire_due() == 1
    assert app.expire_due() == 0
    assert len(budget_events(app, "emp-1", Budget.ActionExpired)) == 3


def test_two_replicas_expire_at_once(app_factory, clock) -> None:
    setup = app_factory()
    employees = [f"emp-{i}" for i in range(3)]
    for e in employees:
        setup.execute(open_cmd(e, policy=make_policy(10000, approvers=["mgr-1"])))
    setup.execute(team_cap("team-a", usd(100000)))
    holds = [
        setup.execute(action_cmd(employees[i % 3], 60, customer=f"cust-{i % 2}"))[0].action_id for i in range(9)
    ]
    clock.advance(TIMEOUT + timedelta(seconds=1))
    replicas = [app_factory(), app_factory()]
    for r in replicas:  # warm both up (connections, tables) before the race
        r.get_budget("emp-0")

    import structlog.testing

    counts: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(replicas))

    def run(replica) -> None:
        try:
            barrier.wait()
            n = replica.expire_due()
            with lock:
                counts.append(n)
        except BaseException as e:  # noqa: BLE001
            with lock:
                errors.append(e)

    with structlog.testing.capture_logs() as logs:
        threads = [threading.Thread(target=run, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(counts) == 2
    assert all(0 <= n <= len(holds) for n in counts)
    assert sum(counts) >= len(holds)
    failed = [entry for entry in logs if entry.get("event") == "expiry.failed"]
    assert failed == []

    expired = [e for emp in employees for e in budget_events(setup, emp, Budget.ActionExpired)]
    assert len(expired) == len(holds)
    assert Counter(f"{e.originator_id}:{e.action_version}" for e in expired).most_common(1)[0][1] == 1
    for h in holds:
        assert setup.get_action(h).state == "EXPIRED"
    assert setup.get_or_none(HoldBook.create_id(HoldBook.NAME)).open == {}
    team = setup.get_team("team-a")
    assert (team.usage.spent, team.usage.held) == (usd(0), usd(0))
    assert setup.get_team("team-a").usage.remaining == usd(100000)
    assert all(setup.get_budget(e).held == usd(0) for e in employees)
    assert replicas[0].expire_due() == 0
    assert replicas[1].expire_due() == 0


# ============================================================================ reversal


def test_reverse_in_current_period(app, clock) -> None:
    app.execute(team_cap("team-a", usd(1000)))
    app.execute(customer_cap(usd(1000)))
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=None)))
    app.execute(action_cmd("emp-1", 60, customer="cust-1"))
    action, _ = app.execute(action_cmd("emp-1", 40, customer="cust-1"))
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", 1))
    assert info.value.reason == "BUDGET_EXHAUSTED"
    assert app.get_team("team-a").usage.spent == usd(100)
    assert app.get_customer_usage("cust-1").usage.spent == usd(100)

    clock.advance(timedelta(days=2))
    result = app.execute(
        ReverseAction(request_id="rv-1", action_id=action.action_id, reason="entered twice", actor_id="sup-1")
    )
    assert result.restored_to_current_period is True
    assert "can be spent again" in result.explanation
    assert result.action.state == "REVERSED"
    assert result.action.reversal is not None
    assert result.action.reversal.actor_id == "sup-1"
    assert result.action.reversal.reason == "entered twice"
    assert result.action.reversal.at == clock.now
    assert result.action.reversal.restored_to_current_period is True
    assert result.budget.spent == usd(60)
    assert result.budget.remaining == usd(40)
    assert result.budget.period_action_count == 1
    assert app.get_action(action.action_id).state == "REVERSED"
    assert app.get_team("team-a").usage.spent == usd(60)
    cust = app.get_customer_usage("cust-1")
    assert cust.usage.spent == usd(60)
    assert cust.usage.remaining == usd(940)

    with pytest.raises(PreconditionFailed) as info:
        app.execute(ReverseAction(request_id="rv-2", action_id=action.action_id, reason="again", actor_id="sup-1"))
    assert info.value.reason == "ACTION_ALREADY_REVERSED"
    # The 40 can be spent again.
    _, budget = app.execute(action_cmd("emp-1", 40, customer="cust-1"))
    assert budget.spent == usd(100)
    assert budget.remaining == usd(0)


def test_reverse_restores_the_team_cap(app) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(1000, limit=None)))
    app.execute(open_cmd("emp-2", policy=make_policy(1000, limit=None)))
    app.execute(team_cap("team-a", usd(100)))
    app.execute(customer_cap(usd(80)))
    first, _ = app.execute(action_cmd("emp-1", 80, customer="cust-1"))
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-2", 30, customer="cust-2"))
    assert info.value.reason == "TEAM_CAP_EXCEEDED"
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-2", 10, customer="cust-1"))
    assert info.value.reason == "CUSTOMER_CAP_EXCEEDED"
    app.execute(ReverseAction(request_id="rv-1", action_id=first.action_id, reason="wrong", actor_id="sup-1"))
    app.execute(action_cmd("emp-2", 80, customer="cust-1"))
    app.execute(action_cmd("emp-2", 20, customer="cust-2"))
    assert app.get_team("team-a").usage.spent == usd(100)
    assert app.get_customer_usage("cust-1").usage.spent == usd(80)


def test_reverse_approved_action(app) -> None:
    _, h1, h2, _ = _three_holds(app)
    app.execute(approve(h1, "mgr-1"))
    result = app.execute(ReverseAction(request_id="rv-1", action_id=h1, reason="wrong", actor_id="mgr-1"))
    assert result.restored_to_current_period is True
    assert result.budget.spent == usd(30)
    assert result.action.decision is not None and result.action.decision.outcome == "APPROVED"
    assert result.action.state == "REVERSED"
    assert app.get_team("team-a").usage.spent == usd(30)
    assert app.get_customer_usage("cust-1").usage.spent == usd(30)
    # A pending action cannot be reversed.
    with pytest.raises(PreconditionFailed) as info:
        app.execute(ReverseAction(request_id="rv-2", action_id=h2, reason="x", actor_id="mgr-2"))
    assert info.value.reason == "ACTION_NOT_REVERSIBLE"


def test_reverse_in_ended_period(app, clock) -> None:
    app.execute(team_cap("team-a", usd(1000)))
    app.execute(customer_cap(usd(1000)))
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=None)))
    march = clock.now
    action, _ = app.execute(action_cmd("emp-1", 70, customer="cust-1"))
    clock.now = datetime(2025, 4, 2, 9, 0, tzinfo=march.tzinfo)
    app.execute(action_cmd("emp-1", 20, customer="cust-1"))
    assert app.get_team("team-a").usage.spent == usd(20)
    assert app.get_team("team-a", at=march).usage.spent == usd(90 - 20)

    result = app.execute(ReverseAction(request_id="rv-1", action_id=action.action_id, reason="late", actor_id="sup-1"))
    assert result.restored_to_current_period is False
    assert "period that has ended" in result.explanation
    assert "2025-03-14" in result.explanation
    assert result.action.state == "REVERSED"
    assert result.action.reversal is not None
    assert result.action.reversal.restored_to_current_period is False
    budget = app.get_budget("emp-1")
    assert budget.spent == usd(20)
    assert budget.remaining == usd(80)
    assert result.budget.spent == usd(20)
    # The current period's cap usage is unchanged; March's is corrected.
    assert app.get_team("team-a").usage.spent == usd(20)
    assert app.get_team("team-a", at=march).usage.spent == usd(0)
    assert app.get_customer_usage("cust-1").usage.spent == usd(20)
    ledger = app.get_or_none(CustomerLedger.create_id("cust-1"))
    assert ledger.usage(Cap(usd(1000), PeriodKind.MONTH), march).spent == usd(0)
    # The budget's March history was corrected too.
    assert app.get_budget("emp-1", as_of=march + timedelta(hours=1)).spent == usd(70)  # as it stood then
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", "80.01"))
    assert info.value.reason == "BUDGET_EXHAUSTED"


# ============================================================================ approval under the policy of the request


def test_approval_is_judged_by_the_policy_it_was_requested_under(app, clock) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=50, approvers=["mgr-1"])))
    hold, _ = app.execute(action_cmd("emp-1", 60))
    assert hold.policy_version == 1
    clock.advance(timedelta(minutes=5))
    # A stricter policy that would refuse the action outright now, with another approver.
    stricter = make_policy(100, limit=10, approvers=["mgr-2"])
    updated = app.execute(UpdatePolicy(request_id="up-1", employee_id="emp-1", policy=stricter))
    assert updated.policy_version == 2
    assert updated.held == usd(60)
    with pytest.raises(PermissionDenied) as info:
        app.execute(approve(hold.action_id, "mgr-2"))  # not an approver named when it was requested
    assert info.value.reason == "APPROVER_NOT_AUTHORIZED"
    decided = app.execute(approve(hold.action_id, "mgr-1"))
    action, budget = decided.action, decided.budget
    assert action.state == "APPROVED"
    assert action.policy_version == 1
    assert budget.policy_version == 2
    assert budget.spent == usd(60)
    assert budget.held == usd(0)
    assert budget.remaining == usd(40)
    # The new policy applies to new actions.
    refused_update = make_policy(100, limit=10)
    app.execute(UpdatePolicy(request_id="up-2", employee_id="emp-1", policy=refused_update))
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", 11))
    assert info.value.reason == "PER_ACTION_LIMIT_EXCEEDED"


def test_hold_survives_policy_change_to_refuse(app) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=50, approvers=["mgr-1"])))
    hold, _ = app.execute(action_cmd("emp-1", 60))
    app.execute(UpdatePolicy(request_id="up-1", employee_id="emp-1", policy=make_policy(100, limit=10)))
    assert app.get_action(hold.action_id).state == "PENDING_APPROVAL"
    decided = app.execute(approve(hold.action_id, "mgr-1"))
    action, budget = decided.action, decided.budget
    assert action.state == "APPROVED"
    assert budget.spent == usd(60)


# ============================================================================ as_of


def test_get_budget_as_of(app, clock) -> None:
    opened_at = clock.now  # 2025-03-14 12:00
    p1 = make_policy(100, limit=None)
    app.execute(open_cmd("emp-1", policy=p1))
    clock.advance(timedelta(days=1))
    app.execute(action_cmd("emp-1", 10))
    clock.advance(timedelta(days=1))
    app.execute(action_cmd("emp-1", 20))
    clock.advance(timedelta(days=1))
    t1 = clock.now  # 17 March: spent 30 under policy 1
    clock.advance(timedelta(days=1))
    p2 = make_policy(200, limit=50, approvers=["mgr-1"], timeout=timedelta(days=10))
    app.execute(UpdatePolicy(request_id="up-1", employee_id="emp-1", policy=p2))
    clock.advance(timedelta(days=1))
    app.execute(action_cmd("emp-1", 30))
    clock.advance(timedelta(hours=1))
    hold, _ = app.execute(action_cmd("emp-1", 70))
    clock.advance(timedelta(days=1))
    t2 = clock.now  # 20 March: spent 60, held 70 under policy 2
    clock.advance(timedelta(days=1))
    app.execute(approve(hold.action_id, "mgr-1"))
    clock.advance(timedelta(days=1))
    app.execute(action_cmd("emp-1", 5))
    clock.advance(timedelta(minutes=1))
    t3 = clock.now

    at_open = app.get_budget("emp-1", as_of=opened_at)
    assert (at_open.version, at_open.spent, at_open.policy_version) == (1, usd(0), 1)

    expected = {
        t1: {"version": 3, "policy_version": 1, "policy": p1, "allowance": usd(100), "spent": usd(30), "held": usd(0),
             "remaining": usd(70), "period_action_count": 2},
        t2: {"version": 6, "policy_version": 2, "policy": p2, "allowance": usd(200), "spent": usd(60), "held": usd(70),
             "remaining": usd(70), "pending_action_count": 1},
        t3: {"version": 8, "policy_version": 2, "spent": usd(135), "held": usd(0), "remaining": usd(65)},
    }  # fmt: skip
    for moment, figures in expected.items():
        view = app.get_budget("emp-1", as_of=moment)
        assert {name: getattr(view, name) for name in figures} == figures, moment
    assert app.get_budget("emp-1", as_of=t3) == app.get_budget("emp-1")

    # Exactly at the moment of an event: that event is included.
    assert app.get_budget("emp-1", as_of=opened_at + timedelta(days=1)).version == 2
    assert app.get_budget("emp-1", as_of=opened_at + timedelta(days=1) - timedelta(microseconds=1)).version == 1

    with pytest.raises(NotFound) as info:
        app.get_budget("emp-1", as_of=opened_at - timedelta(seconds=1))
    assert info.value.reason == "BUDGET_NOT_FOUND"
    with pytest.raises(InvalidArgument) as info:
        app.get_budget("emp-1", as_of=clock.now + timedelta(seconds=1))
    assert [v.field for v in info.value.violations] == ["as_of"]
    with pytest.raises(NotFound) as info:
        app.get_budget("nobody", as_of=t1)
    assert info.value.reason == "BUDGET_NOT_FOUND"


def test_get_budget_as_of_after_period_end(app, clock) -> None:
    """A moment after the period ended but before anything was written in the new one: the new period, empty."""
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=None)))
    app.execute(action_cmd("emp-1", 40))
    clock.now = datetime(2025, 4, 3, 12, 0, tzinfo=clock.now.tzinfo)
    app.execute(action_cmd("emp-1", 15))
    early_april = datetime(2025, 4, 1, 6, 0, tzinfo=clock.now.tzinfo)
    view = app.get_budget("emp-1", as_of=early_april)
    assert view.version == 2
    assert view.period_start == datetime(2025, 4, 1, tzinfo=clock.now.tzinfo)
    assert view.spent == usd(0)
    assert view.remaining == usd(100)
    late_march = datetime(2025, 3, 31, 23, 0, tzinfo=clock.now.tzinfo)
    assert app.get_budget("emp-1", as_of=late_march).spent == usd(40)
    assert app.get_budget("emp-1").spent == usd(15)


# ============================================================================ caps under concurrency


def _race(
    apps_for_threads: list[Any], commands: list[RecordAction]
) -> tuple[list[Any], Counter[str], list[BaseException]]:
    """Runs the commands from len(apps_for_threads) threads (thread i uses apps_for_threads[i])."""
    accepted: list[Any] = []

    def run(index: int, cmd: RecordAction) -> None:
        action, _ = apps_for_threads[index].execute(cmd)
        accepted.append(action)

    refused, errors = drain(commands, len(apps_for_threads), run, expected=(PreconditionFailed, Conflict))
    return accepted, Counter(e.reason for e in refused), errors  # type: ignore[attr-defined]


THREADS = 16
#: Separate LeewayApplication instances on one database in "replicas" mode (each thread uses one of them).
#: Each holds a PostgreSQL connection pool of its own (10 connections), so not one per thread.
REPLICAS = 4
EMPLOYEES = [f"emp-{i}" for i in range(4)]
AMOUNT = 25


def _apps(app_factory, mode: str) -> tuple[Any, list[Any]]:
    """The app that sets up and checks, and the app each of the THREADS threads uses."""
    main = app_factory()
    if mode == "shared":
        return main, [main] * THREADS
    replicas = [main] + [app_factory() for _ in range(REPLICAS - 1)]
    for r in replicas:
        r.ping()
    return main, [replicas[i % REPLICAS] for i in range(THREADS)]


def _recorded_total(app, employees: Iterable[str]) -> tuple[Decimal, int]:
    total, count = Decimal(0), 0
    for e in employees:
        for event in budget_events(app, e, Budget.ActionRecorded):
            assert not getattr(event, "pending", False)
            total += event.amount
            count += 1
    return total, count


TEAM_CAP = 500  # 20 actions of AMOUNT
CUSTOMER_CAP = 300  # 12 actions of AMOUNT
ATTEMPTS = 80  # 80 * 25 = 2000: far over either cap


def _open_team(main) -> None:
    for e in EMPLOYEES:
        main.execute(open_cmd(e, "team-c", policy=make_policy(100000, limit=None)))


def _check_log_matches(main, accepted: list[Any]) -> Decimal:
    """The RECORDED actions in the event log are exactly the accepted ones; returns their total."""
    accepted_total = sum((a.amount.amount for a in accepted), Decimal(0))
    assert len({a.action_id for a in accepted}) == len(accepted)
    recorded_total, recorded_count = _recorded_total(main, EMPLOYEES)
    assert (recorded_total, recorded_count) == (accepted_total, len(accepted))
    assert sum((main.get_budget(e).spent.amount for e in EMPLOYEES), Decimal(0)) == recorded_total
    for a in accepted:
        assert main.get_action(a.action_id).state == "RECORDED"
    return accepted_total


def _race_under_caps(
    app_factory, mode: str, *, team: int | None, customer: int | None, customer_of: Any, prefix: str
) -> tuple[Any, list[Any], Counter[str], int]:
    """Four employees of team-c under the caps given race ATTEMPTS actions of AMOUNT (customer_of(n) for the
    n-th); every attempt is accepted, refused by a cap or (rarely) gives up. Returns (main app, accepted,
    refusals by reason, give-ups)."""
    main, apps = _apps(app_factory, mode)
    _open_team(main)
    if team is not None:
        main.execute(team_cap("team-c", usd(team)))
    if customer is not None:
        main.execute(customer_cap(usd(customer)))
    commands = [
        action_cmd(EMPLOYEES[n % 4], AMOUNT, customer=customer_of(n), request_id=f"{prefix}-{n}") for n in range(ATTEMPTS)
    ]
    accepted, refusals, errors = _race(apps, commands)

    assert errors == []
    conflicts = refusals.pop("CONCURRENCY_CONFLICT", 0)
    assert conflicts <= 3, f"{conflicts} commands gave up after {THREADS} threads raced"
    assert set(refusals) <= {"TEAM_CAP_EXCEEDED", "CUSTOMER_CAP_EXCEEDED"}
    assert len(accepted) + sum(refusals.values()) + conflicts == ATTEMPTS
    return main, accepted, refusals, conflicts


@pytest.mark.parametrize("mode", ["shared", "replicas"])
def test_team_cap_holds_under_concurrency(app_factory, mode: str) -> None:
    main, accepted, refusals, _ = _race_under_caps(
        app_factory, mode, team=TEAM_CAP, customer=None, customer_of=lambda n: f"cust-{n}", prefix="t"
    )
    assert set(refusals) == {"TEAM_CAP_EXCEEDED"}
    # Once anything was refused for the cap the cap was full (every amount is AMOUNT): exactly what fits.
    assert len(accepted) == TEAM_CAP // AMOUNT
    assert {a.employee_id for a in accepted} <= set(EMPLOYEES)
    total = _check_log_matches(main, accepted)
    assert total == Decimal(TEAM_CAP)
    team = main.get_team("team-c")
    assert team.usage.spent == usd(total)
    assert team.usage.held == usd(0)
    assert team.usage.remaining == usd(0)
    # Each action had a customer of its own: the accepted ones were noted, the refused ones left no trace.
    served = {a.customer_id for a in accepted}
    assert all(main.get_customer_usage(c).action_count == 1 for c in served)
    unserved = [f"cust-{n}" for n in range(ATTEMPTS) if f"cust-{n}" not in served]
    assert all(main.get_customer_usage(c).action_count == 0 for c in unserved[:5])


@pytest.mark.parametrize("mode", ["replicas"])
def test_customer_cap_holds_across_employees_under_concurrency(app_factory, mode: str) -> None:
    main, accepted, refusals, _ = _race_under_caps(
        app_factory, mode, team=None, customer=CUSTOMER_CAP, customer_of=lambda n: "cust-hot", prefix="c"
    )
    assert set(refusals) == {"CUSTOMER_CAP_EXCEEDED"}
    assert len(accepted) == CUSTOMER_CAP // AMOUNT
    total = _check_log_matches(main, accepted)
    assert total == Decimal(CUSTOMER_CAP)
    usage = main.get_customer_usage("cust-hot")
    assert usage.usage.spent == usd(CUSTOMER_CAP)
    assert usage.usage.held == usd(0)
    assert usage.usage.remaining == usd(0)
    assert usage.action_count == len(accepted)
    assert main.get_team("team-c").member_count == 4


@pytest.mark.parametrize("mode", ["shared"])
def test_team_and_customer_caps_together_under_concurrency(app_factory, mode: str) -> None:
    """Team cap 500 and a customer cap of 300, three quarters of the attempts for cust-a, the rest for cust-b.
    Whatever the interleaving, exactly 500 is accepted (without give-ups): if the team cap refused nothing,
    every refusal was a full customer (300), and both full would be 600 > 500, while a customer refused
    nothing would have received all its attempts (at least 500 > 300)."""
    customers = ("cust-a", "cust-b")
    main, accepted, refusals, conflicts = _race_under_caps(
        app_factory, mode, team=TEAM_CAP, customer=CUSTOMER_CAP, customer_of=lambda n: customers[n // 4 % 4 == 3], prefix="b"
    )
    total = _check_log_matches(main, accepted)
    if conflicts == 0 or refusals["TEAM_CAP_EXCEEDED"]:
        assert total == Decimal(TEAM_CAP)
    assert total <= Decimal(TEAM_CAP)
    per_customer: Counter[str] = Counter()
    for a in accepted:
        per_customer[a.customer_id] += a.amount.amount
    assert all(v <= CUSTOMER_CAP for v in per_customer.values())
    assert main.get_team("team-c").usage.spent == usd(total)
    for c in customers:
        usage = main.get_customer_usage(c)
        assert usage.usage.spent == usd(per_customer[c])
        assert usage.action_count == sum(1 for a in accepted if a.customer_id == c)


# ============================================================================ escalated limits of the employee


def test_pending_bends_count_against_the_quota(app, clock) -> None:
    rule = BendableRule("LATE_FEE", max_per_period=1, max_value=usd(20))
    app.execute(open_cmd("emp-1", policy=make_policy(100, rules=[rule], approvers=["mgr-1"])))
    first, _ = app.execute(bend_cmd("emp-1", 5))
    assert first.state == "RECORDED"
    second, _ = app.execute(bend_cmd("emp-1", 25, customer="cust-2"))  # over the quota and the bend's value
    assert second.state == "PENDING_APPROVAL"
    assert second.escalation_reasons == ("RULE_BEND_QUOTA_EXCEEDED", "RULE_BEND_VALUE_EXCEEDED")
    third, _ = app.execute(bend_cmd("emp-1", 0, customer="cust-3"))
    assert third.escalation_reasons == ("RULE_BEND_QUOTA_EXCEEDED",)
    app.execute(deny(second.action_id))
    clock.advance(TIMEOUT)
    assert app.get_action(third.action_id).state == "EXPIRED"
    assert app.expire_due() == 1
    budget = app.get_budget("emp-1")
    assert (budget.spent, budget.held, budget.period_action_count) == (usd(5), usd(0), 1)
    # Reversing the one bend that counted gives the quota back.
    app.execute(ReverseAction(request_id="rv-1", action_id=first.action_id, reason="waived", actor_id="mgr-1"))
    again, _ = app.execute(bend_cmd("emp-1", 0, customer="cust-4"))
    assert again.state == "RECORDED"


def test_escalated_per_customer_limit(app) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(1000, limit=None, per_customer=50, approvers=["mgr-1"])))
    app.execute(action_cmd("emp-1", 40, customer="cust-1"))
    hold, budget = app.execute(action_cmd("emp-1", 20, customer="cust-1"))
    assert hold.state == "PENDING_APPROVAL"
    assert hold.escalation_reasons == ("PER_CUSTOMER_LIMIT_EXCEEDED",)
    assert budget.held == usd(20)
    # The held amount counts toward the customer's limit too, while another customer is untouched.
    second, _ = app.execute(action_cmd("emp-1", 1, customer="cust-1"))
    assert second.state == "PENDING_APPROVAL"
    other, _ = app.execute(action_cmd("emp-1", 50, customer="cust-2"))
    assert other.state == "RECORDED"
    decided = app.execute(approve(hold.action_id))
    action, budget = decided.action, decided.budget
    assert action.state == "APPROVED"
    assert budget.spent == usd(110)
    assert budget.held == usd(1)
