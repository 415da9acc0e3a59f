"""Protobuf <-> domain values: money, times, action kinds and periods. The bottom of the conversions
(``convert_policy`` builds on it, ``convert`` on both)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp
from google.type import money_pb2
from leeway.v1 import policy_pb2

from ..domain.errors import FieldViolation
from ..domain.money import Money
from ..domain.periods import PeriodKind
from ..domain.policy import ActionKind

NANOS = Decimal(10) ** 9
MAX_NANOS = 999_999_999
#: The largest Duration worth converting (far above any accepted approval timeout; avoids timedelta overflow).
MAX_DURATION_SECONDS = 10**9

KIND_FROM_PROTO = {
    policy_pb2.ACTION_KIND_REFUND: ActionKind.REFUND,
    policy_pb2.ACTION_KIND_CREDIT: ActionKind.CREDIT,
    policy_pb2.ACTION_KIND_RULE_BEND: ActionKind.RULE_BEND,
    policy_pb2.ACTION_KIND_GIFT: ActionKind.GIFT,
}
KIND_TO_PROTO = {v: k for k, v in KIND_FROM_PROTO.items()}
PERIOD_FROM_PROTO = {
    policy_pb2.PERIOD_DAY: PeriodKind.DAY,
    policy_pb2.PERIOD_WEEK: PeriodKind.WEEK,
    policy_pb2.PERIOD_MONTH: PeriodKind.MONTH,
    policy_pb2.PERIOD_QUARTER: PeriodKind.QUARTER,
    policy_pb2.PERIOD_YEAR: PeriodKind.YEAR,
}
PERIOD_TO_PROTO = {v: k for k, v in PERIOD_FROM_PROTO.items()}

# ---------------------------------------------------------------------------- money and time


def money_from_proto(value: money_pb2.Money, field: str) -> tuple[Money | None, list[FieldViolation]]:
    """google.type.Money -> Money, or the reasons it is malformed (sign rules and nanos range of money.proto)."""
    problems: list[FieldViolation] = []
    if not value.currency_code:
        problems.append(FieldViolation(f"{field}.currency_code", "is required"))
    if not -MAX_NANOS <= value.nanos <= MAX_NANOS:
        problems.append(FieldViolation(f"{field}.nanos", "must be between -999,999,999 and +999,999,999"))
    if (value.units > 0 and value.nanos < 0) or (value.units < 0 and value.nanos > 0):
        problems.append(FieldViolation(f"{field}.nanos", "must have the same sign as units"))
    if problems:
        return None, problems
    return Money(Decimal(value.units) + Decimal(value.nanos) / NANOS, value.currency_code), []


def money_to_proto(value: Money) -> money_pb2.Money:
    message = money_pb2.Money()
    money_into(message, value)
    return message


def money_into(message: money_pb2.Money, value: Money) -> None:
    """Writes ``value`` into ``message`` (a field of a message being built: no copy, and present afterwards)."""
    amount = value.amount
    units = int(amount)  # truncates toward zero, so nanos share the sign of units
    message.currency_code = value.currency
    message.units = units
    message.nanos = int((amount - units) * NANOS)


def time_from_proto(value: Timestamp, field: str) -> tuple[datetime | None, list[FieldViolation]]:
    try:
        if not 0 <= value.nanos <= MAX_NANOS:
            raise ValueError
        return value.ToDatetime(tzinfo=timezone.utc), []
    except (ValueError, OverflowError, OSError):
        return None, [FieldViolation(field, "is not a valid timestamp (years 0001-9999, nanos 0-999,999,999)")]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def time_to_proto(value: datetime) -> Timestamp:
    """As ``Timestamp.FromDatetime`` (a naive datetime is UTC), in a few integer operations: responses carry
    several timestamps and FromDatetime was a measurable share of RecordAction's cost."""
    message = Timestamp()
    time_into(message, value)
    return message


def time_into(message: Timestamp, value: datetime) -> None:
    """``time_to_proto`` written into ``message`` (a field of a message being built: no copy, and present
    afterwards, as a field set from a constructor argument is)."""
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)) - _EPOCH
    message.seconds = delta.days * 86_400 + delta.seconds
    message.nanos = delta.microseconds * 1000
