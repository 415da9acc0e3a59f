"""The organisation-wide per-customer cap per currency, and GetTeam / GetCustomerUsage showing spend without a cap,
through LeewayApplication on SQLite and PostgreSQL (issue 19)."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

import pytest
from builders import action_cmd, customer_cap, eur, make_policy, money, open_cmd, team_cap, usd
from leeway.application.commands import SetCustomerCap
from leeway.domain.errors import InvalidArgument, PreconditionFailed
from leeway.domain.periods import PeriodKind
from leeway.domain.tally import Cap

MARCH = (datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 4, 1, tzinfo=timezone.utc))


@pytest.fixture
def app(app_factory):
    app = app_factory()
    app.execute(open_cmd("ann", "desk"))
    app.execute(open_cmd("eva", "desk-eu", make_policy(1000, limit=None, currency="EUR")))
    return app


def remove_cap(currency: str = "") -> SetCustomerCap:
    return SetCustomerCap(request_id=f"rm-{uuid4()}", cap=None, currency_code=currency)


def test_a_cap_per_currency(app) -> None:
    """An EUR budget is no longer refused CURRENCY_MISMATCH for every customer because the cap is in USD: each
    currency has its own cap, or none."""
    app.execute(customer_cap(usd(45)))
    app.execute(action_cmd("eva", eur(500), customer="guest-1"))  # no EUR cap: no organisation-wide limit in EUR
    result = app.execute(customer_cap(eur(30), PeriodKind.WEEK))
    assert result.cap == Cap(eur(30), PeriodKind.WEEK)
    assert result.in_force == (Cap(eur(30), PeriodKind.WEEK), Cap(usd(45), PeriodKind.MONTH))  # the USD cap stays
    app.execute(action_cmd("ann", 40, customer="guest-2"))
    app.execute(action_cmd("eva", eur(30), customer="guest-2"))  # exactly the EUR cap, beside 40 USD
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(action_cmd("eva", eur("0.01"), customer="guest-2"))
    assert refused.value.reason == "CUSTOMER_CAP_EXCEEDED" and refused.value.metadata["cap"] == "30"
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(action_cmd("ann", "5.01", customer="guest-2"))
    assert refused.value.reason == "CUSTOMER_CAP_EXCEEDED" and refused.value.metadata["cap"] == "45"
    app.execute(action_cmd("ann", 5, customer="guest-2"))

    usage = app.get_customer_usage("guest-2")
    assert [(u.spent, u.remaining, u.cap.period) for u in usage.by_currency] == [
        (eur(30), eur(0), PeriodKind.WEEK), (usd(45), usd(0), PeriodKind.MONTH)
    ]
    assert usage.usage == usage.by_currency[0] and usage.action_count == 3

    assert app.execute(remove_cap("EUR")).in_force == (Cap(usd(45), PeriodKind.MONTH),)
    app.execute(action_cmd("eva", eur(1), customer="guest-2"))  # the EUR cap is gone, the USD one stays
    with pytest.raises(PreconditionFailed):
        app.execute(action_cmd("ann", "0.01", customer="guest-2"))
    assert app.execute(remove_cap()).in_force == ()
    assert app.get_customer_caps() == {}


def test_a_replayed_cap_change_answers_what_it_answered(app) -> None:
    app.execute(customer_cap(usd(45)))
    command = customer_cap(eur(30))
    first = app.execute(command)
    app.execute(customer_cap(money(10, "CHF")))
    assert app.execute(command) == first  # not the three caps in force now
    assert [c.amount.currency for c in first.in_force] == ["EUR", "USD"]


@pytest.mark.parametrize(
    ("cap", "currency", "problem"),
    [
        (None, "usd", "currency_code"),
        (None, "XYZ", "currency_code"),
        (Cap(usd(1), PeriodKind.MONTH), "EUR", "currency_code"),
    ],
)
def test_currency_code_is_checked(app, cap: Cap | None, currency: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        app.execute(SetCustomerCap(request_id="", cap=cap, currency_code=currency))
    assert [v.field for v in refused.value.violations] == [problem]


def test_team_and_customer_spend_show_without_a_cap(app, clock) -> None:
    app.execute(action_cmd("ann", 40, customer="guest-3"))
    app.execute(action_cmd("eva", eur(7), customer="guest-3"))
    team = app.get_team("desk")
    assert team.usage.cap is None and team.usage.remaining is None
    assert (team.usage.spent, team.usage.held) == (usd(40), usd(0))
    assert (team.usage.period_start, team.usage.period_end) == MARCH
    customer = app.get_customer_usage("guest-3")
    assert [(u.spent, u.cap) for u in customer.by_currency] == [(eur(7), None), (usd(40), None)]
    assert customer.usage.spent == eur(7)  # the first by currency code
    # With a team cap, its currency comes first and the figures are the cap's.
    app.execute(team_cap("desk", usd(100), PeriodKind.DAY))
    team = app.get_team("desk")
    assert (team.usage.cap, team.usage.remaining) == (Cap(usd(100), PeriodKind.DAY), usd(60))
    # A customer nobody acted for has nothing to show.
    nobody = app.get_customer_usage("guest-none")
    assert nobody.by_currency == () and nobody.usage.spent is None
