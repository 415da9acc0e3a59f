"""leeway.domain.policy: Policy.build validates every part and reports every problem; to_dict/from_dict round
trip, and from_dict reads dicts written by older versions (keys missing) and newer ones (keys added)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from leeway.domain.errors import FieldViolation
from leeway.domain.money import Money
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import (
    DEFAULT_APPROVAL_TIMEOUT,
    MAX_APPROVERS,
    MAX_BENDABLE_RULES,
    ActionKind,
    ApprovalLimits,
    BendableRule,
    Escalation,
    EscalationMode,
    Policy,
    SplitDetection,
)


def usd(amount: str | int) -> Money:
    return Money(Decimal(amount), "USD")


def build(**overrides: Any) -> tuple[Policy | None, list[FieldViolation]]:
    parts: dict[str, Any] = dict(
        period_allowance=usd(100),
        period=PeriodKind.MONTH,
        per_action_limit=usd(50),
        allowed_kinds=[ActionKind.REFUND],
    )
    parts.update(overrides)
    return Policy.build(**parts)


def problems_of(**overrides: Any) -> list[FieldViolation]:
    policy, problems = build(**overrides)
    assert policy is None and problems
    return problems


def test_a_valid_policy() -> None:
    policy, problems = build(
        allowed_kinds=[ActionKind.RULE_BEND, ActionKind.REFUND, ActionKind.REFUND],
        per_customer_limit=usd(30),
        bendable_rules=[BendableRule("LATE_FEE", "waive it", 3, usd(20))],
        escalation=Escalation(EscalationMode.APPROVAL, timedelta(hours=2), ("mgr-1",), "supervisor"),
    )
    assert problems == [] and policy is not None
    assert policy.allowed_kinds == (ActionKind.REFUND, ActionKind.RULE_BEND)  # deduplicated, in enum order
    assert policy.currency == "USD"
    assert policy.allows(ActionKind.REFUND) and not policy.allows(ActionKind.GIFT)
    assert policy.bendable_rule("LATE_FEE") == BendableRule("LATE_FEE", "waive it", 3, usd(20))
    assert policy.bendable_rule("OTHER") is None
    assert policy.escalation.approver_ids == ("mgr-1",)


def test_defaults() -> None:
    policy, _ = build(per_action_limit=None)
    assert policy is not None
    assert policy.per_action_limit is None and policy.per_customer_limit is None
    assert policy.bendable_rules == ()
    assert policy.escalation == Escalation(EscalationMode.REFUSE, DEFAULT_APPROVAL_TIMEOUT, (), "")


def test_zero_limits_are_allowed() -> None:
    policy, problems = build(period_allowance=usd(0), per_action_limit=usd(0), per_customer_limit=usd(0))
    assert problems == [] and policy is not None


PROBLEMS: list[tuple[str, dict[str, Any], list[FieldViolation]]] = [
    ("allowance missing", {"period_allowance": None}, [FieldViolation("policy.period_allowance", "is required")]),
    (
        "allowance negative",
        {"period_allowance": usd(-1)},
        [FieldViolation("policy.period_allowance", "must not be negative")],
    ),
    (
        "allowance currency unknown",
        {"period_allowance": Money(Decimal(1), "XXQ"), "per_action_limit": None},
        [FieldViolation("policy.period_allowance.currency_code", "'XXQ' is not an ISO 4217 currency code")],
    ),
    (
        "too many decimals",
        {"period_allowance": usd("1.001")},
        [FieldViolation("policy.period_allowance", "USD amounts have at most 2 decimal places")],
    ),
    (
        "period missing",
        {"period": None},
        [FieldViolation("policy.period", "is required (PERIOD_DAY ... PERIOD_YEAR)")],
    ),
    (
        "per-action limit negative",
        {"per_action_limit": usd(-5)},
        [FieldViolation("policy.per_action_limit", "must not be negative")],
    ),
    (
        "per-action limit in another currency",
        {"per_action_limit": Money(Decimal(5), "EUR")},
        [FieldViolation("policy.per_action_limit.currency_code", "must equal period_allowance's currency USD")],
    ),
    (
        "per-customer limit in another currency",
        {"per_customer_limit": Money(Decimal(5), "EUR")},
        [FieldViolation("policy.per_customer_limit.currency_code", "must equal period_allowance's currency USD")],
    ),
    (
        "no kinds",
        {"allowed_kinds": []},
        [FieldViolation("policy.allowed_kinds", "must name at least one action kind")],
    ),
    (
        "bad rule code",
        {"bendable_rules": [BendableRule("LATE FEE")]},
        [
            FieldViolation(
                "policy.bendable_rules[0].rule_code", "must be 1-64 characters from letters, digits, '_', '-' and '.'"
            )
        ],
    ),
    (
        "rule code missing",
        {"bendable_rules": [BendableRule("", "no code")]},
        [FieldViolation("policy.bendable_rules[0].rule_code", "is required")],
    ),
    (
        "rule max value negative",
        {"bendable_rules": [BendableRule("A", max_value=usd(-5))]},
        [FieldViolation("policy.bendable_rules[0].max_value", "must not be negative")],
    ),
    (
        "per-customer limit negative",
        {"per_customer_limit": usd(-30)},
        [FieldViolation("policy.per_customer_limit", "must not be negative")],
    ),
    (
        "rule listed twice",
        {"bendable_rules": [BendableRule("A"), BendableRule("B"), BendableRule("A")]},
        [FieldViolation("policy.bendable_rules[2].rule_code", "A is listed twice")],
    ),
    (
        "rule description with control characters",
        {"bendable_rules": [BendableRule("A", "bad\x07")]},
        [FieldViolation("policy.bendable_rules[0].description", "must not contain control characters")],
    ),
    (
        "rule negative count",
        {"bendable_rules": [BendableRule("A", max_per_period=-1)]},
        [FieldViolation("policy.bendable_rules[0].max_per_period", "must not be negative (0: no limit)")],
    ),
    (
        "rule max value in another currency",
        {"bendable_rules": [BendableRule("A", max_value=Money(Decimal(1), "EUR"))]},
        [FieldViolation("policy.bendable_rules[0].max_value.currency_code", "must equal period_allowance's currency USD")],
    ),
    (
        "too many rules",
        {"bendable_rules": [BendableRule(f"R{i}") for i in range(MAX_BENDABLE_RULES + 1)]},
        [FieldViolation("policy.bendable_rules", f"must list at most {MAX_BENDABLE_RULES} rules")],
    ),
    (
        "approval without approvers",
        {"escalation": Escalation(EscalationMode.APPROVAL)},
        [FieldViolation("policy.escalation.approver_ids", "approver_ids or approver_role is required with MODE_APPROVAL")],
    ),
    (
        "timeout too short",
        {"escalation": Escalation(approval_timeout=timedelta(0))},
        [FieldViolation("policy.escalation.approval_timeout", "must be between 1 second and 30 days")],
    ),
    (
        "timeout too long",
        {"escalation": Escalation(approval_timeout=timedelta(days=30, seconds=1))},
        [FieldViolation("policy.escalation.approval_timeout", "must be between 1 second and 30 days")],
    ),
    (
        "bad approver id",
        {"escalation": Escalation(EscalationMode.APPROVAL, approver_ids=("mgr-1", "bad id"))},
        [
            FieldViolation(
                "policy.escalation.approver_ids[1]",
                "must start with a letter or digit and contain only letters, digits and . _ : @ + -",
            )
        ],
    ),
    (
        "bad approver role",
        {"escalation": Escalation(EscalationMode.APPROVAL, approver_role="-role")},
        [
            FieldViolation(
                "policy.escalation.approver_role",
                "must start with a letter or digit and contain only letters, digits and . _ : @ + -",
            )
        ],
    ),
    (
        "too many approvers",
        {"escalation": Escalation(EscalationMode.APPROVAL, approver_ids=tuple(f"m{i}" for i in range(MAX_APPROVERS + 1)))},
        [FieldViolation("policy.escalation.approver_ids", f"must name at most {MAX_APPROVERS} approvers")],
    ),
    (
        "max_held zero",
        {"escalation": Escalation(EscalationMode.APPROVAL, approver_ids=("m",), max_held=usd(0))},
        [FieldViolation("policy.escalation.max_held", "must be greater than zero")],
    ),
    (
        "max_held in another currency",
        {"escalation": Escalation(EscalationMode.APPROVAL, approver_ids=("m",), max_held=Money(Decimal(1), "EUR"))},
        [FieldViolation("policy.escalation.max_held.currency_code", "must equal period_allowance's currency USD")],
    ),
    (
        "split window too short",
        {"split_detection": SplitDetection(timedelta(seconds=59))},
        [FieldViolation("policy.split_detection.window", "must be between 1 minute and 7 days")],
    ),
    (
        "split window too long",
        {"split_detection": SplitDetection(timedelta(days=7, seconds=1))},
        [FieldViolation("policy.split_detection.window", "must be between 1 minute and 7 days")],
    ),
    (
        "approval limits negative and in another currency",
        {"approval_limits": ApprovalLimits(usd(-1), Money(Decimal(1), "EUR"))},
        [
            FieldViolation("policy.approval_limits.per_action", "must not be negative"),
            FieldViolation("policy.approval_limits.per_period.currency_code", "must equal period_allowance's currency USD"),
        ],
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), [p[1:] for p in PROBLEMS], ids=[p[0] for p in PROBLEMS])
def test_build_reports_the_problem(overrides: dict[str, Any], expected: list[FieldViolation]) -> None:
    assert problems_of(**overrides) == expected


def test_build_reports_every_problem_at_once_under_the_field_given() -> None:
    problems = problems_of(period_allowance=None, period=None, allowed_kinds=[], field="update.policy")
    assert [p.field for p in problems] == ["update.policy.period_allowance", "update.policy.period", "update.policy.allowed_kinds"]


def test_limits_are_not_compared_with_a_missing_allowance() -> None:
    assert problems_of(period_allowance=None, per_action_limit=Money(Decimal(1), "EUR")) == [
        FieldViolation("policy.period_allowance", "is required")
    ]


def test_issue_19_defaults_and_bounds() -> None:
    policy, problems = build(split_detection=SplitDetection(timedelta(minutes=1)),
                             approval_limits=ApprovalLimits(usd(0), None))
    assert problems == [] and policy is not None  # a minute; zero: approves nothing
    default, _ = build()
    assert default is not None
    assert default.max_held == usd(100)  # one allowance
    assert default.split_detection == SplitDetection(timedelta(hours=24), same_customer=False)
    assert default.approval_limits == ApprovalLimits() and not default.approval_limits.limited
    held, _ = build(escalation=Escalation(EscalationMode.APPROVAL, approver_ids=("m",), max_held=usd(250)))
    assert held is not None and held.max_held == usd(250)


def test_approval_with_a_role_alone_is_enough() -> None:
    policy, problems = build(escalation=Escalation(EscalationMode.APPROVAL, approver_role="supervisor"))
    assert problems == [] and policy is not None


# ============================================================================ stored form


def full_policy() -> Policy:
    policy, problems = build(
        period=PeriodKind.QUARTER,
        allowed_kinds=list(ActionKind),
        per_customer_limit=usd("12.50"),
        bendable_rules=[BendableRule("LATE_FEE", "late fees", 2, usd(10)), BendableRule("RETURN")],
        escalation=Escalation(EscalationMode.APPROVAL, timedelta(minutes=90), ("mgr-1", "mgr-2"), "supervisor"),
    )
    assert policy is not None, problems
    return policy


def issue_19_policy() -> Policy:
    policy, problems = build(
        escalation=Escalation(EscalationMode.APPROVAL, approver_ids=("mgr-1",), max_held=usd("150.50")),
        split_detection=SplitDetection(timedelta(hours=36), same_customer=True),
        approval_limits=ApprovalLimits(usd(500), None),
    )
    assert policy is not None, problems
    return policy


@pytest.mark.parametrize("policy", [full_policy(), build(per_action_limit=None)[0], issue_19_policy()],
                         ids=["full", "minimal", "issue 19"])
def test_to_dict_from_dict_round_trip(policy: Policy) -> None:
    data = policy.to_dict()
    assert Policy.from_dict(data) == policy
    assert Policy.from_dict(data).to_dict() == data


def test_the_stored_form() -> None:
    assert full_policy().to_dict() == {
        "period_allowance": {"amount": "100", "currency": "USD"},
        "period": "QUARTER",
        "per_action_limit": {"amount": "50", "currency": "USD"},
        "allowed_kinds": ["REFUND", "CREDIT", "RULE_BEND", "GIFT"],
        "per_customer_limit": {"amount": "12.50", "currency": "USD"},
        "bendable_rules": [
            {"rule_code": "LATE_FEE", "description": "late fees", "max_per_period": 2, "max_value": {"amount": "10", "currency": "USD"}},
            {"rule_code": "RETURN", "description": "", "max_per_period": 0, "max_value": None},
        ],
        "escalation": {
            "mode": "APPROVAL",
            "approval_timeout_seconds": 5400,
            "approver_ids": ["mgr-1", "mgr-2"],
            "approver_role": "supervisor",
        },
    }


def test_issue_19_parts_are_stored_only_when_set() -> None:
    """A policy with the defaults is stored exactly as before issue 19 (the stored-form test above); one with them
    set adds these keys."""
    data = issue_19_policy().to_dict()
    assert data["escalation"]["max_held"] == {"amount": "150.50", "currency": "USD"}
    assert data["split_detection"] == {"window_seconds": 129600, "same_customer": True}
    assert data["approval_limits"] == {"per_action": {"amount": "500", "currency": "USD"}, "per_period": None}
    assert {"split_detection", "approval_limits"}.isdisjoint(full_policy().to_dict())
    assert "max_held" not in full_policy().to_dict()["escalation"]


def test_from_dict_reads_an_old_dict_without_the_later_keys() -> None:
    old = dict(period_allowance=usd(100).to_dict(), period="MONTH", per_action_limit=None, allowed_kinds=["REFUND"])
    policy = Policy.from_dict(old)
    assert policy.per_customer_limit is None
    assert policy.bendable_rules == ()
    assert policy.escalation == Escalation()
    assert policy.escalation.approval_timeout == timedelta(seconds=86400)
    assert (policy.max_held, policy.split_detection, policy.approval_limits) == (
        usd(100), SplitDetection(), ApprovalLimits()
    )


@pytest.mark.parametrize("escalation", [None, {}, {"mode": "REFUSE"}])
def test_from_dict_defaults_a_missing_or_empty_escalation(escalation: dict[str, Any] | None) -> None:
    data = {**full_policy().to_dict(), "escalation": escalation}
    assert Policy.from_dict(data).escalation == Escalation()


def test_from_dict_defaults_missing_rule_keys_and_kinds() -> None:
    data = {
        "period_allowance": {"amount": "1", "currency": "USD"},
        "period": "DAY",
        "bendable_rules": [{"rule_code": "LATE_FEE"}],
    }
    policy = Policy.from_dict(data)
    assert policy.allowed_kinds == ()
    assert policy.per_action_limit is None
    assert policy.bendable_rules == (BendableRule("LATE_FEE", "", 0, None),)


def test_from_dict_ignores_keys_added_by_later_versions() -> None:
    data = full_policy().to_dict()
    data["future_key"] = {"anything": 1}
    data["escalation"] = {**data["escalation"], "future_escalation_key": True}
    data["bendable_rules"] = [{**r, "future_rule_key": 3} for r in data["bendable_rules"]]
    assert Policy.from_dict(data) == full_policy()


def test_rule_counts_stored_as_strings_are_read_as_ints() -> None:
    assert BendableRule.from_dict({"rule_code": "A", "max_per_period": "3"}).max_per_period == 3
