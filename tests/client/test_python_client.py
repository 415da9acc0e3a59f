"""The Python client wrapper: exact money, request_id reuse on retry, errors carrying google.rpc details.

Driven against a small in-process gRPC fake of ActionService, so each failure mode can be staged exactly.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from builders import fake_service
from leeway.v1 import action_pb2, action_pb2_grpc

from leeway_client import (
    FailedPreconditionError,
    GiftDetails,
    LeewayClient,
    UnavailableError,
    from_money,
    to_money,
)


class FlakyActions(action_pb2_grpc.ActionServiceServicer):
    """Answers RecordAction with the staged statuses first, then succeeds."""

    def __init__(self) -> None:
        self.failures: list[status_pb2.Status] = []
        self.seen: list[action_pb2.RecordActionRequest] = []

    def RecordAction(self, request, context):  # noqa: N802
        self.seen.append(request)
        if self.failures:
            context.abort_with_status(rpc_status.to_status(self.failures.pop(0)))
        return action_pb2.RecordActionResponse(action=action_pb2.Action(action_id="act_1", amount=request.amount))


def status(code: int, reason: str, *extra: object) -> status_pb2.Status:
    details = []
    for message in (error_details_pb2.ErrorInfo(reason=reason, domain="leeway", metadata={"k": "v"}), *extra):
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    return status_pb2.Status(code=code, message=f"staged {reason}", details=details)


@pytest.fixture
def fake():
    servicer = FlakyActions()
    with fake_service(action_pb2_grpc.add_ActionServiceServicer_to_server, servicer) as target:
        with LeewayClient(target, retries=3, backoff=0.01, timeout=5) as client:
            yield servicer, client


def record(client: LeewayClient, **kwargs):
    return client.record_action(
        "ann", "guest-1", Decimal("12.34"), "USD", GiftDetails(gift_type="flowers"), reason="late", **kwargs
    )


def test_unavailable_is_retried_with_the_same_request_id(fake) -> None:
    servicer, client = fake
    servicer.failures = [status(code_pb2.UNAVAILABLE, "STORE_UNAVAILABLE")] * 2
    response = record(client)
    assert response.action.action_id == "act_1"
    assert len(servicer.seen) == 3
    assert len({r.request_id for r in servicer.seen}) == 1
    assert servicer.seen[0].request_id  # filled by the client


def test_explicit_request_id_is_sent(fake) -> None:
    servicer, client = fake
    record(client, request_id="crm-42")
    assert servicer.seen[-1].request_id == "crm-42"


def test_retries_give_up_with_unavailable_error(fake) -> None:
    servicer, client = fake
    servicer.failures = [status(code_pb2.UNAVAILABLE, "STORE_UNAVAILABLE")] * 10
    with pytest.raises(UnavailableError) as info:
        record(client)
    assert info.value.reason == "STORE_UNAVAILABLE"
    assert len(servicer.seen) == 4  # the call and 3 retries


def test_refusal_is_not_retried_and_carries_details(fake) -> None:
    servicer, client = fake
    servicer.failures = [
        status(
            code_pb2.FAILED_PRECONDITION,
            "BUDGET_EXHAUSTED",
            error_details_pb2.PreconditionFailure(
                violations=[error_details_pb2.PreconditionFailure.Violation(type="PERIOD_ALLOWANCE", subject="budgets/ann", description="d")]
            ),
        )
    ]
    with pytest.raises(FailedPreconditionError) as info:
        record(client)
    assert len(servicer.seen) == 1
    error = info.value
    assert (error.reason, error.domain, error.metadata) == ("BUDGET_EXHAUSTED", "leeway", {"k": "v"})
    assert error.precondition_violations == [("PERIOD_ALLOWANCE", "budgets/ann", "d")]
    assert not error.retryable
    assert "BUDGET_EXHAUSTED" in str(error)


def test_amount_is_sent_exactly(fake) -> None:
    servicer, client = fake
    record(client)
    sent = servicer.seen[-1].amount
    assert (sent.currency_code, sent.units, sent.nanos) == ("USD", 12, 340_000_000)


@pytest.mark.parametrize("amount", ["0.000000001", "-3.75", "123456789012.5", 7, "1e3"])
def test_money_round_trip(amount) -> None:
    money = to_money(amount, "EUR")
    assert from_money(money) == Decimal(amount)
    assert (money.units >= 0 and money.nanos >= 0) or (money.units <= 0 and money.nanos <= 0)


def test_money_refuses_float_and_inexact_values() -> None:
    with pytest.raises(TypeError):
        to_money(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        to_money("0.0000000001", "USD")
    with pytest.raises(ValueError):
        to_money("NaN", "USD")


# ---------------------------------------------------------------- boundaries helpers (issue 3)


class FlakyDecisions(action_pb2_grpc.ActionServiceServicer):
    """ApproveAction / DenyAction / ReverseAction: fail once with UNAVAILABLE, then answer."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def _answer(self, request, context, response):
        self.seen.append(request)
        if len(self.seen) % 2 == 1:
            context.abort_with_status(rpc_status.to_status(status(code_pb2.UNAVAILABLE, "STORE_UNAVAILABLE")))
        return response

    def ApproveAction(self, request, context):  # noqa: N802
        return self._answer(request, context, action_pb2.ApproveActionResponse(action=action_pb2.Action(action_id=request.action_id)))

    def DenyAction(self, request, context):  # noqa: N802
        return self._answer(request, context, action_pb2.DenyActionResponse(action=action_pb2.Action(action_id=request.action_id)))

    def ReverseAction(self, request, context):  # noqa: N802
        return self._answer(request, context, action_pb2.ReverseActionResponse(restored_to_current_period=True))


