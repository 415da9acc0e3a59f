"""Issue 3 (boundaries) at the domain level: policy model, limits, escalation holds, decisions, reversals,
recounts on a period change, replay, and the team / customer / hold-book aggregates. No I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from builders import replay
from leeway.domain.actions import ActionRequest
from leeway.domain.budget import Budget
from leeway.domain.ids import format_action_id, parse_action_id
from leeway.domain.views import APPROVED, ActionView, DENIED, EXPIRED, PENDING_APPROVAL, RECORDED, REVERSED, SYSTEM_ACTOR, action_view, period_view
from leeway.domain.errors import Breach, FieldViolation, PermissionDenied, PreconditionFailed
from leeway.domain.ledgers import CustomerLedger, OrgLimits
from leeway.domain.approvals import HoldBook
from leeway.domain.command_rules import Approver
from leeway.domain.ledgers import TeamLedger
from leeway.domain.money import Money
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import ActionKind, BendableRule, Escalation, EscalationMode, Policy
from leeway.domain.rules import check_customer_cap, check_team_cap
from leeway.domain.tally import Cap

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)  # a Friday in March
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
ALL_KINDS = (ActionKind.REFUND, ActionKind.CREDIT, ActionKind.RULE_BEND)
LATE_FEE = BendableRule("LATE_FEE", "waive the late fee", max_per_period=2, max_value=Money(Decimal("20"), "USD"))
EXPRESS = BendableRule("EXPRESS", "free express shipping")


def usd(amount: str) -> Money:
    return Money(Decimal(amount), "USD")


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=timezone.utc)


def approval(
    *, timeout: timedelta = timedelta(hours=24), approvers: tuple[str, ...] = ("sup-1",), role: str = "",
    max_held: str | None = None,
) -> Escalation:
    """Holds for approval; at most one allowance waits at once unless ``max_held`` says more."""
    return Escalation(EscalationMode.APPROVAL, timeout, approvers, role, None if max_held is None else usd(max_held))


def make_policy(
    allowance: str = "100",
    *,
    period: PeriodKind = PeriodKind.MONTH,
    limit: str | None = "50",
    per_customer: str | None = None,
    rules: tuple[BendableRule, ...] = (LATE_FEE, EXPRESS),
    kinds: tuple[ActionKind, ...] = ALL_KINDS,
    escalation: Escalation | None = None,
) -> Policy:
    built, problems = Policy.build(
        period_allowance=usd(allowance),
        period=period,
        per_action_limit=None if limit is None else usd(limit),
        allowed_kinds=list(kinds),
        per_customer_limit=None if per_customer is None else usd(per_customer),
        bendable_rules=list(rules),
        escalation=escalation,
    )
    assert problems == []
    assert built is not None
    return built


def open_budget(p: Policy | None = None, now: datetime = NOW, employee: str = "emp-1") -> Budget:
    # Events are never collected: b.pending_events is the budget's whole history (for replay and recount).
    return Budget.open(employee_id=employee, team_id="team-a", display_name="Ada", policy=p or make_policy(), now=now)


def req(
    amount: str | Money,
    kind: ActionKind = ActionKind.REFUND,
    customer: str = "cust-1",
    rule: str = "LATE_FEE",
    case: str = "",
) -> ActionRequest:
    return ActionRequest(
        customer_id=customer,
        case_id=case,
        kind=kind,
        amount=usd(amount) if isinstance(amount, str) else amount,
        reason="late delivery",
        details={"rule_code": rule} if kind is ActionKind.RULE_BEND else {"order_id": "o-1"},
    )


_counter = iter(range(1, 10**9))


def record(b: Budget, amount: str, kind: ActionKind = ActionKind.REFUND, *, customer: str = "cust-1",
           rule: str = "LATE_FEE", now: datetime = NOW) -> int:
    """Records an action; returns its event version."""
    action_id = b.record_action(req(amount, kind, customer, rule), request_id=f"r-{next(_counter)}", now=now)
    parsed = parse_action_id(action_id)
    assert parsed is not None and parsed[0] == b.id
    return parsed[1]


def recorded_event(b: Budget, version: int) -> Any:
    return next(e for e in b.pending_events if isinstance(e, Budget.ActionRecorded) and e.originator_version == version)


def view_of(b: Budget, version: int, now: datetime | None = None) -> ActionView:
    return action_view(recorded_event(b, version), b.outcome(version), now)


def reasons(b: Budget, request: ActionRequest, now: datetime = NOW) -> list[str]:
    return [o.reason for o in b.check_action(request, now)]


def refused(b: Budget, request: ActionRequest, now: datetime = NOW) -> PreconditionFailed:
    """Asserts the request is refused and that nothing at all changed on the budget."""
    before = tallies(b)
    events = len(b.pending_events)
    with pytest.raises(PreconditionFailed) as info:
        b.record_action(request, request_id="r-refused", now=now)
    assert len(b.pending_events) == events
    assert tallies(b) == before
    return info.value


def tallies(b: Budget) -> tuple:
    return (
        b.version, b.spent, b.period_action_count, dict(b.customer_spent), dict(b.rule_bends),
        json.dumps(b.holds, default=str, sort_keys=True), json.dumps(b.daily, default=str, sort_keys=True),
    )


def state(b: Budget) -> tuple:
    return (
        b.id, b.version, b.employee_id, b.team_id, b.policy, b.policy_version, b.period_start, b.period_end,
        b.spent, b.period_action_count, b.daily, b.customer_spent, b.rule_bends, b.holds, b.outcomes,
        b.state, b.closed_at, b.close_reason,
    )


def decide(b: Budget, version: int, approver: str = "sup-1", *, approve: bool = True, now: datetime = NOW + HOUR,
           roles: tuple[str, ...] = (), teams: tuple[str, ...] = ("team-a",), any_team: bool = False) -> dict[str, Any]:
    """Decides as ``approver`` with ``roles`` in ``teams`` (by default the budget's team)."""
    return b.decide(approve, view_of(b, version), Approver(approver, frozenset(roles), frozenset(teams), any_team),
                    note="ok", request_id=f"d-{next(_counter)}", now=now)


# ================================================================ Policy.build / to_dict / from_dict


def build(**overrides: Any) -> tuple[Policy | None, list[FieldViolation]]:
    args: dict[str, Any] = {
        "period_allowance": usd("100"),
        "period": PeriodKind.MONTH,
        "per_action_limit": usd("50"),
        "allowed_kinds": list(ALL_KINDS),
        "per_customer_limit": usd("30"),
        "bendable_rules": [LATE_FEE, EXPRESS],
        "escalation": approval(),
    }
    args.update(overrides)
    return Policy.build(**args)


def fields(problems: list[FieldViolation]) -> list[str]:
    return [p.field for p in problems]


def test_build_accepts_the_new_fields() -> None:
    built, problems = build()
    assert problems == []
    assert built is not None
    assert built.per_customer_limit == usd("30")
    assert built.bendable_rules == (LATE_FEE, EXPRESS)
    assert built.bendable_rule("LATE_FEE") == LATE_FEE
    assert built.bendable_rule("NOPE") is None
    assert built.escalation == approval()


def test_defaults_are_no_customer_limit_no_rules_and_refuse() -> None:
    built, problems = Policy.build(
        period_allowance=usd("100"), period=PeriodKind.MONTH, per_action_limit=None, allowed_kinds=[ActionKind.GIFT]
    )
    assert problems == [] and built is not None
    assert built.per_customer_limit is None
    assert built.bendable_rules == ()
    assert built.escalation == Escalation()
    assert built.escalation.mode is EscalationMode.REFUSE
    assert built.escalation.approval_timeout == timedelta(hours=24)


def test_duplicate_rule_codes() -> None:
    built, problems = build(bendable_rules=[LATE_FEE, EXPRESS, BendableRule("LATE_FEE")])
    assert built is None
    assert fields(problems) == ["policy.bendable_rules[2].rule_code"]
    assert "twice" in problems[0].description


@pytest.mark.parametrize("code", ["", "has space", "-leading-dash", "x" * 65, "semi;colon", "ümlaut"])
def test_bad_rule_code(code: str) -> None:
    built, problems = build(bendable_rules=[EXPRESS, BendableRule(code)])
    assert built is None
    assert fields(problems) == ["policy.bendable_rules[1].rule_code"]


@pytest.mark.parametrize("code", ["A", "late_fee", "LATE-FEE.v2", "9" * 64])
def test_good_rule_codes(code: str) -> None:
    assert build(bendable_rules=[BendableRule(code)])[1] == []


def test_negative_max_per_period() -> None:
    _, problems = build(bendable_rules=[BendableRule("LATE_FEE", max_per_period=-1)])
    assert fields(problems) == ["policy.bendable_rules[0].max_per_period"]
    assert build(bendable_rules=[BendableRule("LATE_FEE", max_per_period=0)])[1] == []


def test_rule_description_with_control_characters() -> None:
    _, problems = build(bendable_rules=[BendableRule("LATE_FEE", "bad\x00text")])
    assert fields(problems) == ["policy.bendable_rules[0].description"]


def test_limits_must_be_in_the_allowance_currency() -> None:
    _, problems = build(
        per_customer_limit=Money(Decimal("30"), "EUR"),
        bendable_rules=[BendableRule("LATE_FEE", max_value=Money(Decimal("5"), "GBP"))],
    )
    assert fields(problems) == [
        "policy.per_customer_limit.currency_code",
        "policy.bendable_rules[0].max_value.currency_code",
    ]


def test_negative_customer_limit_and_rule_value() -> None:
    _, problems = build(
        per_customer_limit=usd("-1"), bendable_rules=[BendableRule("LATE_FEE", max_value=usd("1.001"))]
    )
    assert fields(problems) == ["policy.per_customer_limit", "policy.bendable_rules[0].max_value"]
    # Zero is a valid limit (nothing may be given away without approval).
    assert build(per_customer_limit=usd("0"), bendable_rules=[BendableRule("X", max_value=usd("0"))])[1] == []


@pytest.mark.parametrize(
    "timeout, ok",
    [
        (timedelta(0), False),
        (timedelta(milliseconds=999), False),
        (timedelta(seconds=1), True),
        (timedelta(days=30), True),
        (timedelta(days=30, seconds=1), False),
        (timedelta(seconds=-5), False),
    ],
)
def test_approval_timeout_range(timeout: timedelta, ok: bool) -> None:
    _, problems = build(escalation=approval(timeout=timeout))
    assert fields(problems) == ([] if ok else ["policy.escalation.approval_timeout"])


def test_approval_needs_approvers_or_a_role() -> None:
    _, problems = build(escalation=approval(approvers=()))
    assert fields(problems) == ["policy.escalation.approver_ids"]
    assert build(escalation=approval(approvers=(), role="supervisor"))[1] == []
    # REFUSE needs nobody.
    assert build(escalation=Escalation(EscalationMode.REFUSE))[1] == []


def test_bad_approver_ids_and_role() -> None:
    _, problems = build(escalation=approval(approvers=("sup-1", "bad id", ""), role="-role"))
    assert fields(problems) == [
        "policy.escalation.approver_ids[1]",
        "policy.escalation.approver_ids[2]",
        "policy.escalation.approver_role",
    ]


def test_too_many_approvers_and_rules() -> None:
    _, problems = build(
        escalation=approval(approvers=tuple(f"sup-{i}" for i in range(101))),
        bendable_rules=[BendableRule(f"R{i}") for i in range(201)],
    )
    assert fields(problems) == ["policy.bendable_rules", "policy.escalation.approver_ids"]
    assert build(
        escalation=approval(approvers=tuple(f"sup-{i}" for i in range(100))),
        bendable_rules=[BendableRule(f"R{i}") for i in range(200)],
    )[1] == []


def test_every_problem_is_reported_under_the_given_field() -> None:
    _, problems = build(
        field="budget.policy",
        per_customer_limit=Money(Decimal("1"), "EUR"),
        bendable_rules=[BendableRule("A", max_per_period=-2), BendableRule("A")],
        escalation=approval(timeout=timedelta(0), approvers=()),
    )
    assert fields(problems) == [
        "budget.policy.per_customer_limit.currency_code",
        "budget.policy.bendable_rules[0].max_per_period",
        "budget.policy.bendable_rules[1].rule_code",
        "budget.policy.escalation.approval_timeout",
        "budget.policy.escalation.approver_ids",
    ]


def test_to_dict_from_dict_round_trip() -> None:
    p = make_policy(
        "2000",
        per_customer="2000",
        rules=(LATE_FEE, EXPRESS, BendableRule("NO_RECEIPT", "", 0, usd("0"))),
        escalation=approval(timeout=timedelta(hours=3, seconds=7), approvers=("sup-1", "sup-2"), role="lead"),
    )
    data = p.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON
    assert data["per_customer_limit"] == {"amount": "2000", "currency": "USD"}
    assert data["bendable_rules"][0] == {
        "rule_code": "LATE_FEE", "description": "waive the late fee", "max_per_period": 2,
        "max_value": {"amount": "20", "currency": "USD"},
    }
    assert data["bendable_rules"][1]["max_value"] is None
    assert data["escalation"] == {
        "mode": "APPROVAL", "approval_timeout_seconds": 10807, "approver_ids": ["sup-1", "sup-2"],
        "approver_role": "lead",
    }
    assert Policy.from_dict(json.loads(json.dumps(data))) == p


def test_from_dict_of_an_old_policy_defaults_the_new_fields() -> None:
    old = {
        "period_allowance": {"amount": "100", "currency": "USD"},
        "period": "MONTH",
        "per_action_limit": None,
        "allowed_kinds": ["REFUND"],
        "some_future_key": 1,
    }
    p = Policy.from_dict(old)
    assert p.per_customer_limit is None
    assert p.bendable_rules == ()
    assert p.escalation == Escalation()


# ================================================================ refusals (escalation REFUSE)


def test_rule_code_of_other_kinds_is_ignored() -> None:
    b = open_budget()
    action = ActionRequest("cust-1", "case-1", ActionKind.REFUND, usd("5"), "r", {"rule_code": "FREE_UPGRADE"})
    b.record_action(action, request_id="r-x", now=NOW)
    assert b.rule_bends == {}


def test_rule_bend_quota_resets_next_period() -> None:
    b = open_budget()
    record(b, "0", ActionKind.RULE_BEND)
    record(b, "0", ActionKind.RULE_BEND)
    assert refused(b, req("0", ActionKind.RULE_BEND)).reason == "RULE_BEND_QUOTA_EXCEEDED"
    record(b, "0", ActionKind.RULE_BEND, now=at(4, 1, 0))
    assert b.rule_bends == {"LATE_FEE": 1}


def test_per_customer_limit_resets_next_period() -> None:
    b = open_budget(make_policy(per_customer="30"))
    record(b, "30")
    assert refused(b, req("1")).reason == "PER_CUSTOMER_LIMIT_EXCEEDED"
    record(b, "30", now=at(4, 1, 0))
    assert b.customer_spent == {"cust-1": Decimal("30")}


def test_every_limit_exceeded_is_listed_in_order() -> None:
    rule = BendableRule("LATE_FEE", max_per_period=1, max_value=usd("20"))
    b = open_budget(make_policy("100", limit="50", per_customer="30", rules=(rule,)))
    record(b, "10", ActionKind.RULE_BEND)
    error = refused(b, req("95", ActionKind.RULE_BEND))
    assert error.reason == "RULE_BEND_QUOTA_EXCEEDED"
    assert [v.type for v in error.violations] == [
        "RULE_BEND_QUOTA", "RULE_BEND_VALUE", "PER_ACTION_LIMIT", "PERIOD_ALLOWANCE", "PER_CUSTOMER_LIMIT",
    ]
    assert error.metadata["exceeded"] == (
        "RULE_BEND_QUOTA_EXCEEDED,RULE_BEND_VALUE_EXCEEDED,PER_ACTION_LIMIT_EXCEEDED,BUDGET_EXHAUSTED,"
        "PER_CUSTOMER_LIMIT_EXCEEDED"
    )
    # The metadata of the first limit.
    assert error.metadata["max_per_period"] == "1" and error.metadata["used"] == "1"


# ================================================================ escalation APPROVAL


def test_over_limit_action_becomes_pending() -> None:
    b = open_budget(make_policy(per_customer="30", escalation=approval(approvers=("sup-1", "sup-2"), role="lead")))
    version = record(b, "60")
    event = recorded_event(b, version)
    assert event.pending is True
    assert event.expires_at == NOW + timedelta(hours=24)
    assert event.escalation_reasons == ["PER_ACTION_LIMIT_EXCEEDED", "PER_CUSTOMER_LIMIT_EXCEEDED"]
    assert event.approver_ids == ["sup-1", "sup-2"] and event.approver_role == "lead"
    assert b.holds == {
        str(version): {
            "customer_id": "cust-1", "amount": Decimal("60"), "rule_code": "", "day": "2025-03-14",
            "expires_at": NOW + timedelta(hours=24), "approver_ids": ["sup-1", "sup-2"], "approver_role": "lead",
        }
    }
    assert b.hold(version) == b.holds[str(version)]
    assert (b.spent, b.period_action_count, b.customer_spent) == (0, 0, {})
    view = b.view(NOW)
    assert view.spent == usd("0")
    assert view.held == usd("60")
    assert view.remaining == usd("40")
    assert view.pending_action_count == 1
    action = view_of(b, version, NOW)
    assert action.state == PENDING_APPROVAL
    assert action.escalation_reasons == ("PER_ACTION_LIMIT_EXCEEDED", "PER_CUSTOMER_LIMIT_EXCEEDED")
    assert action.expire_time == NOW + timedelta(hours=24)
    assert action.approver_ids == ("sup-1", "sup-2") and action.approver_role == "lead"
    assert action.decision is None and action.reversal is None


def test_within_limit_actions_are_still_recorded() -> None:
    b = open_budget(make_policy(escalation=approval()))
    version = record(b, "50")
    event = recorded_event(b, version)
    assert event.pending is False
    assert event.expires_at is None and event.approver_ids == [] and event.escalation_reasons == []
    assert b.holds == {}
    assert b.spent == 50
    action = view_of(b, version, NOW)
    assert action.state == RECORDED and action.expire_time is None and action.escalation_reasons == ()
    assert b.view(NOW).pending_action_count == 0


def test_every_exceeded_limit_is_an_escalation_reason() -> None:
    rule = BendableRule("LATE_FEE", max_per_period=1, max_value=usd("20"))
    b = open_budget(make_policy("100", per_customer="30", rules=(rule,), escalation=approval()))
    record(b, "10", ActionKind.RULE_BEND)
    version = record(b, "95", ActionKind.RULE_BEND)
    assert view_of(b, version).escalation_reasons == (
        "RULE_BEND_QUOTA_EXCEEDED", "RULE_BEND_VALUE_EXCEEDED", "PER_ACTION_LIMIT_EXCEEDED", "BUDGET_EXHAUSTED",
        "PER_CUSTOMER_LIMIT_EXCEEDED",
    )
    assert b.holds[str(version)]["rule_code"] == "LATE_FEE"


@pytest.mark.parametrize(
    "request_, reason",
    [
        (req("500", ActionKind.GIFT), "KIND_NOT_ALLOWED"),
        (req("500", ActionKind.RULE_BEND, rule="FREE_UPGRADE"), "RULE_NOT_BENDABLE"),
        (req(Money(Decimal("500"), "EUR")), "CURRENCY_MISMATCH"),
    ],
)
def test_hard_refusals_are_not_escalated(request_: ActionRequest, reason: str) -> None:
    b = open_budget(make_policy(escalation=approval()))
    assert refused(b, request_).reason == reason
    assert b.holds == {}


def test_closed_budget_is_not_escalated() -> None:
    b = open_budget(make_policy(escalation=approval()))
    b.close("left", now=NOW)
    assert refused(b, req("500")).reason == "BUDGET_CLOSED"


# ================================================================ holds count while live


def test_hold_counts_against_the_allowance_until_it_expires() -> None:
    b = open_budget(make_policy(escalation=approval()))
    record(b, "60")  # per-action limit 50: held
    assert reasons(b, req("41")) == ["BUDGET_EXHAUSTED"]
    assert reasons(b, req("40")) == []
    expires = NOW + timedelta(hours=24)
    assert b.held_in_period(expires - timedelta(seconds=1)) == (Decimal("60"), 1)
    # At expires_at the hold no longer counts, even before the expiry event.
    assert b.held_in_period(expires) == (Decimal("0"), 0)
    assert reasons(b, req("41"), expires) == []
    view = b.view(expires)
    assert (view.held, view.remaining, view.pending_action_count) == (usd("0"), usd("100"), 0)


def test_hold_of_an_earlier_period_does_not_count_in_the_new_one() -> None:
    b = open_budget(make_policy(per_customer="30", escalation=approval(timeout=timedelta(days=3))))
    record(b, "60", now=at(3, 31, 20))
    april = at(4, 1, 10)
    b.roll_over_if_due(april)
    assert b.held_in_period(april) == (Decimal("0"), 0)
    assert reasons(b, req("30"), april) == []
    view = b.view(april)
    assert view.held == usd("0") and view.remaining == usd("100")
    assert view.pending_action_count == 1  # still waiting for a decision
    # It belongs to March, and stays visible there until decided (and here, as held in an ended period).
    assert view.held_in_ended_periods == usd("60")
    march = period_view(b, at(3, 1, 0), at(4, 1, 0), b, april)
    assert (march.spent, march.held, march.remaining, march.period_action_count) == (usd(0), usd(60), usd(40), 0)
    assert march.held_in_ended_periods == usd("0")


# ================================================================ approve / deny / expire


def test_approve_counts_the_amount() -> None:
    b = open_budget(make_policy(per_customer="100", escalation=approval()))
    version = record(b, "25", ActionKind.RULE_BEND)  # over LATE_FEE's max_value
    hold = decide(b, version, now=NOW + HOUR)
    assert hold["amount"] == Decimal("25")
    assert b.holds == {}
    assert b.spent == 25 and b.period_action_count == 1
    assert b.customer_spent == {"cust-1": Decimal("25")}
    assert b.rule_bends == {"LATE_FEE": 1}
    assert b.daily["2025-03-14"] == [Decimal("25"), 1]
    assert isinstance(b.pending_events[-1], Budget.ActionApproved)
    assert b.outcome(version) == {
        "decision": {"outcome": APPROVED, "approver_id": "sup-1", "note": "ok", "at": NOW + HOUR,
                     "request_id": b.pending_events[-1].request_id, "in_current_period": True}
    }
    view = b.view(NOW + HOUR)
    assert (view.spent, view.held, view.remaining, view.pending_action_count) == (usd("25"), usd("0"), usd("75"), 0)
    action = view_of(b, version, NOW + HOUR)
    assert action.state == APPROVED
    assert action.decision is not None
    assert (action.decision.outcome, action.decision.approver_id, action.decision.at) == (APPROVED, "sup-1", NOW + HOUR)


def test_approved_in_a_later_period_counts_in_the_period_requested() -> None:
    b = open_budget(make_policy(escalation=approval()))
    version = record(b, "60", now=at(3, 31, 20))
    april = at(4, 1, 10)
    decide(b, version, now=april)
    assert [type(e).__name__ for e in b.pending_events[-2:]] == ["PeriodRolledOver", "ActionApproved"]
    assert b.period_start == datetime(2025, 4, 1, tzinfo=timezone.utc)
    assert b.spent == 0 and b.period_action_count == 0 and b.customer_spent == {}
    assert b.daily["2025-03-31"] == [Decimal("60"), 1]
    assert b.view(april).remaining == usd("100")
    action = view_of(b, version, april)
    assert action.state == APPROVED and action.decision is not None
    assert action.decision.counted_in_current_period is False
    # March's figures count it now (its PeriodRolledOver said 0: that was March as it closed).
    assert b.pending_events[-2].closed_period_spent == 0
    march = period_view(b, at(3, 1, 0), at(4, 1, 0), b, april)
    assert (march.spent, march.held, march.remaining, march.period_action_count) == (usd(60), usd(0), usd(40), 1)
    assert b.view(april).held_in_ended_periods == usd(0)


def test_deny_releases_the_hold() -> None:
    b = open_budget(make_policy(escalation=approval()))
    version = record(b, "60")
    assert b.view(NOW).remaining == usd("40")
    hold = decide(b, version, approve=False)
    assert hold["amount"] == Decimal("60")
    assert isinstance(b.pending_events[-1], Budget.ActionDenied)
    assert b.holds == {} and b.spent == 0 and b.daily == {}
    assert b.outcome(version)["decision"]["outcome"] == DENIED
    view = b.view(NOW + HOUR)
    assert (view.remaining, view.held, view.pending_action_count) == (usd("100"), usd("0"), 0)
    assert view_of(b, version).state == DENIED


def test_expire_only_when_due() -> None:
    b = open_budget(make_policy(escalation=approval(timeout=timedelta(hours=2))))
    version = record(b, "60")
    normal = record(b, "10")
    events = len(b.pending_events)
    assert b.expire(version, request_id="e-1", now=NOW + 2 * HOUR - timedelta(microseconds=1)) is None
    assert b.expire(normal, request_id="e-1", now=NOW + DAY) is None
    assert b.expire(999, request_id="e-1", now=NOW + DAY) is None
    assert len(b.pending_events) == events
    # Shown EXPIRED once the timeout passed, even before the expiry event.
    assert view_of(b, version, NOW + 2 * HOUR).state == EXPIRED
    assert view_of(b, version, NOW + 2 * HOUR - timedelta(seconds=1)).state == PENDING_APPROVAL
    hold = b.expire(version, request_id="e-1", now=NOW + 2 * HOUR)
    assert hold is not None and hold["amount"] == Decimal("60")
    assert isinstance(b.pending_events[-1], Budget.ActionExpired)
    assert b.holds == {} and b.spent == 10
    decision = b.outcome(version)["decision"]
    assert (decision["outcome"], decision["approver_id"], decision["request_id"]) == (EXPIRED, SYSTEM_ACTOR, "e-1")
    assert view_of(b, version).state == EXPIRED
    assert b.expire(version, request_id="e-2", now=NOW + DAY) is None


def test_self_approval_is_refused() -> None:
    """Also under a policy that names the employee (opened before such policies were refused: issue 19)."""
    named = make_policy(escalation=approval(approvers=("emp-1", "sup-1"), role="lead"))
    b = Budget(employee_id="emp-1", team_id="team-a", display_name="Ada", policy=named, period_start=at(3, 1, 0),
               period_end=at(4, 1, 0), at=NOW)
    version = record(b, "60")
    before = len(b.pending_events)
    for approve in (True, False):
        with pytest.raises(PermissionDenied) as info:
            decide(b, version, "emp-1", approve=approve, roles=("lead",))
        assert info.value.reason == "SELF_APPROVAL_NOT_ALLOWED"
        assert info.value.metadata == {"approver_id": "emp-1", "employee_id": "emp-1"}
    assert len(b.pending_events) == before
    assert str(version) in b.holds


def test_non_approver_is_refused() -> None:
    b = open_budget(make_policy(escalation=approval(approvers=("sup-1", "sup-2"))))
    version = record(b, "60")
    for approve in (True, False):
        with pytest.raises(PermissionDenied) as info:
            decide(b, version, "sup-3", approve=approve, roles=("lead",))
        assert info.value.reason == "APPROVER_NOT_AUTHORIZED"
        # Who the approvers are is not told (they may be of another team).
        assert info.value.metadata == {"approver_id": "sup-3", "approver_role": ""}
        assert "sup-1" not in str(info.value) and "sup-2" not in str(info.value)
    # An empty role given by the caller does not match an empty policy role.
    with pytest.raises(PermissionDenied):
        decide(b, version, "sup-3", roles=("",))
    assert str(version) in b.holds
    decide(b, version, "sup-2")
    assert b.outcome(version)["decision"]["approver_id"] == "sup-2"


def test_approver_role() -> None:
    b = open_budget(make_policy(escalation=approval(approvers=(), role="lead", max_held="200")))
    first, second = record(b, "60"), record(b, "45")  # the second exceeds what the first's hold left
    assert b.holds[str(second)]["approver_role"] == "lead"
    with pytest.raises(PermissionDenied) as info:
        decide(b, first, "boss", roles=("agent", "Lead"))
    assert info.value.reason == "APPROVER_NOT_AUTHORIZED"
    assert info.value.metadata["approver_role"] == "lead"
    with pytest.raises(PermissionDenied):
        decide(b, first, "boss")
    # The role counts only in the action's team: not in another team, nor without teams ...
    for teams in (("team-b",), ()):
        for approve in (True, False):
            with pytest.raises(PermissionDenied) as info:
                decide(b, first, "boss", approve=approve, roles=("lead",), teams=teams)
            assert info.value.reason == "APPROVER_NOT_AUTHORIZED"
            assert "team-a" not in str(info.value) and "team-a" not in info.value.metadata.values()
    assert str(first) in b.holds and str(second) in b.holds
    decide(b, first, "boss", roles=("agent", "lead"), teams=("team-b", "team-a"))
    decide(b, second, "other-boss", approve=False, roles=frozenset({"lead"}), teams=(), any_team=True)  # ... or admin
    assert b.outcome(first)["decision"]["outcome"] == APPROVED
    assert b.outcome(second)["decision"]["outcome"] == DENIED


def test_who_may_decide_is_checked_before_the_state() -> None:
    """Someone who may not decide an action learns nothing of its state: decided, expired or pending, the same
    refusal; a never-escalated action names no approver, so only its state refuses it."""
    b = open_budget(make_policy(escalation=approval(approvers=("sup-1",), timeout=timedelta(hours=2), max_held="200")))
    plain, decided, expired = record(b, "1", customer="cust-3"), record(b, "60"), record(b, "51")
    decide(b, decided)
    b.expire(expired, request_id="e-1", now=NOW + 2 * HOUR)
    pending = record(b, "52", customer="cust-2", now=NOW + 2 * HOUR)
    assert view_of(b, pending, NOW + 3 * HOUR).state == "PENDING_APPROVAL"
    refusals = set()
    for version in (decided, expired, pending):
        with pytest.raises(PermissionDenied) as info:
            decide(b, version, "sup-9", now=NOW + 3 * HOUR)
        refusals.add((info.value.reason, str(info.value), tuple(sorted(info.value.metadata.items()))))
    assert len(refusals) == 1 and next(iter(refusals))[0] == "APPROVER_NOT_AUTHORIZED"
    with pytest.raises(PreconditionFailed) as state:
        decide(b, plain, "sup-9")
    assert state.value.reason == "ACTION_NOT_PENDING"


@pytest.mark.parametrize("first", ["approve", "deny", "expire"])
@pytest.mark.parametrize("second_approves", [True, False])
def test_second_decision_is_refused(first: str, second_approves: bool) -> None:
    b = open_budget(make_policy(escalation=approval(timeout=timedelta(hours=2))))
    version = record(b, "60")
    if first == "expire":
        b.expire(version, request_id="e-1", now=NOW + 2 * HOUR)
        outcome, by = EXPIRED, SYSTEM_ACTOR
    else:
        decide(b, version, approve=first == "approve")
        outcome, by = (APPROVED if first == "approve" else DENIED), "sup-1"
    before = tallies(b)
    with pytest.raises(PreconditionFailed) as info:
        decide(b, version, approve=second_approves, now=NOW + HOUR + timedelta(minutes=1))
    assert info.value.reason == "ACTION_ALREADY_DECIDED"
    assert info.value.metadata == {"outcome": outcome, "decided_by": by}
    assert [(v.type, v.subject) for v in info.value.violations] == [
        ("ACTION_STATE", f"actions/{format_action_id(b.id, version)}")
    ]
    assert tallies(b) == before


def test_deciding_a_normal_action_is_refused() -> None:
    b = open_budget(make_policy(escalation=approval()))
    version = record(b, "10")
    for approve in (True, False):
        with pytest.raises(PreconditionFailed) as info:
            decide(b, version, approve=approve)
        assert info.value.reason == "ACTION_NOT_PENDING"
        assert info.value.violations[0].type == "ACTION_STATE"
    assert b.spent == 10 and b.outcome(version) == {}


def test_deciding_after_the_timeout_is_refused() -> None:
    b = open_budget(make_policy(escalation=approval(timeout=timedelta(hours=2))))
    version = record(b, "60")
    expires = NOW + 2 * HOUR
    for approve in (True, False):
        with pytest.raises(PreconditionFailed) as info:
            decide(b, version, approve=approve, now=expires)
        assert info.value.reason == "APPROVAL_EXPIRED"
        assert info.value.metadata == {"expire_time": expires.isoformat()}
    assert str(version) in b.holds  # the expiry task records the expiry, not the refused decision
    decide(b, version, now=expires - timedelta(microseconds=1))
    assert b.spent == 60


def test_closing_decides_the_holds_so_nothing_is_left_to_approve() -> None:
    """Issue 19: closing denies what waits (tests/unit/test_lifecycle_domain.py: holds of budgets closed before that)."""
    b = open_budget(make_policy(escalation=approval(max_held="200")))
    first, second = record(b, "60"), record(b, "45")
    b.close("left", now=NOW)
    assert b.holds == {} and b.spent == 0
    for approve in (True, False):
        with pytest.raises(PreconditionFailed) as info:
            decide(b, first, approve=approve)
        assert info.value.reason == "ACTION_ALREADY_DECIDED"
    assert [b.outcome(v)["decision"]["outcome"] for v in (first, second)] == [DENIED, DENIED]
    assert b.expire(second, request_id="e-1", now=NOW + DAY) is None  # nothing left to expire


# ================================================================ judged by the policy it was requested under


def test_approval_is_judged_by_the_policy_it_was_requested_under() -> None:
    b = open_budget(make_policy(escalation=approval(timeout=timedelta(hours=2), approvers=("sup-1",), max_held="200")))
    first, second = record(b, "60"), record(b, "45")
    assert sorted(b.holds) == [str(first), str(second)]
    changed = NOW + timedelta(minutes=1)
    b.update_policy(make_policy(escalation=approval(timeout=timedelta(hours=48), approvers=("sup-2",), max_held="200")),
                    now=changed)
    third = record(b, "51", now=changed)
    assert b.holds[str(third)]["approver_ids"] == ["sup-2"]
    assert b.holds[str(third)]["expires_at"] == changed + timedelta(hours=48)
    # The old approver may still decide the old actions; the new one may not.
    with pytest.raises(PermissionDenied) as info:
        decide(b, first, "sup-2")
    assert info.value.reason == "APPROVER_NOT_AUTHORIZED"
    decide(b, first, "sup-1")
    with pytest.raises(PermissionDenied):
        decide(b, third, "sup-1")
    # Expiry follows the old 2-hour timeout, not the new 48 hours.
    assert b.expire(second, request_id="e-1", now=NOW + 2 * HOUR) is not None
    assert b.expire(third, request_id="e-2", now=NOW + 2 * HOUR) is None
    view = view_of(b, first)
    assert view.policy_version == 1 and view.approver_ids == ("sup-1",)
    assert view_of(b, third).policy_version == 2


def test_pending_action_can_be_approved_after_escalation_is_turned_off() -> None:
    b = open_budget(make_policy(escalation=approval()))
    version = record(b, "60")
    b.update_policy(make_policy(), now=NOW)  # REFUSE now
    decide(b, version)
    assert b.spent == 60


# ================================================================ reverse


def test_reverse_in_the_current_period_restores_everything() -> None:
    rule = BendableRule("LATE_FEE", max_per_period=1, max_value=usd("20"))
    b = open_budget(make_policy(per_customer="30", rules=(rule,)))
    version = record(b, "15", ActionKind.RULE_BEND)
    assert refused(b, req("0", ActionKind.RULE_BEND)).reason == "RULE_BEND_QUOTA_EXCEEDED"
    assert refused(b, req("16")).reason == "PER_CUSTOMER_LIMIT_EXCEEDED"
    later = NOW + HOUR
    assert b.reverse(view_of(b, version), actor_id="mgr-1", reason="duplicate", request_id="v-1", now=later) is True
    event = b.pending_events[-1]
    assert isinstance(event, Budget.ActionReversed)
    assert (event.day, event.amount, event.customer_id, event.rule_code) == ("2025-03-14", Decimal("15"), "cust-1", "LATE_FEE")
    assert (b.spent, b.period_action_count, b.customer_spent, b.rule_bends) == (0, 0, {}, {})
    assert b.daily["2025-03-14"] == [Decimal("0"), 0]
    assert reasons(b, req("0", ActionKind.RULE_BEND)) == []  # the quota is free again
    assert reasons(b, req("30")) == []
    action = view_of(b, version)
    assert action.state == REVERSED
    assert action.reversal is not None
    assert (action.reversal.actor_id, action.reversal.reason, action.reversal.at) == ("mgr-1", "duplicate", later)
    assert action.reversal.restored_to_current_period is True and action.reversal.request_id == "v-1"
    assert b.view(later).remaining == usd("100")


def test_reverse_in_a_past_period_leaves_the_current_period_alone() -> None:
    b = open_budget(make_policy(per_customer="50"))
    version = record(b, "40")
    record(b, "10", now=at(4, 1, 9))  # April
    restored = b.reverse(view_of(b, version), actor_id="mgr-1", reason="typo", request_id="v-1", now=at(4, 2))
    assert restored is False
    assert b.spent == 10 and b.period_action_count == 1
    assert b.customer_spent == {"cust-1": Decimal("10")}
    assert b.daily["2025-03-14"] == [Decimal("0"), 0]
    assert b.view(at(4, 2)).remaining == usd("90")
    assert view_of(b, version).reversal.restored_to_current_period is False  # type: ignore[union-attr]


def test_reverse_that_rolls_the_period_over() -> None:
    b = open_budget()
    version = record(b, "40")
    assert b.reverse(view_of(b, version), actor_id="mgr-1", reason="x", request_id="v-1", now=at(5, 2)) is False
    assert [type(e).__name__ for e in b.pending_events[-2:]] == ["PeriodRolledOver", "ActionReversed"]
    assert b.spent == 0 and b.period_start == datetime(2025, 5, 1, tzinfo=timezone.utc)


def test_reverse_an_approved_action() -> None:
    b = open_budget(make_policy(per_customer="100", escalation=approval()))
    version = record(b, "25", ActionKind.RULE_BEND)
    decide(b, version)
    assert b.reverse(view_of(b, version), actor_id="mgr-1", reason="x", request_id="v-1", now=NOW + 2 * HOUR)
    assert (b.spent, b.customer_spent, b.rule_bends) == (0, {}, {})
    action = view_of(b, version)
    assert action.state == REVERSED and action.decision is not None and action.decision.outcome == APPROVED


def test_reverse_an_action_approved_in_a_later_period() -> None:
    b = open_budget(make_policy(escalation=approval()))
    version = record(b, "60", now=at(3, 31, 20))
    decide(b, version, now=at(4, 1, 10))
    record(b, "30", now=at(4, 1, 11))
    # The approval counted in March, so the reversal gives back to March, not to April.
    assert b.reverse(view_of(b, version), actor_id="mgr", reason="x", request_id="v-1", now=at(4, 2)) is False
    assert b.spent == 30
    assert b.daily["2025-03-31"] == [Decimal("0"), 0]


def test_reverse_after_a_longer_period_took_in_the_actions_day() -> None:
    b = open_budget(make_policy("1000", per_customer="100"), now=at(1, 10))
    version = record(b, "40", now=at(1, 10))
    record(b, "10", now=at(2, 3))
    recount, _ = recounter(b)
    b.update_policy(make_policy("1000", period=PeriodKind.QUARTER, per_customer="100"), now=at(2, 4),
                    recount=recount)
    assert b.customer_spent == {"cust-1": Decimal("50")}
    # January is part of the current (quarterly) period: its spend comes back now.
    assert b.reverse(view_of(b, version), actor_id="mgr", reason="x", request_id="v-1", now=at(2, 5)) is True
    assert b.spent == 10 and b.customer_spent == {"cust-1": Decimal("10")}
    assert Budget.recount(b.pending_events, b.period_start)["customers"] == b.customer_spent


def test_double_reversal_is_refused() -> None:
    b = open_budget()
    version = record(b, "40")
    b.reverse(view_of(b, version), actor_id="mgr-1", reason="x", request_id="v-1", now=NOW)
    before = tallies(b)
    with pytest.raises(PreconditionFailed) as info:
        b.reverse(view_of(b, version), actor_id="mgr-1", reason="x", request_id="v-2", now=NOW)
    assert info.value.reason == "ACTION_ALREADY_REVERSED"
    assert info.value.violations[0].type == "ACTION_STATE"
    assert tallies(b) == before and b.spent == 0


@pytest.mark.parametrize("state_", [PENDING_APPROVAL, DENIED, EXPIRED])
def test_only_recorded_or_approved_actions_can_be_reversed(state_: str) -> None:
    b = open_budget(make_policy(escalation=approval(timeout=timedelta(hours=2))))
    record(b, "10")
    version = record(b, "60")
    if state_ == DENIED:
        decide(b, version, approve=False)
    elif state_ == EXPIRED:
        b.expire(version, request_id="e-1", now=NOW + 2 * HOUR)
    before = tallies(b)
    with pytest.raises(PreconditionFailed) as info:
        b.reverse(view_of(b, version), actor_id="mgr-1", reason="x", request_id="v-1", now=NOW + 3 * HOUR)
    assert info.value.reason == "ACTION_NOT_REVERSIBLE"
    assert info.value.metadata == {"state": state_}
    assert info.value.violations[0].description == f"action is {state_}"
    assert tallies(b) == before and b.spent == 10


# ================================================================ period change: recount


def recounter(b: Budget) -> tuple[Callable[[datetime], dict[str, Any]], list[datetime]]:
    calls: list[datetime] = []

    def recount(start: datetime) -> dict[str, Any]:
        calls.append(start)
        return Budget.recount(list(b.pending_events), start)

    return recount, calls


def test_longer_period_recounts_customers_and_rules_from_the_events() -> None:
    def policy_(period: PeriodKind) -> Policy:
        return make_policy("1000", period=period, limit="40", per_customer="100", escalation=approval())

    b = open_budget(policy_(PeriodKind.MONTH), now=at(1, 10))
    record(b, "30", now=at(1, 10))
    record(b, "0", ActionKind.RULE_BEND, now=at(1, 11))
    approved = record(b, "45", now=at(1, 12))  # over the per-action limit: held ...
    decide(b, approved, now=at(1, 12, 13))  # ... and approved: counts on Jan 12
    reversed_ = record(b, "20", customer="cust-2", now=at(1, 13))
    b.reverse(view_of(b, reversed_), actor_id="mgr", reason="x", request_id="v-1", now=at(1, 14))
    denied = record(b, "50", customer="cust-3", now=at(1, 15))
    decide(b, denied, approve=False, now=at(1, 15, 13))
    expired = record(b, "41", now=at(1, 16))
    b.expire(expired, request_id="e-1", now=at(1, 18))
    record(b, "10", now=at(2, 3))  # February: the month rolled over
    record(b, "0", ActionKind.RULE_BEND, customer="cust-2", now=at(2, 3))
    pending = record(b, "41", customer="cust-4", now=at(2, 10, 9))  # still waiting when the policy changes
    assert b.customer_spent == {"cust-1": Decimal("10")}
    assert b.rule_bends == {"LATE_FEE": 1}

    recount, calls = recounter(b)
    b.update_policy(policy_(PeriodKind.QUARTER), now=at(2, 10), recount=recount)
    assert calls == [datetime(2025, 1, 1, tzinfo=timezone.utc)]
    assert b.customer_spent == {"cust-1": Decimal("85")}  # 30 + 45 approved + 10; not denied/expired/pending
    assert b.rule_bends == {"LATE_FEE": 2}
    assert b.spent == Decimal("85") and b.period_action_count == 5
    assert b.pending_events[-1].recount == {"customers": {"cust-1": Decimal("85")}, "rules": {"LATE_FEE": 2}}
    # The per-customer limit is now enforced exactly over the quarter.
    assert reasons(b, req("15.01"), at(2, 10)) == ["PER_CUSTOMER_LIMIT_EXCEEDED"]
    assert reasons(b, req("40", customer="cust-2"), at(2, 10)) == []
    assert reasons(b, req("0", ActionKind.RULE_BEND, customer="cust-9"), at(2, 10)) == ["RULE_BEND_QUOTA_EXCEEDED"]
    record(b, "15", now=at(2, 10))
    assert b.customer_spent["cust-1"] == 100
    # cust-4's live hold counts for cust-4 in the quarter.
    record(b, "40", customer="cust-4", now=at(2, 10))
    assert reasons(b, req("19.01", customer="cust-4"), at(2, 10)) == ["PER_CUSTOMER_LIMIT_EXCEEDED"]
    assert reasons(b, req("19", customer="cust-4"), at(2, 10)) == []
    assert str(pending) in b.holds

    # Back to a month: February alone counts again.
    recount, calls = recounter(b)
    b.update_policy(policy_(PeriodKind.MONTH), now=at(2, 10, 13), recount=recount)
    assert calls == [datetime(2025, 2, 1, tzinfo=timezone.utc)]
    assert b.customer_spent == {"cust-1": Decimal("25"), "cust-4": Decimal("40")}
    assert b.rule_bends == {"LATE_FEE": 1}
    assert b.spent == Decimal("65")


def test_shorter_period_recount() -> None:
    b = open_budget(make_policy("1000", limit=None, per_customer="40"), now=at(3, 3))  # Monday
    record(b, "20", now=at(3, 3))
    record(b, "0", ActionKind.RULE_BEND, now=at(3, 4))
    record(b, "15", now=at(3, 10))  # next Monday
    assert refused(b, req("5.01"), at(3, 11)).reason == "PER_CUSTOMER_LIMIT_EXCEEDED"
    recount, _ = recounter(b)
    b.update_policy(make_policy("1000", period=PeriodKind.WEEK, limit=None, per_customer="30"), now=at(3, 12),
                    recount=recount)
    assert b.period_start == datetime(2025, 3, 10, tzinfo=timezone.utc)
    assert b.customer_spent == {"cust-1": Decimal("15")}
    assert b.rule_bends == {}
    assert reasons(b, req("15"), at(3, 12)) == []
    assert reasons(b, req("15.01"), at(3, 12)) == ["PER_CUSTOMER_LIMIT_EXCEEDED"]


def test_same_period_does_not_recount() -> None:
    b = open_budget(make_policy(per_customer="30"))
    record(b, "20")

    def boom(start: datetime) -> dict[str, Any]:
        raise AssertionError("recount called")

    b.update_policy(make_policy("500", per_customer="25"), now=NOW + HOUR, recount=boom)
    assert b.customer_spent == {"cust-1": Decimal("20")}
    assert reasons(b, req("5.01"), NOW + HOUR) == ["PER_CUSTOMER_LIMIT_EXCEEDED"]


def test_recount_folds_a_budgets_events() -> None:
    b = open_budget(make_policy("1000", per_customer="100", escalation=approval()))
    record(b, "10", ActionKind.RULE_BEND)
    approved = record(b, "60", customer="cust-2")
    decide(b, approved)
    record(b, "55", customer="cust-3")  # pending
    gone = record(b, "5", ActionKind.RULE_BEND, customer="cust-2", rule="EXPRESS")
    b.reverse(view_of(b, gone), actor_id="m", reason="x", request_id="v", now=NOW)
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    counts = Budget.recount(b.pending_events, start)
    assert counts == {"customers": {"cust-1": Decimal("10"), "cust-2": Decimal("60")}, "rules": {"LATE_FEE": 1}}
    assert counts == {"customers": b.customer_spent, "rules": b.rule_bends}
    assert Budget.recount(b.pending_events, datetime(2025, 3, 15, tzinfo=timezone.utc)) == {"customers": {}, "rules": {}}


# ================================================================ replay


def full_history() -> Budget:
    rule = BendableRule("LATE_FEE", max_per_period=3, max_value=usd("20"))
    b = open_budget(make_policy("200", per_customer="60", rules=(rule, EXPRESS), escalation=approval(role="lead")))
    record(b, "10", ActionKind.RULE_BEND)
    approved = record(b, "55", customer="cust-2")
    decide(b, approved, roles=("lead",))
    denied = record(b, "70", customer="cust-3")
    decide(b, denied, approve=False)
    expired = record(b, "25", ActionKind.RULE_BEND, customer="cust-3")
    b.expire(expired, request_id="e-1", now=NOW + DAY)
    reversed_ = record(b, "5", ActionKind.CREDIT, customer="cust-4")
    b.reverse(view_of(b, reversed_), actor_id="mgr", reason="x", request_id="v-1", now=NOW + DAY + HOUR)
    record(b, "65", customer="cust-5", now=at(3, 31, 20))  # still pending
    recount, _ = recounter(b)
    b.update_policy(
        make_policy("300", period=PeriodKind.QUARTER, per_customer="60", escalation=approval(approvers=("sup-2",))),
        now=at(3, 31, 21),
        recount=recount,
    )
    late = record(b, "90", customer="cust-6", now=at(3, 31, 22))
    decide(b, late, "sup-2", now=at(4, 1, 9))  # rolls over into the second quarter
    old = record(b, "7", now=at(4, 1, 10))
    record(b, "0", ActionKind.RULE_BEND, now=at(4, 2))
    b.reverse(view_of(b, old), actor_id="mgr", reason="x", request_id="v-2", now=at(4, 3))
    return b


def test_full_history_state() -> None:
    b = full_history()
    names = [type(e).__name__ for e in b.pending_events]
    for name in ("ActionApproved", "ActionDenied", "ActionExpired", "ActionReversed", "PolicyUpdated",
                 "PeriodRolledOver"):
        assert name in names
    assert b.period_start == datetime(2025, 4, 1, tzinfo=timezone.utc)
    assert b.spent == 0  # the late approval counts in Q1; the April credit was reversed
    assert b.rule_bends == {"LATE_FEE": 1}
    assert len(b.holds) == 1


def test_replaying_the_events_gives_the_same_state() -> None:
    b = full_history()
    b.close("left", now=at(4, 4))
    copy = replay(list(b.pending_events))
    assert isinstance(copy, Budget)
    assert state(copy) == state(b)
    assert copy.view(at(4, 4)) == b.view(at(4, 4))
    for version in [int(v) for v in b.outcomes] + [int(v) for v in b.holds]:
        event = recorded_event(b, version)
        assert action_view(event, copy.outcome(version), at(4, 4)) == view_of(b, version, at(4, 4))


def test_replaying_serialised_events_and_a_snapshot_gives_the_same_state() -> None:
    from eventsourcing.domain import Snapshot
    from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, Mapper, UUIDAsHex

    from leeway.adapters.transcodings import MoneyAsDict, PolicyAsDict

    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), PolicyAsDict(), MoneyAsDict()):
        transcoder.register(transcoding)
    mapper = Mapper(transcoder=transcoder)
    b = full_history()
    events = [mapper.to_domain_event(mapper.to_stored_event(e)) for e in b.pending_events]
    copy = replay(events)
    assert state(copy) == state(b)
    snapshot = mapper.to_domain_event(mapper.to_stored_event(Snapshot.take(b)))
    restored = snapshot.mutate(None)
    assert state(restored) == state(b)
    assert restored.view(at(4, 4)) == b.view(at(4, 4))


