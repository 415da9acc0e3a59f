import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EraseCustomerRequest(_message.Message):
    __slots__ = ("request_id", "customer_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    customer_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Erasure(_message.Message):
    __slots__ = ("subject", "pseudonym", "erase_time")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    ERASE_TIME_FIELD_NUMBER: _ClassVar[int]
    subject: str
    pseudonym: str
    erase_time: _timestamp_pb2.Timestamp
    def __init__(self, subject: _Optional[str] = ..., pseudonym: _Optional[str] = ..., erase_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EraseCustomerResponse(_message.Message):
    __slots__ = ("erasure",)
    ERASURE_FIELD_NUMBER: _ClassVar[int]
    erasure: Erasure
    def __init__(self, erasure: _Optional[_Union[Erasure, _Mapping]] = ...) -> None: ...

class EraseEmployeeRequest(_message.Message):
    __slots__ = ("request_id", "employee_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    employee_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., employee_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EraseEmployeeResponse(_message.Message):
    __slots__ = ("erasure",)
    ERASURE_FIELD_NUMBER: _ClassVar[int]
    erasure: Erasure
    def __init__(self, erasure: _Optional[_Union[Erasure, _Mapping]] = ...) -> None: ...

class ExportCustomerDataRequest(_message.Message):
    __slots__ = ("customer_id", "page_size", "page_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    page_size: int
    page_token: str
    def __init__(self, customer_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ExportCustomerDataResponse(_message.Message):
    __slots__ = ("document", "next_page_token")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    document: str
    next_page_token: str
    def __init__(self, document: _Optional[str] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RedactLegacyDataRequest(_message.Message):
    __slots__ = ("request_id", "customer_id", "employee_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    customer_id: str
    employee_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., employee_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LegacyRedaction(_message.Message):
    __slots__ = ("subject", "pseudonym", "redact_time", "redacted_event_count")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    REDACT_TIME_FIELD_NUMBER: _ClassVar[int]
    REDACTED_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    pseudonym: str
    redact_time: _timestamp_pb2.Timestamp
    redacted_event_count: int
    def __init__(self, subject: _Optional[str] = ..., pseudonym: _Optional[str] = ..., redact_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., redacted_event_count: _Optional[int] = ...) -> None: ...

class RedactLegacyDataResponse(_message.Message):
    __slots__ = ("redaction",)
    REDACTION_FIELD_NUMBER: _ClassVar[int]
    redaction: LegacyRedaction
    def __init__(self, redaction: _Optional[_Union[LegacyRedaction, _Mapping]] = ...) -> None: ...
