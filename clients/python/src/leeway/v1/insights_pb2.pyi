import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import money_pb2 as _money_pb2
from leeway.v1 import action_pb2 as _action_pb2
from leeway.v1 import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KpiGranularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KPI_GRANULARITY_UNSPECIFIED: _ClassVar[KpiGranularity]
    KPI_GRANULARITY_DAY: _ClassVar[KpiGranularity]
    KPI_GRANULARITY_WEEK: _ClassVar[KpiGranularity]
    KPI_GRANULARITY_MONTH: _ClassVar[KpiGranularity]
KPI_GRANULARITY_UNSPECIFIED: KpiGranularity
KPI_GRANULARITY_DAY: KpiGranularity
KPI_GRANULARITY_WEEK: KpiGranularity
KPI_GRANULARITY_MONTH: KpiGranularity

class GetKpisRequest(_message.Message):
    __slots__ = ("team_id", "employee_id", "start_time", "end_time")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    employee_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, team_id: _Optional[str] = ..., employee_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class KindStats(_message.Message):
    __slots__ = ("kind", "action_count", "effective_count", "spend", "average_amount")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    kind: _policy_pb2.ActionKind
    action_count: int
    effective_count: int
    spend: _money_pb2.Money
    average_amount: _money_pb2.Money
    def __init__(self, kind: _Optional[_Union[_policy_pb2.ActionKind, str]] = ..., action_count: _Optional[int] = ..., effective_count: _Optional[int] = ..., spend: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., average_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class FlowerStats(_message.Message):
    __slots__ = ("gifts_sent", "gift_spend", "by_gift_type", "customers_gifted")
    GIFTS_SENT_FIELD_NUMBER: _ClassVar[int]
    GIFT_SPEND_FIELD_NUMBER: _ClassVar[int]
    BY_GIFT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_GIFTED_FIELD_NUMBER: _ClassVar[int]
    gifts_sent: int
    gift_spend: _containers.RepeatedCompositeFieldContainer[_money_pb2.Money]
    by_gift_type: _containers.RepeatedCompositeFieldContainer[GiftTypeCount]
    customers_gifted: int
    def __init__(self, gifts_sent: _Optional[int] = ..., gift_spend: _Optional[_Iterable[_Union[_money_pb2.Money, _Mapping]]] = ..., by_gift_type: _Optional[_Iterable[_Union[GiftTypeCount, _Mapping]]] = ..., customers_gifted: _Optional[int] = ...) -> None: ...

class GiftTypeCount(_message.Message):
    __slots__ = ("gift_type", "count")
    GIFT_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    gift_type: str
    count: int
    def __init__(self, gift_type: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class EmployeeWins(_message.Message):
    __slots__ = ("employee_id", "team_id", "wins")
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    WINS_FIELD_NUMBER: _ClassVar[int]
    employee_id: str
    team_id: str
    wins: int
    def __init__(self, employee_id: _Optional[str] = ..., team_id: _Optional[str] = ..., wins: _Optional[int] = ...) -> None: ...

class GetKpisResponse(_message.Message):
    __slots__ = ("by_kind", "action_count", "escalated_count", "approval_rate", "reversal_rate", "flower_stats", "wins_documented", "top_employees_by_wins", "pending_count", "position")
    BY_KIND_FIELD_NUMBER: _ClassVar[int]
    ACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_COUNT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_RATE_FIELD_NUMBER: _ClassVar[int]
    REVERSAL_RATE_FIELD_NUMBER: _ClassVar[int]
    FLOWER_STATS_FIELD_NUMBER: _ClassVar[int]
    WINS_DOCUMENTED_FIELD_NUMBER: _ClassVar[int]
    TOP_EMPLOYEES_BY_WINS_FIELD_NUMBER: _ClassVar[int]
    PENDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    by_kind: _containers.RepeatedCompositeFieldContainer[KindStats]
    action_count: int
    escalated_count: int
    approval_rate: float
    reversal_rate: float
    flower_stats: FlowerStats
    wins_documented: int
    top_employees_by_wins: _containers.RepeatedCompositeFieldContainer[EmployeeWins]
    pending_count: int
    position: int
    def __init__(self, by_kind: _Optional[_Iterable[_Union[KindStats, _Mapping]]] = ..., action_count: _Optional[int] = ..., escalated_count: _Optional[int] = ..., approval_rate: _Optional[float] = ..., reversal_rate: _Optional[float] = ..., flower_stats: _Optional[_Union[FlowerStats, _Mapping]] = ..., wins_documented: _Optional[int] = ..., top_employees_by_wins: _Optional[_Iterable[_Union[EmployeeWins, _Mapping]]] = ..., pending_count: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class ListWinsRequest(_message.Message):
    __slots__ = ("team_id", "employee_id", "page_size", "page_token")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    employee_id: str
    page_size: int
    page_token: str
    def __init__(self, team_id: _Optional[str] = ..., employee_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class WinEntry(_message.Message):
    __slots__ = ("action_id", "employee_id", "team_id", "customer_id", "kind", "amount", "reason", "win")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WIN_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    employee_id: str
    team_id: str
    customer_id: str
    kind: _policy_pb2.ActionKind
    amount: _money_pb2.Money
    reason: str
    win: _action_pb2.Win
    def __init__(self, action_id: _Optional[str] = ..., employee_id: _Optional[str] = ..., team_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., kind: _Optional[_Union[_policy_pb2.ActionKind, str]] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., reason: _Optional[str] = ..., win: _Optional[_Union[_action_pb2.Win, _Mapping]] = ...) -> None: ...

class ListWinsResponse(_message.Message):
    __slots__ = ("wins", "next_page_token")
    WINS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    wins: _containers.RepeatedCompositeFieldContainer[WinEntry]
    next_page_token: str
    def __init__(self, wins: _Optional[_Iterable[_Union[WinEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetKpiSeriesRequest(_message.Message):
    __slots__ = ("team_id", "employee_id", "start_time", "end_time", "granularity")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    employee_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    granularity: KpiGranularity
    def __init__(self, team_id: _Optional[str] = ..., employee_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[KpiGranularity, str]] = ...) -> None: ...

class KpiPoint(_message.Message):
    __slots__ = ("start_time", "end_time", "kpis")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    KPIS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    kpis: GetKpisResponse
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kpis: _Optional[_Union[GetKpisResponse, _Mapping]] = ...) -> None: ...

class GetKpiSeriesResponse(_message.Message):
    __slots__ = ("points", "position")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[KpiPoint]
    position: int
    def __init__(self, points: _Optional[_Iterable[_Union[KpiPoint, _Mapping]]] = ..., position: _Optional[int] = ...) -> None: ...