# ================================================================ TeamLedger


def team(cap: Cap | None = None, now: datetime = NOW) -> TeamLedger:
    ledger = TeamLedger(team_id="team-a")
    if cap is not None:
        ledger.set_cap(cap, now)
    return ledger


def count(ledger: TeamLedger, action_id: str, amount: str | Money, *, pending: bool = False,
          expires: datetime | None = None, now: datetime = NOW) -> None:
    """Checks the team cap (rules.check_team_cap, as take_action does) and counts the action."""
    value = usd(amount) if isinstance(amount, str) else amount
    refuse_if(check_team_cap(ledger, value, now))
    ledger.count_action(action_id=action_id, employee_id="emp-1", amount=value.amount, currency=value.currency,
                        pending=pending, expires_at=expires, at=now)


def refuse_if(breach: Breach | None) -> None:
    if breach is not None:
        raise breach.refusal()


def test_team_without_cap_counts_everything() -> None:
    t = team()
    count(t, "a1", "1000000")
    count(t, "a2", Money(Decimal("5"), "EUR"))
    assert t.usage(NOW).cap is None
    assert t.tally["daily"] == {"USD": {"2025-03-14": Decimal("1000000")}, "EUR": {"2025-03-14": Decimal("5")}}


def test_team_holds_count_until_settled_released_or_expired() -> None:
    t = team(Cap(usd("100"), PeriodKind.MONTH))
    expires = NOW + DAY
    count(t, "h1", "60", pending=True, expires=expires)
    count(t, "h2", "30", pending=True, expires=expires + DAY)
    usage = t.usage(NOW)
    assert (usage.spent, usage.held, usage.remaining) == (usd("0"), usd("90"), usd("10"))
    with pytest.raises(PreconditionFailed):
        count(t, "a1", "11")
    # An expired hold no longer counts, even before it is released.
    assert t.usage(expires).held == usd("30")
    count(t, "a1", "70", now=expires)
    # Settling makes the hold spend on the day it was requested.
    t.settle("h2", expires + HOUR)
    assert t.tally["daily"]["USD"] == {"2025-03-14": Decimal("30"), "2025-03-15": Decimal("70")}
    assert "h2" not in t.tally["holds"]
    t.release("h1", EXPIRED, expires + HOUR)
    assert t.tally["holds"] == {}
    events = len(t.pending_events)
    t.settle("h1", expires + HOUR)  # nothing to settle or release any more: no events
    t.release("h2", DENIED, expires + HOUR)
    assert len(t.pending_events) == events
    assert t.usage(expires + HOUR).remaining == usd("0")


