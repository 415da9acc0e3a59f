"""Wire conversions that are written by hand for speed must agree with protobuf's own."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from leeway.grpc_api.convert import time_from_proto, time_to_proto


def reference(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(1970, 1, 1, tzinfo=timezone.utc),
        datetime(2026, 11, 23, 22, 33, 27, 904287, tzinfo=timezone.utc),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
        datetime(1, 1, 1, tzinfo=timezone.utc),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
        datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 3, 29, 2, 30),  # naive: UTC, as FromDatetime takes it
    ],
)
def test_time_to_proto_matches_from_datetime(value: datetime) -> None:
    assert time_to_proto(value) == reference(value)


@given(
    st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]))
)
def test_time_to_proto_matches_from_datetime_everywhere(value: datetime) -> None:
    stamp = time_to_proto(value)
    assert stamp == reference(value)
    back, problems = time_from_proto(stamp, "t")
    assert not problems and back == value


# ---------------------------------------------------------------------------- the policy's issue-19 parts


def _wire_policy(**parts: object):  # type: ignore[no-untyped-def]
    from google.type import money_pb2
    from leeway.v1 import budget_pb2, policy_pb2

    message = policy_pb2.Policy(
        period_allowance=money_pb2.Money(currency_code="USD", units=100), period=policy_pb2.PERIOD_MONTH,
        allowed_kinds=[policy_pb2.ACTION_KIND_REFUND], **parts,
    )
    return budget_pb2.OpenBudgetRequest(employee_id="emp-1", team_id="t", policy=message)


def test_max_held_split_detection_and_approval_limits_round_trip() -> None:
    from decimal import Decimal

    from google.protobuf.duration_pb2 import Duration
    from google.type import money_pb2
    from leeway.v1 import policy_pb2

    from leeway.domain.money import Money
    from leeway.domain.policy import ApprovalLimits, SplitDetection
    from leeway.grpc_api.convert import policy_from_proto, policy_to_proto

    request = _wire_policy(
        escalation=policy_pb2.Escalation(mode=policy_pb2.Escalation.MODE_APPROVAL, approver_ids=["boss"],
                                         max_held=money_pb2.Money(currency_code="USD", units=250, nanos=500_000_000)),
        split_detection=policy_pb2.SplitDetection(window=Duration(seconds=7200), same_customer=True),
        approval_limits=policy_pb2.ApprovalLimits(per_period=money_pb2.Money(currency_code="USD", units=1000)),
    )
    policy, problems = policy_from_proto(request)
    assert problems == () and policy is not None
    assert policy.max_held == Money(Decimal("250.5"), "USD")
    assert policy.split_detection == SplitDetection(timedelta(hours=2), same_customer=True)
    assert policy.approval_limits == ApprovalLimits(None, Money(Decimal(1000), "USD"))
    wire = policy_to_proto(policy)
    assert (wire.escalation.max_held, wire.split_detection, wire.approval_limits) == (
        request.policy.escalation.max_held, request.policy.split_detection, request.policy.approval_limits,
    )
    plain, _ = policy_from_proto(_wire_policy())
    assert plain is not None
    wire = policy_to_proto(plain)
    assert not wire.HasField("split_detection") and not wire.HasField("approval_limits")
    assert plain.split_detection == SplitDetection() and plain.max_held == Money(Decimal(100), "USD")


def _bad_parts() -> list[tuple[dict[str, object], str]]:
    from google.protobuf.duration_pb2 import Duration
    from google.type import money_pb2
    from leeway.v1 import policy_pb2

    usd_money, eur = money_pb2.Money(currency_code="USD", units=1, nanos=-1), money_pb2.Money(currency_code="EUR", units=1)
    return [
        ({"split_detection": policy_pb2.SplitDetection(window=Duration(seconds=30))}, "policy.split_detection.window"),
        ({"split_detection": policy_pb2.SplitDetection(window=Duration(seconds=-1))}, "policy.split_detection.window"),
        ({"approval_limits": policy_pb2.ApprovalLimits(per_action=usd_money)}, "policy.approval_limits.per_action.nanos"),
        ({"escalation": policy_pb2.Escalation(mode=2, approver_ids=["b"], max_held=eur)},
         "policy.escalation.max_held.currency_code"),
    ]


@pytest.mark.parametrize(("parts", "field"), _bad_parts())
def test_bad_issue_19_parts_are_field_violations(parts: dict[str, object], field: str) -> None:
    from leeway.grpc_api.convert import policy_from_proto

    policy, problems = policy_from_proto(_wire_policy(**parts))
    assert policy is None and field in [p.field for p in problems], problems
