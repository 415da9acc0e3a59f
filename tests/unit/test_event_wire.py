"""grpc_api/event_wire.py writes the Struct of an event's payload by hand: it must be exactly the message that
``plain`` + ``Struct.update`` made (what StreamEvents sent before), for every kind of value a payload holds."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from leeway.application.audit import plain
from leeway.application.audit_log import LogEvent
from leeway.grpc_api import convert
from leeway.grpc_api.event_wire import event_message, stream_response, struct_bytes
from leeway.v1 import audit_pb2


class Kind(str, enum.Enum):
    GIFT = "GIFT"


class Level(enum.IntEnum):
    HIGH = 3


class Plain(enum.Enum):
    ONE = "one"


@dataclass
class Valued:
    amount: Decimal
    currency: str

    def to_dict(self) -> dict[str, Any]:
        return {"amount": self.amount, "currency": self.currency}


def reference(mapping: dict[str, Any]) -> struct_pb2.Struct:
    """How StreamEvents built a payload before event_wire."""
    message = struct_pb2.Struct()
    message.update(plain(mapping))
    return message


def by_hand(mapping: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.MergeFromString(struct_bytes(mapping))
    return message


AWARE = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc)
EVERY_KIND = {
    "text": "Café ☕ — 日本の顧客",
    "empty": "",
    "long": "x" * 5000,
    "none": None,
    "yes": True,
    "no": False,
    "zero": 0,
    "int": 12345678901234,
    "negative": -7,
    "float": 2.5,
    "decimal": Decimal("12.50"),
    "decimal_exponent": Decimal("1E+3"),
    "decimal_tiny": Decimal("0.000000001"),
    "datetime": AWARE,
    "naive": datetime(2026, 1, 1),
    "date": date(2026, 2, 28),
    "uuid": UUID("12345678-1234-5678-1234-567812345678"),
    "str_enum": Kind.GIFT,
    "int_enum": Level.HIGH,
    "enum": Plain.ONE,
    "value_object": Valued(Decimal("3.10"), "EUR"),
    "nested": {"a": {"b": [1, "two", None, {"c": Decimal("1.5")}]}, "": "empty key"},
    "list": [Kind.GIFT, AWARE, (1, 2), []],
    "tuple": ("a", "b"),
    "empty_dict": {},
    "timedelta": timedelta(days=1),
    7: "an int key",
}


def test_every_kind_of_value_is_what_struct_update_made() -> None:
    assert by_hand(EVERY_KIND) == reference(EVERY_KIND)
    assert by_hand({}) == reference({})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False, places=4) | st.datetimes(timezones=st.just(timezone.utc)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=8))
def test_any_payload_is_what_struct_update_made(mapping: dict[str, Any]) -> None:
    assert by_hand(mapping) == reference(mapping)


@pytest.mark.parametrize(
    "record_time", [AWARE, None, datetime(1960, 5, 6, 7, 8, 9, 5), datetime(1970, 1, 1, tzinfo=timezone.utc)]
)
def test_an_event_message_carries_every_field(record_time: datetime | None) -> None:
    event = LogEvent(
        position=42, aggregate_id="a-1", version=3, event_type="Budget.ActionRecorded", employee_id="ann",
        record_time=record_time, data={"amount": Decimal("1.25"), "kind": Kind.GIFT}, hash="h" * 64,
        prev_hash="p" * 64,
    )
    expected = audit_pb2.Event(
        position=42, event_id="a-1/3", event_type="Budget.ActionRecorded", employee_id="ann", aggregate_id="a-1",
        aggregate_version=3, payload=reference(event.data), hash="h" * 64, prev_hash="p" * 64,
    )
    if record_time is not None:
        expected.record_time.CopyFrom(convert.time_to_proto(record_time))
    assert event_message(event) == expected
    assert event_message(event).HasField("payload") and event_message(event).HasField("record_time") == (
        record_time is not None
    )
    assert event.payload == {"amount": "1.25", "kind": Kind.GIFT}
    assert stream_response([event], batched=False) == audit_pb2.StreamEventsResponse(event=expected)
    assert stream_response([event, event], batched=True) == audit_pb2.StreamEventsResponse(events=[expected] * 2)


def test_an_empty_event_and_payload() -> None:
    event = LogEvent(0, "", 0, "", "", None, {}, "", "")
    assert event_message(event) == audit_pb2.Event(event_id="/0", payload=struct_pb2.Struct())
    assert event_message(event).HasField("payload")


def test_repeated_values_come_from_the_cache_unchanged() -> None:
    mapping = {"flag": True, "one": 1, "float_one": 1.0, "text": "EUR", "none": None}
    for _ in range(3):
        assert by_hand(mapping) == reference(mapping)
        assert by_hand({"flag": 1, "one": True}) == reference({"flag": 1, "one": True})
