"""Customer id normalisation (issue 19), through LeewayApplication on SQLite and PostgreSQL.

Reproduced before: ``GUEST-42`` and ``guest-42`` were two customers, so $500 more went to "another" guest past the
$2,000 per-guest cap. Now ids are keys (trimmed and case-folded by default) before any cap or index sees them,
and a log written the old way (raw ids; an application with the form ``exact`` writes exactly what earlier
versions wrote) is still found: the start-up scan notes the old spellings on the key's ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from builders import action_cmd, approve, customer_cap, make_policy, open_cmd, usd
from leeway.application import LeewayApplication
from leeway.application.conventions import Conventions
from leeway.domain.customers import CustomerIdForm
from leeway.domain.errors import PreconditionFailed
from leeway.domain.ledgers import CustomerLedger, OrgLimits
from leeway.domain.views import PENDING_APPROVAL
from leeway.settings import Settings


@pytest.fixture
def make_app(database_url: str, clock) -> Any:
    apps: list[LeewayApplication] = []

    def make(form: CustomerIdForm) -> LeewayApplication:
        env = Settings(database_url=database_url).eventsourcing_env()
        app = LeewayApplication(env=env, clock=clock, conventions=Conventions(customer_ids=form))
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        app.close()


def old_log(make_app: Callable[[CustomerIdForm], LeewayApplication]) -> dict[str, str]:
    """What an earlier version stored: raw ids. ann gave GUEST-42 $1,500 (her per-customer limit is $1,600), bob
    gave guest-42 $400, and a $60 refund for Guest-42 waits for approval."""
    old = make_app(CustomerIdForm.EXACT)
    old.execute(customer_cap(usd(2000)))
    old.execute(open_cmd("ann", "desk", make_policy(5000, limit=1500, per_customer=1600)))
    old.execute(open_cmd("bob", "desk", make_policy(5000, limit=50, approvers=("sup-1",))))
    old.execute(action_cmd("ann", 1500, customer="GUEST-42"))
    old.execute(action_cmd("bob", 40, customer="guest-42"))
    old.execute(action_cmd("bob", 300, customer="guest-42"))  # over bob's limit: held ...
    old.execute(approve(old.list_actions("bob", "", None, 0, "").items[-1].action_id, "sup-1"))  # ... and approved
    old.execute(action_cmd("bob", 30, customer="guest-42"))
    old.execute(action_cmd("bob", 30, customer="guest-42"))
    hold = old.execute(action_cmd("bob", 60, customer="Guest-42"))[0]
    assert hold.state == PENDING_APPROVAL
    assert {old.get_customer_usage(c).usage.spent.amount for c in ("GUEST-42", "guest-42", "Guest-42")} == {1500, 400, 0}
    old.close()
    return {"hold": hold.action_id}


def test_an_old_log_is_still_found_and_caps_hold(make_app) -> None:
    made = old_log(make_app)
    app = make_app(CustomerIdForm.CASEFOLD)
    head = app.recorder.max_notification_id()
    assert app.scan_customer_spellings() == 1  # guest-42 gets GUEST-42 and Guest-42
    assert app.get_or_none(CustomerLedger.create_id("guest-42")).spellings == ["GUEST-42", "Guest-42"]
    assert app.get_or_none(OrgLimits.the_id()).scanned == {"casefold": head}
    written = app.recorder.max_notification_id()
    assert app.scan_customer_spellings() == 0 and app.recorder.max_notification_id() == written  # once is enough

    usage = app.get_customer_usage(" GUEST-42")
    assert usage.customer_id == "guest-42" and usage.action_count == 6
    assert (usage.usage.spent, usage.usage.held, usage.usage.remaining) == (usd(1900), usd(60), usd(40))

    # The organisation's cap counts every spelling: $40 fit, $40.01 do not (before: $500 went through).
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(action_cmd("bob", "40.01", customer="GUEST-42"))
    assert refused.value.reason == "CUSTOMER_CAP_EXCEEDED" and refused.value.metadata["customer_id"] == "guest-42"
    # ann's own per-customer limit counts what she gave GUEST-42: $100 left of $1,600.
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(action_cmd("ann", "100.01", customer="guest-42"))
    assert refused.value.reason == "PER_CUSTOMER_LIMIT_EXCEEDED"
    action, _ = app.execute(action_cmd("ann", 40, customer="  Guest-42 "))
    assert action.customer_id == "guest-42"  # stored as its key
    assert app.get_customer_usage("guest-42").usage.remaining == usd(0)

    # Every read by customer finds the old actions: those under old spellings first, then the key's.
    listed = app.list_actions("", "GUEST-42", None, 0, "")
    assert [a.customer_id for a in listed.items] == ["GUEST-42", "Guest-42", *["guest-42"] * 5]
    pages, token = [], ""
    while True:
        page = app.list_actions("", "guest-42", None, 2, token)
        pages += page.items
        token = page.next_page_token
        if not token:
            break
    assert pages == listed.items
    waiting = app.list_actions("", "guest-42", None, 0, "", state=PENDING_APPROVAL)
    assert [a.action_id for a in waiting.items] == [made["hold"]]

    # The old hold is decided on the ledger that holds it; the customer's figures stay whole.
    app.execute(approve(made["hold"], "sup-1"))
    usage = app.get_customer_usage("guest-42")
    assert (usage.usage.spent, usage.usage.held, usage.action_count) == (usd(2000), usd(0), 7)


def test_under_another_form_old_spellings_are_other_customers(make_app) -> None:
    old_log(make_app)
    app = make_app(CustomerIdForm.TRIM)  # for CRMs whose ids are case-sensitive
    assert app.scan_customer_spellings() == 0
    assert app.get_customer_usage("GUEST-42").usage.spent == usd(1500)
    action, _ = app.execute(action_cmd("bob", 40, customer=" GUEST-42 "))
    assert action.customer_id == "GUEST-42"
    assert app.get_customer_usage("guest-42").usage.spent == usd(400)


def test_new_ids_are_keys_without_a_scan(app_factory) -> None:
    app = app_factory()
    app.execute(open_cmd("ann", "desk", make_policy(5000, limit=None)))
    app.execute(customer_cap(usd(100)))
    app.execute(action_cmd("ann", 60, customer="GUEST-7"))
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(action_cmd("ann", 41, customer="guest-7 "))
    assert refused.value.reason == "CUSTOMER_CAP_EXCEEDED"
    assert app.get_or_none(CustomerLedger.create_id("GUEST-7")) is None
    assert [a.customer_id for a in app.list_actions("", "Guest-7", None, 0, "").items] == ["guest-7"]
