import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("position", "event_id", "event_type", "employee_id", "aggregate_id", "aggregate_version", "record_time", "payload", "hash", "prev_hash")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORD_TIME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    position: int
    event_id: str
    event_type: str
    employee_id: str
    aggregate_id: str
    aggregate_version: int
    record_time: _timestamp_pb2.Timestamp
    payload: _struct_pb2.Struct
    hash: str
    prev_hash: str
    def __init__(self, position: _Optional[int] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., employee_id: _Optional[str] = ..., aggregate_id: _Optional[str] = ..., aggregate_version: _Optional[int] = ..., record_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., hash: _Optional[str] = ..., prev_hash: _Optional[str] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("after_position", "follow", "event_types", "employee_id", "max_events_per_message")
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    after_position: int
    follow: bool
    event_types: _containers.RepeatedScalarFieldContainer[str]
    employee_id: str
    max_events_per_message: int
    def __init__(self, after_position: _Optional[int] = ..., follow: _Optional[bool] = ..., event_types: _Optional[_Iterable[str]] = ..., employee_id: _Optional[str] = ..., max_events_per_message: _Optional[int] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("event", "events")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    event: Event
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("position", "log_hash")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LOG_HASH_FIELD_NUMBER: _ClassVar[int]
    position: int
    log_hash: str
    def __init__(self, position: _Optional[int] = ..., log_hash: _Optional[str] = ...) -> None: ...

class VerifyIntegrityRequest(_message.Message):
    __slots__ = ("employee_id", "checkpoint", "full")
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    employee_id: str
    checkpoint: Checkpoint
    full: bool
    def __init__(self, employee_id: _Optional[str] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., full: _Optional[bool] = ...) -> None: ...

class Violation(_message.Message):
    __slots__ = ("position", "aggregate_id", "aggregate_version", "kind", "description")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    position: int
    aggregate_id: str
    aggregate_version: int
    kind: str
    description: str
    def __init__(self, position: _Optional[int] = ..., aggregate_id: _Optional[str] = ..., aggregate_version: _Optional[int] = ..., kind: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class VerifyIntegrityResponse(_message.Message):
    __slots__ = ("events_checked", "ok", "violations", "head", "verified_from")
    EVENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FROM_FIELD_NUMBER: _ClassVar[int]
    events_checked: int
    ok: bool
    violations: _containers.RepeatedCompositeFieldContainer[Violation]
    head: Checkpoint
    verified_from: Checkpoint
    def __init__(self, events_checked: _Optional[int] = ..., ok: _Optional[bool] = ..., violations: _Optional[_Iterable[_Union[Violation, _Mapping]]] = ..., head: _Optional[_Union[Checkpoint, _Mapping]] = ..., verified_from: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class GetAuditTrailRequest(_message.Message):
    __slots__ = ("employee_id", "customer_id", "page_size", "page_token")
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    employee_id: str
    customer_id: str
    page_size: int
    page_token: str
    def __init__(self, employee_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditTrailEntry(_message.Message):
    __slots__ = ("time", "actor", "employee_id", "customer_id", "action_id", "event_type", "policy_version", "amount", "reason", "summary")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    actor: str
    employee_id: str
    customer_id: str
    action_id: str
    event_type: str
    policy_version: int
    amount: _money_pb2.Money
    reason: str
    summary: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., employee_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., action_id: _Optional[str] = ..., event_type: _Optional[str] = ..., policy_version: _Optional[int] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., reason: _Optional[str] = ..., summary: _Optional[str] = ...) -> None: ...

class GetAuditTrailResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditTrailEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditTrailEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