def test_team_release_and_reverse_free_the_cap() -> None:
    t = team(Cap(usd("100"), PeriodKind.MONTH))
    count(t, "h1", "50", pending=True, expires=NOW + DAY)
    count(t, "a1", "50")
    t.release("h1", DENIED, NOW)
    assert t.usage(NOW).remaining == usd("50")
    t.reverse("a1", usd("50"), "2025-03-14", NOW + HOUR)
    assert t.usage(NOW).remaining == usd("100")
    count(t, "a2", "100", now=NOW + HOUR)


def test_team_reverse_in_a_past_period_does_not_free_this_one() -> None:
    t = team(Cap(usd("100"), PeriodKind.MONTH))
    count(t, "a1", "80")
    count(t, "a2", "100", now=at(4, 1, 1))
    t.reverse("a1", usd("80"), "2025-03-14", at(4, 2))
    usage = t.usage(at(4, 2))
    assert usage.spent == usd("100") and usage.remaining == usd("0")


def test_team_cap_set_mid_period_counts_earlier_spend() -> None:
    t = team()
    count(t, "a1", "30", now=at(3, 2))
    count(t, "a2", "50", now=at(2, 27))  # February: not in March
    count(t, "h1", "20", pending=True, expires=NOW + DAY, now=at(3, 14))
    t.set_cap(Cap(usd("100"), PeriodKind.MONTH), NOW)
    usage = t.usage(NOW)
    assert usage.cap == Cap(usd("100"), PeriodKind.MONTH)
    assert (usage.period_start, usage.period_end) == (
        datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 4, 1, tzinfo=timezone.utc)
    )
    assert (usage.spent, usage.held, usage.remaining) == (usd("30"), usd("20"), usd("50"))
    with pytest.raises(PreconditionFailed):
        count(t, "a3", "50.01")
    # A quarterly cap counts February too.
    t.set_cap(Cap(usd("100"), PeriodKind.QUARTER), NOW)
    assert t.usage(NOW).spent == usd("80")
    with pytest.raises(PreconditionFailed):
        count(t, "a3", "0.01")
    # Removing the cap lifts it.
    t.set_cap(None, NOW)
    assert t.cap is None
    count(t, "a3", "1000")


