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
