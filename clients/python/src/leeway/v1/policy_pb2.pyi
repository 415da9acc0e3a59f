import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.type import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_KIND_UNSPECIFIED: _ClassVar[ActionKind]
    ACTION_KIND_REFUND: _ClassVar[ActionKind]
    ACTION_KIND_CREDIT: _ClassVar[ActionKind]
    ACTION_KIND_RULE_BEND: _ClassVar[ActionKind]
    ACTION_KIND_GIFT: _ClassVar[ActionKind]

class Period(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERIOD_UNSPECIFIED: _ClassVar[Period]
    PERIOD_DAY: _ClassVar[Period]
    PERIOD_WEEK: _ClassVar[Period]
    PERIOD_MONTH: _ClassVar[Period]
    PERIOD_QUARTER: _ClassVar[Period]
    PERIOD_YEAR: _ClassVar[Period]
ACTION_KIND_UNSPECIFIED: ActionKind
ACTION_KIND_REFUND: ActionKind
ACTION_KIND_CREDIT: ActionKind
ACTION_KIND_RULE_BEND: ActionKind
ACTION_KIND_GIFT: ActionKind
PERIOD_UNSPECIFIED: Period
PERIOD_DAY: Period
PERIOD_WEEK: Period
PERIOD_MONTH: Period
PERIOD_QUARTER: Period
PERIOD_YEAR: Period

class Policy(_message.Message):
    __slots__ = ("period_allowance", "period", "per_action_limit", "allowed_kinds", "per_customer_limit", "bendable_rules", "escalation", "split_detection", "approval_limits")
    PERIOD_ALLOWANCE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PER_ACTION_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_KINDS_FIELD_NUMBER: _ClassVar[int]
    PER_CUSTOMER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BENDABLE_RULES_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_DETECTION_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_LIMITS_FIELD_NUMBER: _ClassVar[int]
    period_allowance: _money_pb2.Money
    period: Period
    per_action_limit: _money_pb2.Money
    allowed_kinds: _containers.RepeatedScalarFieldContainer[ActionKind]
    per_customer_limit: _money_pb2.Money
    bendable_rules: _containers.RepeatedCompositeFieldContainer[BendableRule]
    escalation: Escalation
    split_detection: SplitDetection
    approval_limits: ApprovalLimits
    def __init__(self, period_allowance: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., period: _Optional[_Union[Period, str]] = ..., per_action_limit: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., allowed_kinds: _Optional[_Iterable[_Union[ActionKind, str]]] = ..., per_customer_limit: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., bendable_rules: _Optional[_Iterable[_Union[BendableRule, _Mapping]]] = ..., escalation: _Optional[_Union[Escalation, _Mapping]] = ..., split_detection: _Optional[_Union[SplitDetection, _Mapping]] = ..., approval_limits: _Optional[_Union[ApprovalLimits, _Mapping]] = ...) -> None: ...

class SplitDetection(_message.Message):
    __slots__ = ("window", "same_customer")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SAME_CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    window: _duration_pb2.Duration
    same_customer: bool
    def __init__(self, window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., same_customer: _Optional[bool] = ...) -> None: ...

class ApprovalLimits(_message.Message):
    __slots__ = ("per_action", "per_period")
    PER_ACTION_FIELD_NUMBER: _ClassVar[int]
    PER_PERIOD_FIELD_NUMBER: _ClassVar[int]
    per_action: _money_pb2.Money
    per_period: _money_pb2.Money
    def __init__(self, per_action: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., per_period: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class BendableRule(_message.Message):
    __slots__ = ("rule_code", "description", "max_per_period", "max_value")
    RULE_CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_PERIOD_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    rule_code: str
    description: str
    max_per_period: int
    max_value: _money_pb2.Money
    def __init__(self, rule_code: _Optional[str] = ..., description: _Optional[str] = ..., max_per_period: _Optional[int] = ..., max_value: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("mode", "approval_timeout", "approver_ids", "approver_role", "max_held")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[Escalation.Mode]
        MODE_REFUSE: _ClassVar[Escalation.Mode]
        MODE_APPROVAL: _ClassVar[Escalation.Mode]
    MODE_UNSPECIFIED: Escalation.Mode
    MODE_REFUSE: Escalation.Mode
    MODE_APPROVAL: Escalation.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    APPROVER_IDS_FIELD_NUMBER: _ClassVar[int]
    APPROVER_ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_FIELD_NUMBER: _ClassVar[int]
    mode: Escalation.Mode
    approval_timeout: _duration_pb2.Duration
    approver_ids: _containers.RepeatedScalarFieldContainer[str]
    approver_role: str
    max_held: _money_pb2.Money
    def __init__(self, mode: _Optional[_Union[Escalation.Mode, str]] = ..., approval_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., approver_ids: _Optional[_Iterable[str]] = ..., approver_role: _Optional[str] = ..., max_held: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...