def test_team_cap_period_rolls_over() -> None:
    t = team(Cap(usd("100"), PeriodKind.WEEK))
    count(t, "a1", "100", now=at(3, 14))  # Friday
    with pytest.raises(PreconditionFailed):
        count(t, "a2", "1", now=at(3, 16, 23))  # Sunday
    count(t, "a2", "100", now=at(3, 17, 0))  # Monday
    assert t.usage(at(3, 17)).period_start == datetime(2025, 3, 17, tzinfo=timezone.utc)


def test_team_ledger_replays() -> None:
    t = team(Cap(usd("100"), PeriodKind.MONTH))
    count(t, "h1", "50", pending=True, expires=NOW + DAY)
    count(t, "a1", "20")
    t.settle("h1", NOW + HOUR)
    t.reverse("a1", usd("20"), "2025-03-14", NOW + HOUR)
    copy = replay(list(t.pending_events))
    assert (copy.cap, copy.tally) == (t.cap, t.tally)


# ================================================================ CustomerLedger


def check_cap(ledger: CustomerLedger, cap: Cap | None, amount: Money, now: datetime) -> None:
    refuse_if(check_customer_cap([ledger], {cap.amount.currency: cap} if cap else {}, amount, now))


def test_customer_cap() -> None:
    ledger = CustomerLedger(customer_id="cust-1")
    cap = Cap(usd("100"), PeriodKind.MONTH)
    ledger.note_action(action_id="a1", employee_id="emp-1", kind="REFUND", amount=Decimal("60"), currency="USD", at=NOW)
    ledger.note_action(action_id="h1", employee_id="emp-2", kind="CREDIT", amount=Decimal("30"), currency="USD",
                       at=NOW, pending=True, expires_at=NOW + DAY)
    assert ledger.action_count == 2
    check_cap(ledger, cap, usd("10"), NOW)
    check_cap(ledger, None, usd("1000"), NOW)
    with pytest.raises(PreconditionFailed) as info:
        check_cap(ledger, cap, usd("10.01"), NOW)
    error = info.value
    assert error.reason == "CUSTOMER_CAP_EXCEEDED"
    assert [(v.type, v.subject) for v in error.violations] == [("CUSTOMER_CAP", "customers/cust-1")]
    assert error.metadata["customer_id"] == "cust-1"
    assert error.metadata["remaining"] == "10" and error.metadata["requested"] == "10.01"
    # The hold stops counting when it expires or is released.
    check_cap(ledger, cap, usd("40"), NOW + DAY)
    ledger.release("h1", DENIED, NOW)
    check_cap(ledger, cap, usd("40"), NOW)
    usage = ledger.usage(cap, NOW)
    assert (usage.spent, usage.held, usage.remaining) == (usd("60"), usd("0"), usd("40"))
    ledger.reverse("a1", usd("60"), "2025-03-14", NOW)
    assert ledger.usage(cap, NOW).remaining == usd("100")
    # A cap is per currency: an amount in another currency is not counted against it.
    check_cap(ledger, cap, Money(Decimal("1000"), "EUR"), NOW)


