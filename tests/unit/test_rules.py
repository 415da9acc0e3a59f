"""leeway.domain.rules: one table per boundary (a state, a request, the reason it breaches or None), the order of
the walls and limits, and the exact breach each one reports (what callers receive)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from builders import make_policy, money, reason, usd, verdict
from leeway.domain.budget import Budget
from leeway.domain.errors import Breach, PermissionDenied, PreconditionFailed, PreconditionViolation
from leeway.domain.ledgers import CustomerLedger, TeamLedger
from leeway.domain.money import Money
from leeway.domain.periods import PeriodKind, period_bounds
from leeway.domain.policy import ActionKind, BendableRule, Policy, SplitDetection
from leeway.domain.reasons import Reason
from leeway.domain.command_rules import Approver, check_approver, check_reversible
from leeway.domain.rules import (
    LIMITS,
    WALLS,
    ActionRequest,
    Ceiling,
    check_action,
    check_allowance,
    check_bend_quota,
    check_bend_value,
    check_budget_open,
    check_currency,
    check_customer_cap,
    check_kind_allowed,
    check_occur_time,
    check_per_action_limit,
    check_per_customer_limit,
    check_policy_ceiling,
    check_rule_bendable,
    check_split_action,
    check_team_cap,
    most_periods_within,
    refusal_of,
)
from leeway.domain.tally import Cap
from leeway.domain.views import ActionView, action_view

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)  # a Friday in March
LATER = NOW + timedelta(hours=1)  # when the holds of approval() expire
APRIL = datetime(2025, 4, 1, 1, 0, tzinfo=timezone.utc)
LATE_FEE = BendableRule("LATE_FEE", max_per_period=2, max_value=usd(20))
EXPRESS = BendableRule("EXPRESS")  # no quota, no value limit
ALL = (ActionKind.REFUND, ActionKind.CREDIT, ActionKind.RULE_BEND, ActionKind.GIFT)


# ============================================================================ small builders (states, requests)

State = Callable[[], Budget]


def budget(*history: ActionRequest, closed: bool = False, approval: bool = False, **policy: object) -> State:
    """A budget (make_policy with LATE_FEE and EXPRESS, overridden by ``policy``) that recorded ``history`` at
    NOW; with ``approval``, actions over a limit wait for sup-1 (and hold their amount until LATER)."""

    def build() -> Budget:
        settings: dict[str, object] = {"rules": (LATE_FEE, EXPRESS), **policy}
        if approval:
            settings["approvers"] = ("sup-1",)
        b = Budget.open(employee_id="emp-1", team_id="team-a", display_name="Ada", policy=make_policy(**settings),
                        now=NOW)  # type: ignore[arg-type]
        for number, action in enumerate(history):
            b.record_action(action, request_id=f"r-{number}", now=NOW)
        if closed:
            b.close("left", now=NOW)
        return b

    return build


def refund(amount: str | int | Money, customer: str = "cust-1", case: str = "") -> ActionRequest:
    """A refund on no case unless told (the actions of one case count together: check_split_action)."""
    value = amount if isinstance(amount, Money) else usd(amount)
    return ActionRequest(customer, case, ActionKind.REFUND, value, "late delivery", {"order_id": "o-1"})


def gift(amount: str | int = 5) -> ActionRequest:
    return ActionRequest("cust-1", "", ActionKind.GIFT, usd(amount), "sorry", {"gift_type": "voucher"})


def bend(amount: str | int = 0, rule: str = "LATE_FEE", customer: str = "cust-1", case: str = "") -> ActionRequest:
    return ActionRequest(customer, case, ActionKind.RULE_BEND, usd(amount), "late delivery", {"rule_code": rule})


def team(*spent: str, cap: Cap | None = Cap(usd(100), PeriodKind.MONTH), held: str = "") -> TeamLedger:
    ledger = TeamLedger(team_id="team-a")
    if cap is not None:
        ledger.set_cap(cap, NOW)
    for number, amount in enumerate(spent):
        ledger.count_action(action_id=f"a{number}", employee_id="emp-1", amount=usd(amount).amount, currency="USD",
                            pending=False, expires_at=None, at=NOW)
    if held:
        ledger.count_action(action_id="h1", employee_id="emp-2", amount=usd(held).amount, currency="USD",
                            pending=True, expires_at=LATER, at=NOW)
    return ledger


def customer(*spent: str, held: str = "") -> CustomerLedger:
    ledger = CustomerLedger(customer_id="cust-1")
    for number, amount in enumerate(spent):
        ledger.note_action(action_id=f"a{number}", employee_id="emp-1", kind="REFUND", amount=Decimal(amount),
                           currency="USD", at=NOW)
    if held:
        ledger.note_action(action_id="h1", employee_id="emp-2", kind="CREDIT", amount=Decimal(held), currency="USD",
                           at=NOW, pending=True, expires_at=LATER)
    return ledger


CAP = Cap(usd(100), PeriodKind.MONTH)


# ============================================================================ walls: one table each


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        pytest.param(budget(), refund(10), None, id="open"),
        pytest.param(budget(closed=True), refund(10), Reason.BUDGET_CLOSED, id="closed"),
        pytest.param(budget(closed=True), refund(0), Reason.BUDGET_CLOSED, id="closed, even for nothing"),
    ],
)
def test_check_budget_open(state: State, action: ActionRequest, expected: str | None) -> None:
    assert reason(check_budget_open(state(), action, NOW)) == expected


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        pytest.param(budget(), refund(10), None, id="same currency"),
        pytest.param(budget(), refund(money(10, "EUR")), Reason.CURRENCY_MISMATCH, id="another currency"),
        pytest.param(budget(currency="EUR", rules=()), refund(10), Reason.CURRENCY_MISMATCH, id="budget in EUR"),
        pytest.param(budget(currency="EUR", rules=()), refund(money(10, "EUR")), None, id="both in EUR"),
    ],
)
def test_check_currency(state: State, action: ActionRequest, expected: str | None) -> None:
    assert reason(check_currency(state(), action, NOW)) == expected


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        pytest.param(budget(), refund(10), None, id="refund allowed"),
        pytest.param(budget(), bend(), None, id="bend allowed"),
        pytest.param(budget(), gift(), Reason.KIND_NOT_ALLOWED, id="gift not allowed"),
        pytest.param(budget(kinds=ALL), gift(), None, id="gift allowed"),
        pytest.param(budget(kinds=(ActionKind.GIFT,)), refund(1), Reason.KIND_NOT_ALLOWED, id="only gifts"),
    ],
)
def test_check_kind_allowed(state: State, action: ActionRequest, expected: str | None) -> None:
    assert reason(check_kind_allowed(state(), action, NOW)) == expected


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        pytest.param(budget(), bend(rule="LATE_FEE"), None, id="in the catalogue"),
        pytest.param(budget(), bend(rule="EXPRESS"), None, id="another in the catalogue"),
        pytest.param(budget(), bend(rule="FREE_UPGRADE"), Reason.RULE_NOT_BENDABLE, id="not in the catalogue"),
        pytest.param(budget(), bend(rule=""), Reason.RULE_NOT_BENDABLE, id="no rule code"),
        pytest.param(budget(rules=()), bend(), Reason.RULE_NOT_BENDABLE, id="empty catalogue"),
        pytest.param(
            budget(),
            ActionRequest("cust-1", "case-1", ActionKind.REFUND, usd(5), "r", {"rule_code": "FREE_UPGRADE"}),
            None,
            id="rule code of another kind is ignored",
        ),
    ],
)
def test_check_rule_bendable(state: State, action: ActionRequest, expected: str | None) -> None:
    assert reason(check_rule_bendable(state(), action, NOW)) == expected


# ============================================================================ limits: one table each


@pytest.mark.parametrize(
    ("state", "action", "now", "expected"),
    [
        pytest.param(budget(), bend(), NOW, None, id="none used"),
        pytest.param(budget(bend()), bend(), NOW, None, id="one of two used"),
        pytest.param(budget(bend(), bend(5, customer="cust-2")), bend(), NOW, Reason.RULE_BEND_QUOTA_EXCEEDED,
                     id="two of two used (any customer)"),
        pytest.param(budget(bend(), bend()), bend(rule="EXPRESS"), NOW, None, id="another rule: its own quota"),
        pytest.param(budget(*[bend(rule="EXPRESS")] * 5), bend(rule="EXPRESS"), NOW, None, id="no quota"),
        pytest.param(budget(bend(), bend()), bend(), APRIL, None, id="resets next period"),
        pytest.param(budget(bend(), bend(25), approval=True), bend(), NOW, Reason.RULE_BEND_QUOTA_EXCEEDED,
                     id="a live hold counts"),
        pytest.param(budget(bend(), bend(25), approval=True), bend(), LATER, None, id="an expired hold does not"),
        pytest.param(budget(bend(), bend()), refund(5), NOW, None, id="not a bend"),
    ],
)
def test_check_bend_quota(state: State, action: ActionRequest, now: datetime, expected: str | None) -> None:
    assert verdict(check_bend_quota, state, action, now) == expected


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        pytest.param(budget(), bend(0), None, id="free"),
        pytest.param(budget(), bend(20), None, id="max_value is inclusive"),
        pytest.param(budget(), bend("20.01"), Reason.RULE_BEND_VALUE_EXCEEDED, id="a cent over"),
        pytest.param(budget(), bend(1000, rule="EXPRESS"), None, id="no max_value"),
        pytest.param(budget(), refund(30), None, id="not a bend"),
    ],
)
def test_check_bend_value(state: State, action: ActionRequest, expected: str | None) -> None:
    assert reason(check_bend_value(state(), action, NOW)) == expected


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        pytest.param(budget(), refund(50), None, id="at the limit (inclusive)"),
        pytest.param(budget(), refund("50.01"), Reason.PER_ACTION_LIMIT_EXCEEDED, id="a cent over"),
        pytest.param(budget(), bend(60, rule="EXPRESS"), Reason.PER_ACTION_LIMIT_EXCEEDED, id="bends too"),
        pytest.param(budget(limit=None), refund(100), None, id="no limit"),
        pytest.param(budget(refund(50)), refund(50), None, id="per action, not per period"),
    ],
)
def test_check_per_action_limit(state: State, action: ActionRequest, expected: str | None) -> None:
    assert reason(check_per_action_limit(state(), action, NOW)) == expected


@pytest.mark.parametrize(
    ("state", "action", "now", "expected"),
    [
        pytest.param(budget(), refund(50), NOW, None, id="nothing spent"),
        pytest.param(budget(refund(50), refund(45)), refund(5), NOW, None, id="exactly what remains"),
        pytest.param(budget(refund(50), refund(45)), refund("5.01"), NOW, Reason.BUDGET_EXHAUSTED, id="a cent over"),
        pytest.param(budget(refund(50), refund(50)), bend(0), NOW, None, id="nothing fits when exhausted"),
        pytest.param(budget(refund(50), refund(50)), refund(1), APRIL, None, id="a new period"),
        pytest.param(budget(refund(60), approval=True), refund(41), NOW, Reason.BUDGET_EXHAUSTED,
                     id="a live hold counts"),
        pytest.param(budget(refund(60), approval=True), refund(40), NOW, None, id="what the hold leaves"),
        pytest.param(budget(refund(60), approval=True), refund(41), LATER, None, id="an expired hold does not"),
        pytest.param(budget(refund(60), approval=True), refund(41), APRIL, None,
                     id="a hold of the last period does not"),
    ],
)
def test_check_allowance(state: State, action: ActionRequest, now: datetime, expected: str | None) -> None:
    assert verdict(check_allowance, state, action, now) == expected


@pytest.mark.parametrize(
    ("state", "action", "now", "expected"),
    [
        pytest.param(budget(per_customer=30), refund(30), NOW, None, id="at the limit"),
        pytest.param(budget(refund(20), per_customer=30), refund("10.01"), NOW, Reason.PER_CUSTOMER_LIMIT_EXCEEDED,
                     id="a cent over what remains"),
        pytest.param(budget(refund(20), per_customer=30), refund(10), NOW, None, id="exactly what remains"),
        pytest.param(budget(refund(30), per_customer=30), refund(30, "cust-2"), NOW, None, id="per customer"),
        pytest.param(budget(refund(30), per_customer=30), bend(0), NOW, None, id="zero always fits"),
        pytest.param(budget(refund(30), per_customer=30), refund(30), APRIL, None, id="resets next period"),
        pytest.param(budget(refund(40), per_customer=30, approval=True), refund(1), NOW,
                     Reason.PER_CUSTOMER_LIMIT_EXCEEDED, id="a live hold counts"),
        pytest.param(budget(refund(40), per_customer=30, approval=True), refund(30), LATER, None,
                     id="an expired hold does not"),
        pytest.param(budget(refund(30)), refund(1000), NOW, None, id="no limit"),
    ],
)
def test_check_per_customer_limit(state: State, action: ActionRequest, now: datetime, expected: str | None) -> None:
    assert verdict(check_per_customer_limit, state, action, now) == expected


# ============================================================================ when the employee acted (occur_time)


@pytest.mark.parametrize(
    ("occur_time", "max_age", "expected"),
    [
        pytest.param(None, timedelta(days=30), None, id="unset: now"),
        pytest.param(NOW, timedelta(days=30), None, id="now"),
        pytest.param(NOW + timedelta(minutes=5), timedelta(days=30), None, id="clock skew"),
        pytest.param(NOW + timedelta(minutes=5, microseconds=1), timedelta(days=30),
                     "must not be more than 5 minutes in the future", id="beyond clock skew"),
        pytest.param(NOW - timedelta(days=30), timedelta(days=30), None, id="exactly 30 days back"),
        pytest.param(NOW - timedelta(days=30, microseconds=1), timedelta(days=30),
                     "must not be more than 30 days in the past", id="a moment more"),
        pytest.param(NOW - timedelta(days=365 * 6), timedelta(days=30),
                     "must not be more than 30 days in the past", id="years back"),
        pytest.param(NOW - timedelta(days=2), timedelta(days=1), "must not be more than 1 day in the past",
                     id="a shorter horizon"),
        pytest.param(NOW - timedelta(days=400), timedelta(days=3650), None, id="a longer horizon"),
    ],
)
def test_check_occur_time(occur_time: datetime | None, max_age: timedelta, expected: str | None) -> None:
    error = check_occur_time(occur_time, NOW, max_age)
    if expected is None:
        assert error is None
        return
    assert error is not None and error.reason == Reason.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in error.violations] == [("occur_time", expected)]


def test_check_occur_time_defaults_to_30_days() -> None:
    assert check_occur_time(NOW - timedelta(days=30), NOW) is None
    assert check_occur_time(NOW - timedelta(days=31), NOW) is not None


# ============================================================================ caps above the employee


@pytest.mark.parametrize(
    ("ledger", "amount", "now", "expected"),
    [
        pytest.param(lambda: team(cap=None), usd(10**6), NOW, None, id="no cap"),
        pytest.param(lambda: team("60"), usd(40), NOW, None, id="exactly what remains"),
        pytest.param(lambda: team("60"), usd("40.01"), NOW, Reason.TEAM_CAP_EXCEEDED, id="a cent over"),
        pytest.param(lambda: team("100"), usd(0), NOW, None, id="zero always fits"),
        pytest.param(lambda: team("60", held="30"), usd(11), NOW, Reason.TEAM_CAP_EXCEEDED, id="a live hold counts"),
        pytest.param(lambda: team("60", held="30"), usd(11), LATER, None, id="an expired hold does not"),
        pytest.param(lambda: team("100"), usd(100), APRIL, None, id="a new period"),
        pytest.param(lambda: team(), money(1, "EUR"), NOW, Reason.CURRENCY_MISMATCH, id="another currency"),
        pytest.param(lambda: team(cap=None), money(1, "EUR"), NOW, None, id="no cap, any currency"),
    ],
)
def test_check_team_cap(ledger: Callable[[], TeamLedger], amount: Money, now: datetime, expected: str | None) -> None:
    assert reason(check_team_cap(ledger(), amount, now)) == expected


EUR_CAP = Cap(money(100, "EUR"), PeriodKind.MONTH)


@pytest.mark.parametrize(
    ("ledgers", "caps", "amount", "now", "expected"),
    [
        pytest.param(lambda: [customer("60")], {}, usd(1000), NOW, None, id="no cap"),
        pytest.param(lambda: [customer("60")], {"USD": CAP}, usd(40), NOW, None, id="exactly what remains"),
        pytest.param(lambda: [customer("60")], {"USD": CAP}, usd("40.01"), NOW, Reason.CUSTOMER_CAP_EXCEEDED,
                     id="a cent over"),
        pytest.param(lambda: [customer("100")], {"USD": CAP}, usd(0), NOW, None, id="zero always fits"),
        pytest.param(lambda: [customer("60", held="30")], {"USD": CAP}, usd("10.01"), NOW, Reason.CUSTOMER_CAP_EXCEEDED,
                     id="a live hold counts"),
        pytest.param(lambda: [customer("60", held="30")], {"USD": CAP}, usd(40), LATER, None,
                     id="an expired hold does not"),
        pytest.param(lambda: [customer("100")], {"USD": CAP}, usd(100), APRIL, None, id="a new period"),
        pytest.param(lambda: [customer()], {"USD": CAP}, money(1000, "EUR"), NOW, None,
                     id="another currency: no cap in it (not CURRENCY_MISMATCH)"),
        pytest.param(lambda: [customer("60")], {"USD": CAP, "EUR": EUR_CAP}, money("100.01", "EUR"), NOW,
                     Reason.CUSTOMER_CAP_EXCEEDED, id="the cap in the amount's currency"),
        pytest.param(lambda: [customer("60")], {"USD": CAP, "EUR": EUR_CAP}, money(100, "EUR"), NOW, None,
                     id="counts only spend in its own currency"),
        pytest.param(lambda: [customer("30"), customer("30", held="30")], {"USD": CAP}, usd("10.01"), NOW,
                     Reason.CUSTOMER_CAP_EXCEEDED, id="the ledgers of old spellings count together"),
        pytest.param(lambda: [customer("30"), customer("30", held="30")], {"USD": CAP}, usd(10), NOW, None,
                     id="old spellings: exactly what remains"),
    ],
)
def test_check_customer_cap(
    ledgers: Callable[[], list[CustomerLedger]], caps: dict[str, Cap], amount: Money, now: datetime,
    expected: str | None,
) -> None:
    assert reason(check_customer_cap(ledgers(), caps, amount, now)) == expected


# ============================================================================ order and the combined check


def test_walls_and_limits_are_in_the_order_of_precedence() -> None:
    assert WALLS == (check_budget_open, check_currency, check_kind_allowed, check_rule_bendable)
    assert LIMITS == (
        check_bend_quota, check_bend_value, check_per_action_limit, check_split_action, check_allowance,
        check_per_customer_limit,
    )


@pytest.mark.parametrize(
    ("state", "action", "refused", "exceeded"),
    [
        pytest.param(budget(closed=True), refund(money(999, "EUR")), Reason.BUDGET_CLOSED, None,
                     id="closed before everything"),
        pytest.param(budget(), ActionRequest("c", "k", ActionKind.GIFT, money(999, "EUR"), "r"),
                     Reason.CURRENCY_MISMATCH, None, id="currency before kind"),
        pytest.param(budget(), gift(999), Reason.KIND_NOT_ALLOWED, None, id="kind before the limits"),
        pytest.param(budget(bend(), bend()), bend(999, rule="NOPE"), Reason.RULE_NOT_BENDABLE, None,
                     id="catalogue before the limits"),
        pytest.param(budget(), refund(10), None, [], id="within every limit"),
        pytest.param(budget(), refund(999), None, [Reason.PER_ACTION_LIMIT_EXCEEDED, Reason.BUDGET_EXHAUSTED],
                     id="two limits"),
        pytest.param(
            budget(bend(10), per_customer=30, rules=(BendableRule("LATE_FEE", max_per_period=1, max_value=usd(20)),)),
            bend(95),
            None,
            [
                Reason.RULE_BEND_QUOTA_EXCEEDED, Reason.RULE_BEND_VALUE_EXCEEDED, Reason.PER_ACTION_LIMIT_EXCEEDED,
                Reason.BUDGET_EXHAUSTED, Reason.PER_CUSTOMER_LIMIT_EXCEEDED,
            ],
            id="every limit, in order",
        ),
    ],
)
def test_check_action(state: State, action: ActionRequest, refused: str | None, exceeded: list[str] | None) -> None:
    b = state()
    if refused is not None:
        with pytest.raises(PreconditionFailed) as info:
            check_action(b, action, NOW)
        assert info.value.reason == refused
        assert len(info.value.violations) == 1
    else:
        assert [breach.reason for breach in check_action(b, action, NOW)] == exceeded
        assert [breach.reason for breach in b.check_action(action, NOW)] == exceeded


def test_limits_exceeded_together_are_refused_together() -> None:
    breaches = check_action(budget()(), refund(999), NOW)
    error = refusal_of(breaches)
    assert error.message == (
        "999 USD exceeds the per-action limit of 50 USD; 999 USD exceeds what remains of this period's allowance "
        "(100 USD)"
    )
    assert error.reason == "PER_ACTION_LIMIT_EXCEEDED" and type(error.reason) is str
    assert [v.type for v in error.violations] == ["PER_ACTION_LIMIT", "PERIOD_ALLOWANCE"]
    assert error.metadata == {
        "employee_id": "emp-1", "limit": "50", "requested": "999", "exceeded": "PER_ACTION_LIMIT_EXCEEDED,BUDGET_EXHAUSTED",
    }


# ============================================================================ what callers receive, exactly

END = "2025-04-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        pytest.param(
            lambda: check_budget_open(budget(closed=True)(), refund(1), NOW),
            Breach("BUDGET_CLOSED", "the budget of employee emp-1 is closed",
                   PreconditionViolation("BUDGET_STATE", "budgets/emp-1", "budget is closed"), {"employee_id": "emp-1"}),
            id="BUDGET_CLOSED",
        ),
        pytest.param(
            lambda: check_currency(budget()(), refund(money(5, "EUR")), NOW),
            Breach("CURRENCY_MISMATCH", "amount is in EUR but the budget is in USD",
                   PreconditionViolation("CURRENCY", "budgets/emp-1", "budget currency is USD, not EUR"),
                   {"employee_id": "emp-1", "budget_currency": "USD", "amount_currency": "EUR"}),
            id="CURRENCY_MISMATCH",
        ),
        pytest.param(
            lambda: check_kind_allowed(budget()(), gift(), NOW),
            Breach("KIND_NOT_ALLOWED", "employee emp-1 may not take GIFT actions (allowed: REFUND,CREDIT,RULE_BEND)",
                   PreconditionViolation("ALLOWED_KINDS", "budgets/emp-1", "GIFT is not in allowed_kinds"),
                   {"employee_id": "emp-1", "kind": "GIFT", "allowed_kinds": "REFUND,CREDIT,RULE_BEND"}),
            id="KIND_NOT_ALLOWED",
        ),
        pytest.param(
            lambda: check_rule_bendable(budget()(), bend(rule="FREE_UPGRADE"), NOW),
            Breach("RULE_NOT_BENDABLE", "rule FREE_UPGRADE is not in employee emp-1's catalogue of bendable rules",
                   PreconditionViolation("BENDABLE_RULES", "budgets/emp-1", "FREE_UPGRADE is not in policy.bendable_rules"),
                   {"employee_id": "emp-1", "rule_code": "FREE_UPGRADE", "bendable_rules": "LATE_FEE,EXPRESS"}),
            id="RULE_NOT_BENDABLE",
        ),
        pytest.param(
            lambda: check_bend_quota(budget(bend(), bend())(), bend(), NOW),
            Breach("RULE_BEND_QUOTA_EXCEEDED", "rule LATE_FEE was already bent 2 times this period (at most 2)",
                   PreconditionViolation("RULE_BEND_QUOTA", "budgets/emp-1/rules/LATE_FEE",
                                         f"max_per_period is 2, used 2 until {END}"),
                   {"employee_id": "emp-1", "rule_code": "LATE_FEE", "max_per_period": "2", "used": "2"}),
            id="RULE_BEND_QUOTA_EXCEEDED",
        ),
        pytest.param(
            lambda: check_bend_value(budget()(), bend("20.01"), NOW),
            Breach("RULE_BEND_VALUE_EXCEEDED", "20.01 USD exceeds the most a bend of LATE_FEE may cost (20 USD)",
                   PreconditionViolation("RULE_BEND_VALUE", "budgets/emp-1/rules/LATE_FEE",
                                         "max_value is 20 USD, asked 20.01 USD"),
                   {"employee_id": "emp-1", "rule_code": "LATE_FEE", "limit": "20", "requested": "20.01"}),
            id="RULE_BEND_VALUE_EXCEEDED",
        ),
        pytest.param(
            lambda: check_per_action_limit(budget()(), refund("50.5"), NOW),
            Breach("PER_ACTION_LIMIT_EXCEEDED", "50.5 USD exceeds the per-action limit of 50 USD",
                   PreconditionViolation("PER_ACTION_LIMIT", "budgets/emp-1", "per_action_limit is 50 USD, asked 50.5 USD"),
                   {"employee_id": "emp-1", "limit": "50", "requested": "50.5"}),
            id="PER_ACTION_LIMIT_EXCEEDED",
        ),
        pytest.param(
            lambda: check_allowance(budget(refund(60), approval=True)(), refund(41), NOW),
            Breach("BUDGET_EXHAUSTED", "41 USD exceeds what remains of this period's allowance (40 USD)",
                   PreconditionViolation("PERIOD_ALLOWANCE", "budgets/emp-1", f"remaining 40 USD of 100 USD until {END}"),
                   {"employee_id": "emp-1", "remaining": "40", "held": "60", "requested": "41", "period_end": END}),
            id="BUDGET_EXHAUSTED",
        ),
        pytest.param(
            lambda: check_per_customer_limit(budget(refund(40), per_customer=30, approval=True)(), refund(1), NOW),
            Breach("PER_CUSTOMER_LIMIT_EXCEEDED",
                   "1 USD for customer cust-1 exceeds what remains of the per-customer limit (-10 USD of 30 USD)",
                   PreconditionViolation("PER_CUSTOMER_LIMIT", "budgets/emp-1/customers/cust-1",
                                         f"per_customer_limit is 30 USD, remaining -10 USD until {END}"),
                   {"employee_id": "emp-1", "customer_id": "cust-1", "limit": "30", "remaining": "-10", "requested": "1"}),
            id="PER_CUSTOMER_LIMIT_EXCEEDED",
        ),
        pytest.param(
            lambda: check_team_cap(team("60"), usd("40.01"), NOW),
            Breach("TEAM_CAP_EXCEEDED", "40.01 USD exceeds what remains of the team cap (40 USD of 100 USD this period)",
                   PreconditionViolation("TEAM_CAP", "teams/team-a", f"remaining 40 USD of 100 USD until {END}"),
                   {"cap": "100", "remaining": "40", "requested": "40.01", "period_end": END, "team_id": "team-a"}),
            id="TEAM_CAP_EXCEEDED",
        ),
        pytest.param(
            lambda: check_team_cap(team(), money(1, "EUR"), NOW),
            Breach("CURRENCY_MISMATCH", "the team cap is in USD; it cannot count an amount in EUR",
                   PreconditionViolation("CURRENCY", "teams/team-a", "the team cap is in USD"),
                   {"cap_currency": "USD", "amount_currency": "EUR", "team_id": "team-a"}),
            id="team cap CURRENCY_MISMATCH",
        ),
        pytest.param(
            lambda: check_customer_cap([customer("70")], {"USD": CAP}, usd(31), NOW),
            Breach("CUSTOMER_CAP_EXCEEDED",
                   "31 USD exceeds what remains of the organisation's per-customer cap (30 USD of 100 USD this period)",
                   PreconditionViolation("CUSTOMER_CAP", "customers/cust-1", f"remaining 30 USD of 100 USD until {END}"),
                   {"cap": "100", "remaining": "30", "requested": "31", "period_end": END, "customer_id": "cust-1"}),
            id="CUSTOMER_CAP_EXCEEDED",
        ),
    ],
)
def test_each_breach_is_exactly_what_callers_receive(check: Callable[[], Breach | None], expected: Breach) -> None:
    breach = check()
    assert breach == expected
    assert list(breach.metadata) == list(expected.metadata)  # the order, too
    refusal = breach.refusal()
    assert (refusal.message, refusal.reason, refusal.violations, refusal.metadata) == (
        expected.message, expected.reason, [expected.violation], expected.metadata,
    )
    assert type(refusal.reason) is str


# ============================================================================ who may decide, reverse, grant (issue 18)


def pending(employee: str = "emp-1", team_id: str = "team-a", approvers: tuple[str, ...] = ("sup-1",),
            role: str = "") -> ActionView:
    """An action as recorded: waiting for ``approvers`` / ``role`` (none of either: it never waited)."""
    waits = bool(approvers or role)
    return ActionView(
        action_id="act_1", employee_id=employee, team_id=team_id, customer_id="cust-1", case_id="case-1",
        kind=ActionKind.REFUND, amount=usd(60), reason="late", details={"order_id": "o-1"},
        state="PENDING_APPROVAL" if waits else "RECORDED", policy_version=1, occur_time=NOW, record_time=NOW,
        request_id="r-1", budget_version=2, approver_ids=approvers, approver_role=role,
    )


@pytest.mark.parametrize(
    ("action", "approver", "roles", "teams", "any_team", "expected"),
    [
        pytest.param(pending(), "sup-1", (), (), False, None, id="named"),
        pytest.param(pending(), "sup-2", ("supervisor",), ("team-a",), False, Reason.APPROVER_NOT_AUTHORIZED,
                     id="not named, no role asked"),
        pytest.param(pending(approvers=("emp-1",), role="lead"), "emp-1", ("lead",), ("team-a",), True,
                     Reason.SELF_APPROVAL_NOT_ALLOWED, id="own, even named and with the role"),
        pytest.param(pending(role="lead"), "boss", ("lead",), ("team-a",), False, None, id="role in the team"),
        pytest.param(pending(role="lead"), "boss", ("lead",), ("team-b", "team-a"), False, None,
                     id="role, one of the teams"),
        pytest.param(pending(role="lead"), "boss", ("lead",), ("team-b",), False, Reason.APPROVER_NOT_AUTHORIZED,
                     id="role in another team"),
        pytest.param(pending(role="lead"), "boss", ("lead",), (), False, Reason.APPROVER_NOT_AUTHORIZED,
                     id="role without teams"),
        pytest.param(pending(role="lead"), "boss", ("lead",), (), True, None, id="role, any team (admin)"),
        pytest.param(pending(role="lead"), "boss", ("Lead",), ("team-a",), False, Reason.APPROVER_NOT_AUTHORIZED,
                     id="role names are exact"),
        pytest.param(pending(role="lead"), "boss", (), ("team-a",), True, Reason.APPROVER_NOT_AUTHORIZED,
                     id="any team, without the role"),
        pytest.param(pending(), "sup-2", ("",), ("team-a",), False, Reason.APPROVER_NOT_AUTHORIZED,
                     id="an empty role matches no empty policy role"),
        pytest.param(pending(approvers=()), "sup-2", (), (), False, None, id="never waited: its state refuses"),
        pytest.param(pending(approvers=()), "emp-1", (), (), False, Reason.SELF_APPROVAL_NOT_ALLOWED,
                     id="never waited, own"),
    ],
)
def test_check_approver(action: ActionView, approver: str, roles: tuple[str, ...], teams: tuple[str, ...],
                        any_team: bool, expected: str | None) -> None:
    refusal = check_approver(action, Approver(approver, frozenset(roles), frozenset(teams), any_team))
    assert (None if refusal is None else refusal.reason) == expected


def test_check_approver_names_neither_the_approvers_nor_the_team() -> None:
    refusal = check_approver(pending(approvers=("duty-7", "duty-8"), role="lead", team_id="night-desk"),
                             Approver("sam", frozenset({"lead"}), frozenset({"day-desk"})))
    assert refusal is not None
    assert (refusal.message, refusal.reason, refusal.metadata) == (
        "sam may not decide this action: it needs one of the approvers its policy named, or the role lead in the "
        "action's team",
        "APPROVER_NOT_AUTHORIZED",
        {"approver_id": "sam", "approver_role": "lead"},
    )


def recorded_view(b: Budget) -> ActionView:
    """The view of the last action ``b`` recorded."""
    event = [e for e in b.pending_events if isinstance(e, Budget.ActionRecorded)][-1]
    return action_view(event, b.outcome(event.originator_version))


def reversed_budget() -> Budget:
    b = budget(refund(10))()
    b.reverse(recorded_view(b), actor_id="mgr-1", reason="x", request_id="v-1", now=NOW)
    return b


@pytest.mark.parametrize(
    ("state", "actor", "expected"),
    [
        pytest.param(budget(refund(10)), "mgr-1", None, id="someone else's"),
        pytest.param(budget(refund(10)), "emp-1", Reason.SELF_REVERSAL_NOT_ALLOWED, id="own"),
        pytest.param(reversed_budget, "mgr-1", Reason.ACTION_ALREADY_REVERSED, id="reversed already"),
        pytest.param(reversed_budget, "emp-1", Reason.SELF_REVERSAL_NOT_ALLOWED, id="own, before its state"),
        pytest.param(budget(refund(60), approval=True), "emp-1", Reason.SELF_REVERSAL_NOT_ALLOWED, id="own pending"),
        pytest.param(budget(refund(60), approval=True), "mgr-1", Reason.ACTION_NOT_REVERSIBLE, id="pending"),
    ],
)
def test_check_reversible(state: State, actor: str, expected: str | None) -> None:
    b = state()
    refusal = check_reversible(b, recorded_view(b), actor)
    assert (None if refusal is None else refusal.reason) == expected
    if expected == Reason.SELF_REVERSAL_NOT_ALLOWED:
        assert isinstance(refusal, PermissionDenied)
        assert (refusal.message, refusal.metadata) == (
            "nobody may reverse their own action", {"actor_id": "emp-1", "employee_id": "emp-1"}
        )


def test_most_periods_within_is_the_most_that_touch_one_period() -> None:
    """Counted on the calendar, 2010 to 2041 (2012 and 2040 are leap years starting on a Sunday): the table is
    exactly the worst case of every pair, never less."""
    touched: dict[tuple[PeriodKind, PeriodKind, datetime], set[datetime]] = {}
    day = datetime(2010, 1, 1, tzinfo=timezone.utc)
    while day.year < 2042:
        starts = {kind: period_bounds(kind, day)[0] for kind in PeriodKind}
        for kind in PeriodKind:
            for other in PeriodKind:
                touched.setdefault((kind, other, starts[other]), set()).add(starts[kind])
        day += timedelta(days=1)
    most: dict[tuple[PeriodKind, PeriodKind], int] = {}
    for (kind, other, _), starts_of_kind in touched.items():
        most[(kind, other)] = max(most.get((kind, other), 0), len(starts_of_kind))
    assert {pair: most_periods_within(*pair) for pair in most} == most
    assert most[(PeriodKind.WEEK, PeriodKind.YEAR)] == 54 and most[(PeriodKind.MONTH, PeriodKind.WEEK)] == 2


MONTH, DAY_, YEAR = PeriodKind.MONTH, PeriodKind.DAY, PeriodKind.YEAR
OWN = make_policy(1000, limit=50, per_customer=300, rules=(LATE_FEE,))  # the supervisor's own
NOW_POLICY = make_policy(100, limit=40, per_customer=None, rules=(LATE_FEE,))  # the employee's now
LIMITED = make_policy(100, limit=40, rules=(LATE_FEE,), approval_limits=(50, 500))  # the employee's now, an approver
OWN_LIMITED = make_policy(1000, limit=50, rules=(LATE_FEE,), approval_limits=(100, 1000))  # the supervisor's own
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("now", "own", "new", "exceeded"),
    [
        pytest.param(NOW_POLICY, OWN, make_policy(500, limit=50, per_customer=300, rules=(LATE_FEE,)), None,
                     id="within their own"),
        pytest.param(NOW_POLICY, OWN, make_policy(1_000_000_000, limit=50, per_customer=300, rules=(LATE_FEE,)),
                     ["period_allowance"], id="a billion"),
        pytest.param(make_policy(5000, limit=50), OWN, make_policy(5000, limit=50), None, id="kept above their own"),
        pytest.param(make_policy(5000, limit=50), OWN, make_policy(3000, limit=50), None, id="lowered, still above"),
        pytest.param(make_policy(5000, limit=50), OWN, make_policy(6000, limit=50),
                     ["period_allowance", "per_customer_limit"], id="raised beyond both (per customer: all of it)"),
        pytest.param(NOW_POLICY, make_policy(3000, limit=None), make_policy(100, limit=None, period=DAY_),
                     ["period_allowance", "per_customer_limit"], id="daily 100 is 3,100 in a month"),
        pytest.param(NOW_POLICY, make_policy(3000, limit=None), make_policy(96, limit=None, period=DAY_), None,
                     id="daily 96 is 2,976 in a month"),
        pytest.param(NOW_POLICY, make_policy(1000, limit=None), make_policy(1000, limit=None, period=YEAR), None,
                     id="a yearly allowance within one month's"),
        pytest.param(NOW_POLICY, make_policy(1000, limit=None), make_policy(1001, limit=None, period=YEAR),
                     ["period_allowance", "per_action_limit", "per_customer_limit"],
                     id="a yearly allowance may go in one month"),
        pytest.param(make_policy(100, limit=None), make_policy(100, limit=None),
                     make_policy(100, limit=None, period=DAY_), ["period_allowance", "per_customer_limit"],
                     id="same amount, shorter period"),
        pytest.param(NOW_POLICY, OWN, make_policy(500, limit=60, per_customer=300, rules=(LATE_FEE,)),
                     ["per_action_limit"], id="per-action above"),
        pytest.param(NOW_POLICY, OWN, make_policy(500, limit=None, per_customer=300, rules=(LATE_FEE,)),
                     ["per_action_limit"], id="no per-action limit: the allowance"),
        pytest.param(NOW_POLICY, OWN, make_policy(40, limit=None, per_customer=300, rules=(LATE_FEE,)), None,
                     id="no per-action limit, allowance below"),
        pytest.param(NOW_POLICY, OWN, make_policy(500, limit=50, per_customer=None, rules=(LATE_FEE,)),
                     ["per_customer_limit"], id="no per-customer limit: the allowance"),
        pytest.param(NOW_POLICY, OWN, make_policy(500, kinds=ALL, per_customer=300, rules=(LATE_FEE,)),
                     ["allowed_kinds.GIFT"], id="a kind they may not take"),
        pytest.param(NOW_POLICY, OWN, make_policy(50, per_customer=30, rules=(EXPRESS,)), ["bendable_rules.EXPRESS"],
                     id="a rule they may not bend"),
        pytest.param(NOW_POLICY, OWN,
                     make_policy(50, per_customer=30, rules=(BendableRule("LATE_FEE", max_per_period=3),)),
                     ["bendable_rules.LATE_FEE.max_per_period", "bendable_rules.LATE_FEE.max_value"],
                     id="a rule's quota and value"),
        pytest.param(NOW_POLICY, OWN,
                     make_policy(30, per_customer=9, period=DAY_,
                                 rules=(BendableRule("LATE_FEE", max_per_period=1, max_value=usd(20)),)),
                     ["bendable_rules.LATE_FEE.max_per_period"], id="a daily quota of 1 is 31 a month"),
        pytest.param(NOW_POLICY, None, make_policy(101, limit=40, per_customer=100, rules=(LATE_FEE,)),
                     ["period_allowance"], id="no budget of their own: raise"),
        pytest.param(NOW_POLICY, None, make_policy(90, limit=40, rules=(LATE_FEE,)), None,
                     id="no budget of their own: lower"),
        pytest.param(NOW_POLICY, make_policy(1000, currency="EUR"), make_policy(500, limit=40, rules=(LATE_FEE,)),
                     ["period_allowance", "per_customer_limit"], id="their own in another currency: only lower"),
        pytest.param(NOW_POLICY, make_policy(1000, currency="EUR"), make_policy(90, limit=40, rules=(LATE_FEE,)), None,
                     id="their own in another currency: lower"),
        pytest.param(LIMITED, OWN_LIMITED, make_policy(100, limit=40, rules=(LATE_FEE,), approval_limits=(100, 1000)),
                     None, id="approval limits within their own"),
        pytest.param(LIMITED, OWN_LIMITED, make_policy(100, limit=40, rules=(LATE_FEE,), approval_limits=(200, 1000)),
                     ["approval_limits.per_action"], id="approval per action above"),
        pytest.param(LIMITED, OWN_LIMITED, make_policy(100, limit=40, rules=(LATE_FEE,)),
                     ["approval_limits.per_action", "approval_limits.per_period"], id="no approval limits: above"),
        pytest.param(LIMITED, OWN_LIMITED,
                     make_policy(30, limit=None, rules=(), approval_limits=(50, 40), period=DAY_),
                     ["approval_limits.per_period"], id="a daily approval limit of 40 is 1,240 a month"),
        pytest.param(NOW_POLICY, OWN, make_policy(100, limit=40, rules=(LATE_FEE,), approval_limits=(10**6, None)),
                     None, id="approval limits where neither has any"),
        pytest.param(NOW_POLICY, OWN, make_policy(100, limit=40, rules=(LATE_FEE,), split=SplitDetection(12 * HOUR)),
                     ["split_detection.window"], id="a shorter split window"),
        pytest.param(NOW_POLICY, OWN, make_policy(100, limit=40, rules=(LATE_FEE,), split=SplitDetection(48 * HOUR)),
                     None, id="a longer split window"),
        pytest.param(make_policy(100, limit=40, rules=(LATE_FEE,), split=SplitDetection(same_customer=True)),
                     make_policy(1000, split=SplitDetection(same_customer=True)),
                     make_policy(100, limit=40, rules=(LATE_FEE,)), ["split_detection.same_customer"],
                     id="no same-customer detection"),
    ],
)
def test_check_policy_ceiling(now: Policy, own: Policy | None, new: Policy, exceeded: list[str] | None) -> None:
    b = Budget.open(employee_id="emp-1", team_id="team-a", display_name="Ada", policy=now, now=NOW)
    refusal = check_policy_ceiling(b, new, Ceiling("sup-1", own))
    assert (None if refusal is None else refusal.metadata["exceeded"].split(",")) == exceeded
    if refusal is not None:
        assert isinstance(refusal, PermissionDenied) and refusal.reason == Reason.POLICY_CEILING_EXCEEDED


def test_a_policy_beyond_the_ceiling_is_refused_exactly_and_changes_nothing() -> None:
    b = Budget.open(employee_id="emp-1", team_id="team-a", display_name="Ada", policy=NOW_POLICY, now=NOW)
    billion = make_policy(1_000_000_000, limit=None, kinds=ALL, rules=(LATE_FEE,))
    with pytest.raises(PermissionDenied) as info:
        b.update_policy(billion, now=NOW, ceiling=Ceiling("sup-1", OWN))
    refusal = info.value
    assert (refusal.message, refusal.reason, refusal.metadata) == (
        "sup-1 may not grant more than their own policy allows: period_allowance, per_action_limit, "
        "per_customer_limit, allowed_kinds.GIFT",
        "POLICY_CEILING_EXCEEDED",
        {"employee_id": "emp-1", "granted_by": "sup-1",
         "exceeded": "period_allowance,per_action_limit,per_customer_limit,allowed_kinds.GIFT"},
    )
    assert (b.version, b.policy) == (1, NOW_POLICY)
    b.update_policy(billion, now=NOW)  # an admin's change has no ceiling
    assert b.policy == billion
