"""Customer id normalisation end to end (issue 19): a log written the old way (raw ids, by an application with the
form ``exact``, as earlier versions wrote), then a real `leeway serve` with the default form: its start-up scan
notes the old spellings, and every cap and read by customer finds them."""

from __future__ import annotations

from decimal import Decimal

from builders import action_cmd, customer_cap, make_policy, money, open_cmd
from leeway.application import LeewayApplication
from leeway.application.conventions import Conventions
from leeway.domain.customers import CustomerIdForm
from leeway.domain.policy import ActionKind
from leeway.settings import Settings
from leeway_client import FailedPreconditionError, GiftDetails, LeewayClient, RefundDetails

from .helpers import amount, expect_error

GUEST = ("GUEST-42", "guest-42", "Guest-42")


def test_guest_42_is_one_guest_whatever_the_case(make_server, database_url) -> None:
    env = Settings(database_url=database_url).eventsourcing_env()
    old = LeewayApplication(env=env, conventions=Conventions(customer_ids=CustomerIdForm.EXACT))
    try:
        old.execute(customer_cap(money(2000, "EUR")))
        old.execute(open_cmd("ann", "desk", make_policy(10000, limit=None, currency="EUR", kinds=list(ActionKind))))
        for spelling, value in zip(GUEST, (1000, 900, 50)):
            old.execute(action_cmd("ann", money(value, "EUR"), customer=spelling))
        old.execute(action_cmd("ann", money(1, "EUR"), customer="GUEST-7", kind=ActionKind.GIFT))
    finally:
        old.close()

    server = make_server(database_url)
    server.start()
    with LeewayClient(server.target, timeout=10.0) as leeway:
        usage = leeway.get_customer_usage("GUEST-42")
        assert usage.customer_id == "guest-42" and usage.action_count == 3
        assert (amount(usage.spent), amount(usage.remaining)) == (1950, 50)
        # Before: $500 more went to "another" guest past the cap. Now the cap counts every spelling.
        error = expect_error(
            FailedPreconditionError, "CUSTOMER_CAP_EXCEEDED",
            lambda: leeway.record_action("ann", " Guest-42 ", "500", "EUR", RefundDetails(order_id="o"), reason="r"),
        )
        assert error.metadata["customer_id"] == "guest-42" and Decimal(error.metadata["remaining"]) == 50
        action = leeway.record_action("ann", "GUEST-42", "50", "EUR", RefundDetails(order_id="o"), reason="r").action
        assert action.customer_id == "guest-42"
        listed = [a.customer_id for a in leeway.iter_actions(customer_id="guest-42")]
        assert listed == ["GUEST-42", "Guest-42", "guest-42", "guest-42"]
        trail = list(leeway.iter_audit_trail(customer_id="GUEST-42"))
        assert sorted(e.customer_id for e in trail) == sorted(["GUEST-42", "guest-42", "Guest-42", "guest-42"])
        # Flowers for GUEST-7 before and for guest-7 now went to one customer.
        leeway.record_action("ann", "guest-7", "1", "EUR", GiftDetails(gift_type="flowers"), reason="r")
        assert leeway.get_kpis(employee_id="ann").flower_stats.customers_gifted == 1
    server.stop_cleanly()
    logs = server.logs().lower()
    assert "spellings_scanned" in logs and "guest-42" not in logs  # personal data: never logged