def test_org_limits_keep_one_customer_cap_per_currency() -> None:
    """A cap per currency: setting one keeps the others; with at most one cap in force the change is recorded as
    before caps per currency (CustomerCapSet), so such a log reads the same to earlier versions."""
    usd_cap, eur_cap = Cap(usd("100"), PeriodKind.MONTH), Cap(Money(Decimal("90"), "EUR"), PeriodKind.WEEK)
    org = OrgLimits.new()
    org.set_customer_cap(usd_cap, NOW)
    org.set_customer_cap(Cap(usd("120"), PeriodKind.MONTH), NOW)
    assert org.customer_caps == {"USD": Cap(usd("120"), PeriodKind.MONTH)}
    org.set_customer_cap(eur_cap, NOW)
    assert org.customer_caps == {"USD": Cap(usd("120"), PeriodKind.MONTH), "EUR": eur_cap}
    org.set_customer_cap(None, NOW, currency="USD")
    assert org.customer_caps == {"EUR": eur_cap}
    org.set_customer_cap(usd_cap, NOW)
    org.set_customer_cap(None, NOW)  # no currency: every cap
    assert org.customer_caps == {}
    assert [type(e).__name__ for e in org.pending_events] == [
        "Created", "CustomerCapSet", "CustomerCapSet", "CustomerCapChanged", "CustomerCapSet", "CustomerCapChanged",
        "CustomerCapSet",
    ]
    changed = org.pending_events[3]
    assert (changed.currency, changed.cap) == ("EUR", eur_cap.to_dict())
    assert replay(list(org.pending_events)).customer_caps == {}
    assert replay(list(org.pending_events)[:4]).customer_caps == {"USD": Cap(usd("120"), PeriodKind.MONTH), "EUR": eur_cap}


