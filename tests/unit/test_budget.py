from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest

from builders import replay
from leeway.domain.actions import ActionRequest
from leeway.domain.budget import Budget
from leeway.domain.ids import budget_id_for, format_action_id, parse_action_id
from leeway.domain.views import CLOSED, OPEN
from leeway.domain.errors import Conflict, PreconditionFailed
from leeway.domain.money import Money
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import ActionKind, BendableRule, Policy

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)


def usd(amount: str) -> Money:
    return Money(Decimal(amount), "USD")


def policy(
    allowance: str = "100",
    *,
    period: PeriodKind = PeriodKind.MONTH,
    limit: str | None = "50",
    kinds: tuple[ActionKind, ...] = (ActionKind.REFUND, ActionKind.CREDIT, ActionKind.RULE_BEND),
    currency: str = "USD",
) -> Policy:
    built, problems = Policy.build(
        period_allowance=Money(Decimal(allowance), currency),
        period=period,
        per_action_limit=None if limit is None else Money(Decimal(limit), currency),
        allowed_kinds=list(kinds),
        bendable_rules=[BendableRule("LATE_FEE")],
    )
    assert not problems
    assert built is not None
    return built


def open_budget(p: Policy | None = None, now: datetime = NOW) -> Budget:
    return Budget.open(employee_id="emp-1", team_id="team-a", display_name="Ada", policy=p or policy(), now=now)


def request(amount: Money | str, kind: ActionKind = ActionKind.REFUND, customer: str = "cust-1") -> ActionRequest:
    return ActionRequest(
        customer_id=customer,
        case_id="",
        kind=kind,
        amount=usd(amount) if isinstance(amount, str) else amount,
        reason="late delivery",
        details={"rule_code": "LATE_FEE"} if kind is ActionKind.RULE_BEND else {"order_id": "o-1"},
    )


def record(budget: Budget, amount: Money | str, kind: ActionKind = ActionKind.REFUND, now: datetime = NOW) -> str:
    return budget.record_action(request(amount, kind), request_id=f"r-{uuid4()}", now=now)


def state(b: Budget) -> tuple:
    return (
        b.id, b.version, b.employee_id, b.team_id, b.policy, b.policy_version, b.period_start, b.period_end,
        b.spent, b.period_action_count, b.daily, b.state, b.closed_at, b.close_reason,
    )


# ---------------------------------------------------------------- open


def test_open() -> None:
    b = open_budget()
    assert b.id == budget_id_for("emp-1")
    assert b.version == 1
    assert b.state == OPEN
    assert b.policy_version == 1
    assert (b.period_start, b.period_end) == (
        datetime(2025, 3, 1, tzinfo=timezone.utc),
        datetime(2025, 4, 1, tzinfo=timezone.utc),
    )
    assert b.spent == 0
    events = b.collect_events()
    assert [type(e) for e in events] == [Budget.Opened]
    view = b.view(NOW)
    assert view.remaining == usd("100")
    assert view.spent == usd("0")
    assert view.period_action_count == 0


def test_budget_id_is_deterministic() -> None:
    assert budget_id_for("emp-1") == budget_id_for("emp-1") != budget_id_for("emp-2")


# ---------------------------------------------------------------- record_action (each rule: test_rules.py)


def test_record_action_success() -> None:
    b = open_budget()
    b.collect_events()
    action_id = record(b, "30")
    assert action_id == format_action_id(b.id, 2)
    assert b.spent == Decimal("30")
    assert b.period_action_count == 1
    (event,) = b.collect_events()
    assert isinstance(event, Budget.ActionRecorded)
    assert event.amount == Decimal("30") and event.currency == "USD" and event.kind == "REFUND"
    assert event.policy_version == 1 and event.team_id == "team-a"
    assert event.occur_time == NOW
    assert b.view(NOW).remaining == usd("70")


def test_rule_bend_of_zero_is_allowed_in_the_domain() -> None:
    b = open_budget()
    action_id = record(b, "0", ActionKind.RULE_BEND)
    assert parse_action_id(action_id) == (b.id, 2)
    assert b.spent == 0
    assert b.period_action_count == 1


# ---------------------------------------------------------------- periods


