"""Periods that account honestly (issue 19), through LeewayApplication on SQLite and PostgreSQL.

Reproduced before: just after midnight a $60 hold from the day before showed held 0 and remaining 100 (right for the
new day, but nowhere else did it show), and approving it booked the $60 into a day already closed
(``closed_period_spent`` 0), so no period ever counted it. Now a hold belongs to the period it was requested in
and stays visible there until decided; approving it after that period ended spends it there, updates that
period's figures (the budget's, the team's and the customer's), and the response says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from builders import action_cmd, approve, customer_cap, deny, make_policy, open_cmd, reverse_cmd, team_cap, usd
from leeway.domain.errors import InvalidArgument, NotFound
from leeway.domain.ledgers import CustomerLedger
from leeway.domain.periods import PeriodKind
from leeway.domain.tally import Cap

UTC = timezone.utc
DAY1 = datetime(2025, 3, 14, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


@pytest.fixture
def app(app_factory, clock):
    clock.now = DAY1 + timedelta(hours=23, minutes=30)
    app = app_factory()
    daily = make_policy(100, limit=50, approvers=("sup-1",), timeout=timedelta(hours=48), period=PeriodKind.DAY)
    app.execute(open_cmd("ann", "desk", daily))
    app.execute(team_cap("desk", usd(1000), PeriodKind.DAY))
    app.execute(customer_cap(usd(1000), PeriodKind.DAY))
    return app


def test_a_hold_across_midnight_is_spent_in_the_day_it_was_requested(app, clock) -> None:
    hold, _ = app.execute(action_cmd("ann", 60, customer="guest-42"))
    app.execute(action_cmd("ann", 10, customer="guest-42"))
    assert app.get_budget("ann").held == usd(60)

    clock.now = DAY2 + timedelta(minutes=30)
    today = app.get_budget("ann")
    assert (today.period_start, today.spent, today.held, today.remaining) == (DAY2, usd(0), usd(0), usd(100))
    assert today.held_in_ended_periods == usd(60) and today.pending_action_count == 1  # visible, where it belongs
    yesterday = app.get_budget("ann", period_start=DAY1)
    assert (yesterday.period_start, yesterday.period_end) == (DAY1, DAY2)
    assert (yesterday.spent, yesterday.held, yesterday.remaining) == (usd(10), usd(60), usd(30))
    assert app.get_budget("ann", period_start=DAY1 + timedelta(hours=5)) == yesterday  # any moment of the day

    approved = app.execute(approve(hold.action_id, "sup-1"))
    assert approved.action.state == "APPROVED" and not approved.spent_in_current_period
    assert "requested on 2025-03-14, in a period that has ended" in approved.explanation
    assert "2025-03-15 to 2025-03-16" in approved.explanation
    assert (approved.budget.spent, approved.budget.remaining, approved.budget.held_in_ended_periods) == (
        usd(0), usd(100), usd(0)
    )
    yesterday = app.get_budget("ann", period_start=DAY1)
    assert (yesterday.spent, yesterday.held, yesterday.remaining, yesterday.period_action_count) == (
        usd(70), usd(0), usd(30), 2
    )
    # The team's and the customer's tallies count it on the day it was requested, not today.
    assert app.get_team("desk").usage.spent == usd(0)
    assert app.get_team("desk", at=DAY2 - timedelta(seconds=1)).usage.spent == usd(70)
    ledger = app.get_or_none(CustomerLedger.create_id("guest-42"))
    cap = Cap(usd(1000), PeriodKind.DAY)
    assert ledger.usage(cap, DAY2 - timedelta(seconds=1)).spent == usd(70)
    assert ledger.usage(cap, clock.now).spent == usd(0)
    # A retry answers the same, also where the amount went.
    assert app.execute(approve(hold.action_id, "sup-1", request_id=approved.action.decision.request_id)) == approved

    # Approved today, a hold of today is spent today.
    today_hold, _ = app.execute(action_cmd("ann", 55, customer="guest-42"))
    approved = app.execute(approve(today_hold.action_id, "sup-1"))
    assert approved.spent_in_current_period and approved.explanation.startswith("55 USD was spent in the current period")


def test_a_denied_or_reversed_action_of_an_ended_period_corrects_that_period(app, clock) -> None:
    held, _ = app.execute(action_cmd("ann", 60))
    recorded, _ = app.execute(action_cmd("ann", 20))
    clock.now = DAY2 + timedelta(hours=1)
    denied = app.execute(deny(held.action_id, "sup-1"))
    assert not denied.spent_in_current_period and "released" in denied.explanation
    app.execute(reverse_cmd(recorded.action_id))
    yesterday = app.get_budget("ann", period_start=DAY1)
    assert (yesterday.spent, yesterday.held, yesterday.remaining, yesterday.period_action_count) == (
        usd(0), usd(0), usd(100), 0
    )


def test_a_period_under_another_policy(app, clock) -> None:
    """The allowance of an ended period is the one in force when it ended."""
    from leeway.application.commands import UpdatePolicy

    app.execute(action_cmd("ann", 30))
    app.execute(UpdatePolicy("u1", "ann", make_policy(300, limit=50, approvers=("sup-1",), period=PeriodKind.DAY), 0))
    clock.now = DAY2 + timedelta(hours=1)
    app.execute(UpdatePolicy("u2", "ann", make_policy(80, limit=50, approvers=("sup-1",), period=PeriodKind.DAY), 0))
    yesterday = app.get_budget("ann", period_start=DAY1)
    assert (yesterday.allowance, yesterday.remaining, yesterday.policy_version) == (usd(300), usd(270), 2)
    assert app.get_budget("ann").allowance == usd(80)


def test_period_start_is_checked(app, clock) -> None:
    with pytest.raises(InvalidArgument) as refused:
        app.get_budget("ann", period_start=clock.now + timedelta(hours=1))
    assert [v.field for v in refused.value.violations] == ["period_start"]
    with pytest.raises(InvalidArgument) as refused:
        app.get_budget("ann", as_of=clock.now, period_start=DAY1)
    assert [v.field for v in refused.value.violations] == ["period_start"]
    with pytest.raises(NotFound) as missing:
        app.get_budget("ann", period_start=DAY1 - timedelta(days=3))  # before the budget was opened
    assert missing.value.reason == "BUDGET_NOT_FOUND"
    # The current period: exactly what GetBudget says now.
    assert app.get_budget("ann", period_start=DAY1 + timedelta(hours=1)) == app.get_budget("ann")
    clock.now = DAY1 + timedelta(days=500)
    app.execute(action_cmd("ann", 1))  # rolls the budget over: only 400 days of figures per day are kept
    with pytest.raises(InvalidArgument) as refused:
        app.get_budget("ann", period_start=DAY1 + timedelta(hours=1))
    assert "400 days" in refused.value.violations[0].description