def test_org_limits_from_a_snapshot_taken_before_caps_per_currency() -> None:
    org = OrgLimits.new()
    org.set_customer_cap(Cap(usd("100"), PeriodKind.MONTH), NOW)
    del org.customer_caps_data  # what an old snapshot restores: only the one cap
    assert org.customer_caps == {"USD": Cap(usd("100"), PeriodKind.MONTH)}
    org.set_customer_cap(Cap(Money(Decimal("5"), "EUR"), PeriodKind.MONTH), NOW)
    assert set(org.customer_caps) == {"USD", "EUR"}


def test_customer_hold_settles_on_the_day_it_was_requested() -> None:
    ledger = CustomerLedger(customer_id="cust-1")
    cap = Cap(usd("100"), PeriodKind.MONTH)
    ledger.note_action(action_id="h1", employee_id="emp-1", kind="REFUND", amount=Decimal("70"), currency="USD",
                       at=at(3, 31, 20), pending=True, expires_at=at(4, 1, 20))
    ledger.settle("h1", at(4, 1, 10))
    assert ledger.tally["daily"]["USD"] == {"2025-03-31": Decimal("70")}
    assert ledger.usage(cap, at(4, 1, 10)).remaining == usd("100")
    assert ledger.usage(cap, at(3, 31, 21)).spent == usd("70")