def test_period_roll_over_emits_one_event_and_resets_spent() -> None:
    b = open_budget()
    record(b, "50")
    record(b, "45")
    b.collect_events()
    later = datetime(2025, 7, 2, 9, tzinfo=timezone.utc)  # several periods later: still one event
    record(b, "10", now=later)
    events = b.collect_events()
    assert [type(e) for e in events] == [Budget.PeriodRolledOver, Budget.ActionRecorded]
    rolled = events[0]
    assert rolled.closed_period_start == datetime(2025, 3, 1, tzinfo=timezone.utc)
    assert rolled.closed_period_spent == Decimal("95")
    assert rolled.closed_period_action_count == 2
    assert (b.period_start, b.period_end) == (
        datetime(2025, 7, 1, tzinfo=timezone.utc),
        datetime(2025, 8, 1, tzinfo=timezone.utc),
    )
    assert b.spent == Decimal("10")
    assert b.period_action_count == 1


def test_roll_over_at_exact_period_end() -> None:
    b = open_budget()
    b.collect_events()
    b.roll_over_if_due(datetime(2025, 3, 31, 23, 59, 59, tzinfo=timezone.utc))
    assert b.collect_events() == []
    b.roll_over_if_due(datetime(2025, 4, 1, tzinfo=timezone.utc))
    assert [type(e) for e in b.collect_events()] == [Budget.PeriodRolledOver]


def test_view_after_period_end_shows_new_period_without_an_event() -> None:
    b = open_budget()
    record(b, "50")
    b.collect_events()
    view = b.view(datetime(2025, 4, 3, tzinfo=timezone.utc))
    assert view.period_start == datetime(2025, 4, 1, tzinfo=timezone.utc)
    assert view.remaining == usd("100")
    assert view.period_action_count == 0
    assert b.pending_events == []
    assert b.spent == 50


# ---------------------------------------------------------------- policy


def test_update_policy_increments_policy_version() -> None:
    b = open_budget()
    b.collect_events()
    b.update_policy(policy("200"), now=NOW, expected_version=1)
    assert b.policy_version == 2
    assert b.policy.period_allowance == usd("200")
    assert [type(e) for e in b.collect_events()] == [Budget.PolicyUpdated]
    b.update_policy(policy("300"), now=NOW)  # 0 = no expectation
    assert b.policy_version == 3
    assert b.version == 3


def test_update_policy_version_mismatch() -> None:
    b = open_budget()
    record(b, "10")
    b.collect_events()
    with pytest.raises(Conflict) as info:
        b.update_policy(policy("200"), now=NOW, expected_version=1)
    assert info.value.reason == "VERSION_MISMATCH"
    assert info.value.metadata["current_version"] == "2"
    assert b.pending_events == []
    assert b.policy_version == 1


def test_update_policy_cannot_change_currency() -> None:
    b = open_budget()
    b.collect_events()
    with pytest.raises(PreconditionFailed) as info:
        b.update_policy(policy("200", currency="EUR"), now=NOW)
    assert info.value.reason == "CURRENCY_MISMATCH"
    assert b.pending_events == []
    assert b.policy.currency == "USD"


def test_update_policy_on_closed_budget() -> None:
    b = open_budget()
    b.close("gone", now=NOW)
    with pytest.raises(PreconditionFailed) as info:
        b.update_policy(policy("200"), now=NOW)
    assert info.value.reason == "BUDGET_CLOSED"


def test_new_policy_limits_apply_to_later_actions() -> None:
    b = open_budget()
    record(b, "40")
    b.update_policy(policy("40", limit=None), now=NOW)
    with pytest.raises(PreconditionFailed) as info:
        record(b, "0.01")
    assert info.value.reason == "BUDGET_EXHAUSTED"
    b.update_policy(policy("100", limit="5", kinds=(ActionKind.CREDIT,)), now=NOW)
    with pytest.raises(PreconditionFailed) as info:
        record(b, "1", ActionKind.REFUND)
    assert info.value.reason == "KIND_NOT_ALLOWED"
    with pytest.raises(PreconditionFailed) as info:
        record(b, "6", ActionKind.CREDIT)
    assert info.value.reason == "PER_ACTION_LIMIT_EXCEEDED"


def test_changing_period_kind_recuts_the_period() -> None:
    month = policy("100", limit=None)
    b = open_budget(month, now=datetime(2025, 3, 3, 9, tzinfo=timezone.utc))  # Monday, week 10
    record(b, "10", now=datetime(2025, 3, 3, 9, tzinfo=timezone.utc))
    record(b, "20", now=datetime(2025, 3, 10, 9, tzinfo=timezone.utc))  # Monday, week 11
    record(b, "30", now=datetime(2025, 3, 12, 9, tzinfo=timezone.utc))
    assert b.spent == 60
    now = datetime(2025, 3, 13, 9, tzinfo=timezone.utc)
    b.update_policy(policy("100", period=PeriodKind.WEEK, limit=None), now=now)
    assert (b.period_start, b.period_end) == (
        datetime(2025, 3, 10, tzinfo=timezone.utc),
        datetime(2025, 3, 17, tzinfo=timezone.utc),
    )
    assert b.spent == Decimal("50")
    assert b.period_action_count == 2
    # Back to a month: the whole month's spend counts again (per-day totals are kept).
    b.update_policy(month, now=now)
    assert (b.period_start, b.period_end) == (
        datetime(2025, 3, 1, tzinfo=timezone.utc),
        datetime(2025, 4, 1, tzinfo=timezone.utc),
    )
    assert b.spent == Decimal("60")
    assert b.period_action_count == 3
    assert b.policy_version == 3