def test_decisions_and_reversals_retry_with_the_same_request_id() -> None:
    servicer = FlakyDecisions()
    with fake_service(action_pb2_grpc.add_ActionServiceServicer_to_server, servicer) as target:
        with LeewayClient(target, retries=2, backoff=0.01, timeout=5) as client:
            assert client.approve_action("act_x", "boss", note="fine").action.action_id == "act_x"
            assert client.deny_action("act_y", "boss").action.action_id == "act_y"
            assert client.reverse_action("act_z", reason="typo", actor_id="boss").restored_to_current_period
    assert len(servicer.seen) == 6
    for first, retry in zip(servicer.seen[::2], servicer.seen[1::2]):
        assert first.request_id and first.request_id == retry.request_id
    assert servicer.seen[0].approver_id == "boss" and servicer.seen[0].note == "fine"
    assert servicer.seen[4].reason == "typo" and servicer.seen[4].actor_id == "boss"


def test_make_policy_with_boundaries_and_make_cap() -> None:
    from datetime import timedelta

    from leeway.v1 import policy_pb2

    from leeway_client import BendableRule, make_cap, make_policy

    policy = make_policy(
        currency="USD",
        period_allowance=3000,
        per_action_limit=100,
        per_customer_limit=Decimal("2000.50"),
        bendable_rules=["WAIVE_FEE", BendableRule(rule_code="LATE", max_per_period=2, max_value=to_money(80, "USD"))],
        escalate_to=["boss"],
        approval_timeout=timedelta(hours=4),
    )
    assert from_money(policy.per_customer_limit) == Decimal("2000.50")
    assert [r.rule_code for r in policy.bendable_rules] == ["WAIVE_FEE", "LATE"]
    assert policy.bendable_rules[1].max_per_period == 2 and from_money(policy.bendable_rules[1].max_value) == 80
    assert policy.escalation.mode == policy_pb2.Escalation.MODE_APPROVAL
    assert list(policy.escalation.approver_ids) == ["boss"]
    assert policy.escalation.approval_timeout.seconds == 4 * 3600
    plain = make_policy(currency="USD", period_allowance=10)
    assert not plain.HasField("escalation") and not plain.HasField("per_customer_limit")
    assert not plain.HasField("split_detection") and not plain.HasField("approval_limits")
    bounded = make_policy(currency="USD", period_allowance=100, escalate_to=["boss"], max_held="150",
                          split_window=timedelta(hours=36), split_same_customer=True, approval_per_period=1000)
    assert from_money(bounded.escalation.max_held) == 150
    assert bounded.split_detection.window.seconds == 36 * 3600 and bounded.split_detection.same_customer
    assert from_money(bounded.approval_limits.per_period) == 1000
    assert not bounded.approval_limits.HasField("per_action")
    cap = make_cap("250.75", "EUR", "WEEK")
    assert from_money(cap.amount) == Decimal("250.75") and cap.period == policy_pb2.PERIOD_WEEK
    with pytest.raises(TypeError):
        make_cap(1.5, "EUR")  # floats are refused