# ================================================================ HoldBook


def hold_book() -> HoldBook:
    book = HoldBook(name=HoldBook.NAME)
    specs = [
        ("act-1", "emp-1", "cust-1", NOW + 3 * HOUR, ("sup-1",), ""),
        ("act-2", "emp-2", "cust-1", NOW + 1 * HOUR, ("sup-1", "sup-2"), ""),
        ("act-3", "emp-1", "cust-2", NOW + 2 * HOUR, (), "lead"),
        ("act-4", "emp-2", "cust-2", NOW + 1 * HOUR, ("sup-2",), ""),
    ]
    for action_id, employee, customer, expires, approvers, role in specs:
        book.add(action_id=action_id, employee_id=employee, customer_id=customer, expires_at=expires,
                 approver_ids=approvers, approver_role=role, now=NOW)
    return book


def test_hold_book_add_and_close() -> None:
    book = hold_book()
    assert list(book.open) == ["act-1", "act-2", "act-3", "act-4"]
    assert book.open["act-3"] == {
        "sequence": 3, "employee_id": "emp-1", "customer_id": "cust-2", "expires_at": NOW + 2 * HOUR,
        "approver_ids": [], "approver_role": "lead",
    }
    book.close("act-2", APPROVED, NOW)
    assert "act-2" not in book.open
    events = len(book.pending_events)
    book.close("act-2", APPROVED, NOW)  # already closed: nothing happens
    book.close("unknown", DENIED, NOW)
    assert len(book.pending_events) == events
    book.add(action_id="act-5", employee_id="emp-3", customer_id="cust-3", expires_at=NOW, approver_ids=("x",),
             approver_role="", now=NOW)
    assert book.open["act-5"]["sequence"] == 5  # sequences are never reused
    copy = replay(list(book.pending_events))
    assert (copy.sequence, copy.open) == (book.sequence, book.open)


