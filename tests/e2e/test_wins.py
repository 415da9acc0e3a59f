"""DocumentWin: a success story on an action ("document all your wins"), through the Python client."""

from __future__ import annotations

from leeway.v1 import action_pb2
from leeway_client import FailedPreconditionError, GiftDetails, InvalidArgumentError, LeewayClient, RefundDetails

from .helpers import expect_error, fields, policy


def test_document_a_win_on_a_recorded_action(client: LeewayClient, uid) -> None:
    ann = uid("ann")
    client.open_budget(ann, uid("desk"), policy("100"))
    action = client.record_action(ann, uid("guest"), "20", "EUR", GiftDetails(gift_type="flowers"), reason="late").action
    assert not action.HasField("win")
    won = client.document_win(
        action.action_id, "The guest booked again for their anniversary", customer_quote="You made our day", outcome="rebooked"
    )
    assert won.win.story == "The guest booked again for their anniversary"
    assert won.win.customer_quote == "You made our day" and won.win.outcome == "rebooked"
    assert won.win.documented_by == "anonymous" and won.win.document_time.seconds > 0
    assert won.state == action_pb2.Action.STATE_RECORDED
    assert client.get_action(action.action_id).win == won.win
    # The budget's figures are untouched: a win is a story, not money.
    assert client.get_budget(ann).period_action_count == 1


def test_one_win_per_action_and_retries_are_idempotent(client: LeewayClient, uid) -> None:
    ann = uid("ann")
    client.open_budget(ann, uid("desk"), policy("100"))
    action = client.record_action(ann, uid("guest"), "5", "EUR", GiftDetails(gift_type="tea"), reason="r").action
    first = client.document_win(action.action_id, "happy", request_id=f"win-{ann}")
    assert client.document_win(action.action_id, "happy", request_id=f"win-{ann}") == first
    error = expect_error(FailedPreconditionError, "WIN_ALREADY_DOCUMENTED", lambda: client.document_win(action.action_id, "again"))
    assert error.precondition_violations[0][0] == "ACTION_WIN"


def test_only_recorded_or_approved_actions_can_be_wins(client: LeewayClient, uid) -> None:
    ann = uid("ann")
    client.open_budget(ann, uid("desk"), policy("100", per_action_limit=10, escalate_to=["sam"]))
    pending = client.record_action(ann, uid("guest"), "30", "EUR", RefundDetails(order_id="o"), reason="r").action
    error = expect_error(FailedPreconditionError, "ACTION_NOT_WINNABLE", lambda: client.document_win(pending.action_id, "x"))
    assert error.metadata["state"] == "PENDING_APPROVAL"
    client.approve_action(pending.action_id, "sam")
    assert client.document_win(pending.action_id, "worth it").win.story == "worth it"
    denied = client.record_action(ann, uid("guest"), "30", "EUR", RefundDetails(order_id="o"), reason="r").action
    client.deny_action(denied.action_id, "sam")
    expect_error(FailedPreconditionError, "ACTION_NOT_WINNABLE", lambda: client.document_win(denied.action_id, "x"))
    reversed_ = client.record_action(ann, uid("guest"), "5", "EUR", GiftDetails(gift_type="tea"), reason="r").action
    client.reverse_action(reversed_.action_id, reason="typo", actor_id="sam")
    expect_error(FailedPreconditionError, "ACTION_NOT_WINNABLE", lambda: client.document_win(reversed_.action_id, "x"))


def test_bad_win_requests(client: LeewayClient, uid) -> None:
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.document_win("not-an-id", "", outcome="x" * 201))
    assert fields(error) == {"action_id", "story", "outcome"}
