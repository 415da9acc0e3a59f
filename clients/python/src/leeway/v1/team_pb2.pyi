import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import money_pb2 as _money_pb2
from leeway.v1 import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Cap(_message.Message):
    __slots__ = ("amount", "period")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    amount: _money_pb2.Money
    period: _policy_pb2.Period
    def __init__(self, amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., period: _Optional[_Union[_policy_pb2.Period, str]] = ...) -> None: ...

class CurrencyUsage(_message.Message):
    __slots__ = ("currency_code", "cap", "period_start", "period_end", "spent", "held", "remaining")
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    currency_code: str
    cap: Cap
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    spent: _money_pb2.Money
    held: _money_pb2.Money
    remaining: _money_pb2.Money
    def __init__(self, currency_code: _Optional[str] = ..., cap: _Optional[_Union[Cap, _Mapping]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spent: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., held: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., remaining: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class Team(_message.Message):
    __slots__ = ("team_id", "cap", "member_count", "period_start", "period_end", "spent", "held", "remaining", "version", "usage")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    cap: Cap
    member_count: int
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    spent: _money_pb2.Money
    held: _money_pb2.Money
    remaining: _money_pb2.Money
    version: int
    usage: _containers.RepeatedCompositeFieldContainer[CurrencyUsage]
    def __init__(self, team_id: _Optional[str] = ..., cap: _Optional[_Union[Cap, _Mapping]] = ..., member_count: _Optional[int] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spent: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., held: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., remaining: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., version: _Optional[int] = ..., usage: _Optional[_Iterable[_Union[CurrencyUsage, _Mapping]]] = ...) -> None: ...

class SetTeamCapRequest(_message.Message):
    __slots__ = ("request_id", "team_id", "cap")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    team_id: str
    cap: Cap
    def __init__(self, request_id: _Optional[str] = ..., team_id: _Optional[str] = ..., cap: _Optional[_Union[Cap, _Mapping]] = ...) -> None: ...

class SetTeamCapResponse(_message.Message):
    __slots__ = ("team",)
    TEAM_FIELD_NUMBER: _ClassVar[int]
    team: Team
    def __init__(self, team: _Optional[_Union[Team, _Mapping]] = ...) -> None: ...

class GetTeamRequest(_message.Message):
    __slots__ = ("team_id",)
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    def __init__(self, team_id: _Optional[str] = ...) -> None: ...

class GetTeamResponse(_message.Message):
    __slots__ = ("team",)
    TEAM_FIELD_NUMBER: _ClassVar[int]
    team: Team
    def __init__(self, team: _Optional[_Union[Team, _Mapping]] = ...) -> None: ...

class SetCustomerCapRequest(_message.Message):
    __slots__ = ("request_id", "cap", "currency_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    cap: Cap
    currency_code: str
    def __init__(self, request_id: _Optional[str] = ..., cap: _Optional[_Union[Cap, _Mapping]] = ..., currency_code: _Optional[str] = ...) -> None: ...

class SetCustomerCapResponse(_message.Message):
    __slots__ = ("cap", "caps")
    CAP_FIELD_NUMBER: _ClassVar[int]
    CAPS_FIELD_NUMBER: _ClassVar[int]
    cap: Cap
    caps: _containers.RepeatedCompositeFieldContainer[Cap]
    def __init__(self, cap: _Optional[_Union[Cap, _Mapping]] = ..., caps: _Optional[_Iterable[_Union[Cap, _Mapping]]] = ...) -> None: ...

class GetCustomerUsageRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class GetCustomerUsageResponse(_message.Message):
    __slots__ = ("customer_id", "cap", "period_start", "period_end", "spent", "held", "remaining", "action_count", "usage")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    ACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    cap: Cap
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    spent: _money_pb2.Money
    held: _money_pb2.Money
    remaining: _money_pb2.Money
    action_count: int
    usage: _containers.RepeatedCompositeFieldContainer[CurrencyUsage]
    def __init__(self, customer_id: _Optional[str] = ..., cap: _Optional[_Union[Cap, _Mapping]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spent: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., held: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., remaining: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., action_count: _Optional[int] = ..., usage: _Optional[_Iterable[_Union[CurrencyUsage, _Mapping]]] = ...) -> None: ...
