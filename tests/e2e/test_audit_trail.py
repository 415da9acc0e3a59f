"""GetAuditTrail: who did what, for whom, why, under which policy version, who approved, what was reversed."""

from __future__ import annotations

from leeway_client import GiftDetails, InvalidArgumentError, NotFoundError, RefundDetails

from .helpers import expect_error, fields, policy


def test_employee_trail_tells_the_story(client, uid) -> None:
    ann, boss, guest = uid("ann"), uid("boss"), uid("guest")
    client.open_budget(ann, uid("desk"), policy("100", per_action_limit=20, escalate_to=[boss]))
    gift = client.record_action(ann, guest, "12.50", "EUR", GiftDetails(gift_type="flowers"), reason="late dinner").action
    big = client.record_action(ann, guest, "30", "EUR", RefundDetails(order_id="o-9"), reason="broken AC").action
    client.approve_action(big.action_id, boss, note="of course")
    client.reverse_action(gift.action_id, reason="sent twice", actor_id=boss)
    client.update_policy(ann, policy("200", per_action_limit=20, escalate_to=[boss]))
    client.close_budget(ann, "left the company")
    trail = list(client.iter_audit_trail(employee_id=ann, page_size=2))
    assert [e.event_type for e in trail] == [
        "Budget.Opened",
        "Budget.ActionRecorded",
        "Budget.ActionRecorded",
        "Budget.ActionApproved",
        "Budget.ActionReversed",
        "Budget.PolicyUpdated",
        "Budget.Closed",
    ]
    assert all(e.employee_id == ann for e in trail)
    opened, flowers, refund, approved, reversed_, updated, closed = trail
    assert "budget opened" in opened.summary and "100 EUR per month" in opened.summary
    assert flowers.summary.startswith(f"{ann} gave {guest} a gift (flowers) worth 12.5 EUR")
    assert 'because "late dinner"' in flowers.summary and flowers.policy_version == 1
    assert flowers.action_id == gift.action_id and flowers.customer_id == guest and flowers.reason == "late dinner"
    assert "waiting for approval" in refund.summary and "PER_ACTION_LIMIT_EXCEEDED" in refund.summary
    assert approved.actor == boss and approved.summary.startswith(f"{boss} approved") and approved.reason == "of course"
    assert reversed_.actor == boss and "sent twice" in reversed_.summary and "went back to the current period" in reversed_.summary
    assert updated.policy_version == 2 and "version 2" in updated.summary
    assert closed.reason == "left the company"
    assert all(e.time.seconds > 0 for e in trail)
    assert flowers.amount.currency_code == "EUR" and flowers.amount.units == 12


def test_customer_trail_spans_employees_in_time_order(client, uid) -> None:
    ann, bob, guest = uid("ann"), uid("bob"), uid("guest")
    for employee in (ann, bob):
        client.open_budget(employee, uid("desk"), policy("100"))
    first = client.record_action(ann, guest, "5", "EUR", GiftDetails(gift_type="tea"), reason="r1").action
    client.record_action(bob, guest, "7", "EUR", GiftDetails(gift_type="cake"), reason="r2")
    client.document_win(first.action_id, "came back", customer_quote="thanks")
    trail = list(client.iter_audit_trail(customer_id=guest, page_size=1))
    assert [(e.employee_id, e.event_type) for e in trail] == [
        (ann, "Budget.ActionRecorded"),
        (bob, "Budget.ActionRecorded"),
        (ann, "Budget.WinDocumented"),
    ]
    assert [e.time.ToDatetime() for e in trail] == sorted(e.time.ToDatetime() for e in trail)
    assert 'The customer said: "thanks"' in trail[2].summary


def test_bad_trail_requests(client, uid) -> None:
    both = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.get_audit_trail(employee_id="a", customer_id="b"))
    assert fields(both) == {"employee_id", "customer_id"}
    expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.get_audit_trail())
    expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.get_audit_trail(employee_id=uid("nobody")))
    assert list(client.iter_audit_trail(customer_id=uid("never-served"))) == []