def test_changing_to_a_longer_period_counts_earlier_periods_spend() -> None:
    b = open_budget(policy("100", limit=None), now=datetime(2025, 1, 10, 9, tzinfo=timezone.utc))
    record(b, "40", now=datetime(2025, 1, 10, 9, tzinfo=timezone.utc))
    record(b, "30", now=datetime(2025, 2, 10, 9, tzinfo=timezone.utc))  # rolls over into February
    assert b.spent == Decimal("30")
    b.update_policy(
        policy("100", period=PeriodKind.QUARTER, limit=None), now=datetime(2025, 2, 11, tzinfo=timezone.utc)
    )
    assert b.period_start == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert b.spent == Decimal("70")
    with pytest.raises(PreconditionFailed) as info:
        record(b, "31", now=datetime(2025, 2, 11, 1, tzinfo=timezone.utc))
    assert info.value.reason == "BUDGET_EXHAUSTED"


def test_same_period_kind_keeps_spent() -> None:
    b = open_budget()
    record(b, "30")
    b.update_policy(policy("200"), now=NOW)
    assert b.spent == 30
    assert b.period_action_count == 1


def test_close() -> None:
    b = open_budget()
    b.close("left", now=NOW)
    assert b.state == CLOSED
    assert b.close_reason == "left"
    assert b.closed_at == NOW
    with pytest.raises(PreconditionFailed) as info:
        b.close("again", now=NOW)
    assert info.value.reason == "BUDGET_CLOSED"


# ---------------------------------------------------------------- replay


def test_replaying_collected_events_gives_the_same_state() -> None:
    b = open_budget()
    events = list(b.collect_events())
    record(b, "10")
    record(b, "0", ActionKind.RULE_BEND)
    with pytest.raises(PreconditionFailed):
        record(b, "99")
    b.update_policy(policy("150", period=PeriodKind.WEEK), now=NOW + timedelta(hours=1))
    record(b, "25", ActionKind.CREDIT, now=datetime(2025, 4, 2, tzinfo=timezone.utc))
    record(b, "5", now=datetime(2025, 4, 2, 1, tzinfo=timezone.utc))
    b.close("left", now=datetime(2025, 4, 3, tzinfo=timezone.utc))
    events += b.collect_events()
    assert [type(e).__name__ for e in events] == [
        "Opened", "ActionRecorded", "ActionRecorded", "PolicyUpdated", "PeriodRolledOver",
        "ActionRecorded", "ActionRecorded", "Closed",
    ]
    copy = replay(events)
    assert isinstance(copy, Budget)
    assert state(copy) == state(b)
    assert copy.view() == b.view()


# ---------------------------------------------------------------- action ids


def test_action_id_round_trip() -> None:
    budget_id = budget_id_for("emp-1")
    for version in (1, 2, 57, 10**18):
        action_id = format_action_id(budget_id, version)
        assert action_id.startswith("act_")
        assert parse_action_id(action_id) == (budget_id, version)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "act_",
        "act_123",
        f"act_{budget_id_for('x').hex}",
        f"act_{budget_id_for('x').hex}_0",
        f"act_{budget_id_for('x').hex}_01",
        f"act_{budget_id_for('x').hex}_-1",
        f"act_{budget_id_for('x').hex.upper()}_2",
        f"act_{budget_id_for('x').hex[:-1]}_2",
        f"act_{budget_id_for('x')}_2",
        f"ACT_{budget_id_for('x').hex}_2",
        f"act_{budget_id_for('x').hex}_2 ",
        pytest.param(
            f"act_{budget_id_for('x').hex}_2\n",
        ),
        f"act_{budget_id_for('x').hex}_12345678901234567890",
        f"x act_{budget_id_for('x').hex}_2",
    ],
)
def test_parse_action_id_rejects_junk(junk: str) -> None:
    assert parse_action_id(junk) is None