def test_hold_book_due() -> None:
    book = hold_book()
    assert book.due(NOW) == []
    assert book.due(NOW + HOUR - timedelta(microseconds=1)) == []
    assert book.due(NOW + HOUR) == ["act-2", "act-4"]  # soonest first, then by id
    assert book.due(NOW + 3 * HOUR) == ["act-2", "act-4", "act-3", "act-1"]
    assert book.due(NOW + 3 * HOUR, limit=2) == ["act-2", "act-4"]
    book.close("act-2", EXPIRED, NOW + HOUR)
    assert book.due(NOW + 3 * HOUR, limit=2) == ["act-4", "act-3"]


def test_hold_book_waiting_filters_in_request_order() -> None:
    book = hold_book()
    assert book.waiting(0, "", "", "") == [(1, "act-1"), (2, "act-2"), (3, "act-3"), (4, "act-4")]
    assert book.waiting(2, "", "", "") == [(3, "act-3"), (4, "act-4")]
    assert book.waiting(0, "sup-2", "", "") == [(2, "act-2"), (4, "act-4")]
    assert book.waiting(0, "sup-1", "emp-2", "") == [(2, "act-2")]
    assert book.waiting(0, "", "emp-1", "cust-2") == [(3, "act-3")]
    assert book.waiting(0, "", "", "cust-1") == [(1, "act-1"), (2, "act-2")]
    assert book.waiting(0, "lead", "", "") == []  # the filter is on approver ids, not roles
    assert book.waiting(4, "", "", "") == []
    book.close("act-1", DENIED, NOW)
    assert book.waiting(0, "sup-1", "", "") == [(2, "act-2")]
