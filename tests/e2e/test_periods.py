"""Periods that account honestly, end to end (issue 19): a hold requested yesterday (written by the application with
a clock set to yesterday, on the database a real `leeway serve` then serves) is approved today through the client."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import grpc
from builders import action_cmd, make_policy, money, open_cmd, team_cap
from leeway.application import LeewayApplication
from leeway.domain.periods import PeriodKind, period_bounds
from leeway.settings import Settings
from leeway_client import InvalidArgumentError, LeewayClient

from .helpers import amount, expect_error


def test_a_hold_of_yesterday_is_approved_into_yesterday(make_server, database_url) -> None:
    now = datetime.now(timezone.utc)
    yesterday = now - timedelta(days=1)
    day_before, _ = period_bounds(PeriodKind.DAY, yesterday)
    app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env(), clock=lambda: yesterday)
    try:
        daily = make_policy(100, limit=50, approvers=("sup-1",), timeout=timedelta(hours=48), period=PeriodKind.DAY,
                            currency="EUR")
        app.execute(open_cmd("ann", "desk", daily))
        app.execute(team_cap("desk", money(1000, "EUR"), PeriodKind.DAY))
        hold, _ = app.execute(action_cmd("ann", money(60, "EUR"), customer="guest-42"))
        assert hold.state == "PENDING_APPROVAL"
    finally:
        app.close()

    server = make_server(database_url)
    server.start()
    with LeewayClient(server.target, timeout=10.0) as leeway:
        today = leeway.get_budget("ann")
        assert (amount(today.held), amount(today.remaining), amount(today.held_in_ended_periods)) == (0, 100, 60)
        then = leeway.get_budget("ann", period_start=yesterday)
        assert then.period_start.ToDatetime(tzinfo=timezone.utc) == day_before
        assert (amount(then.spent), amount(then.held), amount(then.remaining)) == (0, 60, 40)

        approved = leeway.approve_action(hold.action_id, "sup-1", note="fine")
        assert not approved.spent_in_current_period
        assert f"requested on {day_before.date().isoformat()}, in a period that has ended" in approved.explanation
        assert amount(approved.budget.spent) == 0 and amount(approved.budget.held_in_ended_periods) == 0
        then = leeway.get_budget("ann", period_start=day_before)
        assert (amount(then.spent), amount(then.held), amount(then.remaining), then.period_action_count) == (
            60, 0, 40, 1
        )
        assert amount(leeway.get_team("desk").spent) == Decimal(0)  # counted yesterday, not today

        error = expect_error(
            InvalidArgumentError, "INVALID_ARGUMENT",
            lambda: leeway.get_budget("ann", period_start=now + timedelta(hours=1)),
        )
        assert error.field_violations == [("period_start", "must not be in the future")]
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
