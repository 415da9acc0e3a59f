"""The log's events as ``audit_pb2.Event`` messages, fast: what StreamEvents spends its time on.

An event's payload is a ``google.protobuf.Struct``. Filling one through the Struct's Python API
(``Struct.update``) costs a message operation per value, and the payload was first made JSON-safe
(``application.audit.plain``) in a second walk. ``struct_bytes`` does both in one walk and writes the Struct's
wire format directly (the upb parser then reads it in C): the same message as ``plain`` + ``Struct.update``
(tests/unit/test_event_wire.py compares them on every kind of value and on whole logs).

The Struct wire format (google/protobuf/struct.proto): ``Struct { map<string, Value> fields = 1; }``, a map entry
being ``{ string key = 1; Value value = 2; }``; ``Value`` is a oneof of ``null_value = 1`` (enum),
``number_value = 2`` (double), ``string_value = 3``, ``bool_value = 4``, ``struct_value = 5`` and
``list_value = 6`` (``ListValue { repeated Value values = 1; }``).
"""

from __future__ import annotations

import struct
from datetime import date, datetime, timezone
from decimal import Decimal
from collections.abc import Callable
from typing import Any
from uuid import UUID

import grpc

from leeway.v1 import audit_pb2

__all__ = [
    "add_passing_encoded", "event_bytes", "event_message", "response_bytes", "stream_items", "stream_response",
    "struct_bytes",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_DOUBLE = struct.Struct("<d").pack
_NULL = b"\x08\x00"  # null_value = NULL_VALUE (0)
_TRUE, _FALSE = b"\x20\x01", b"\x20\x00"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: The varint of each length below 128 (most of them).
_SMALL = tuple(bytes((n,)) for n in range(128))


def _length(n: int) -> bytes:
    return _SMALL[n] if n < 128 else _varint(n)


def _text(value: str) -> bytes:
    """A ``string_value``."""
    data = value.encode()
    return b"\x1a" + _length(len(data)) + data


def _value(value: Any) -> bytes:
    """The wire form of one ``Value``: what ``Struct.update`` stores for ``plain(value)``."""
    kind = type(value)
    if kind is str:
        data = value.encode()
        return b"\x1a" + _length(len(data)) + data
    if value is None:
        return _NULL
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int or kind is float:
        return b"\x11" + _DOUBLE(value)
    if kind is dict:
        data = struct_bytes(value)
        return b"\x2a" + _length(len(data)) + data
    if kind is Decimal:
        return _text(f"{value:f}")
    return _other(value)


def _list(values: Any) -> bytes:
    items = []
    for item in values:
        data = _value(item)
        items.append(b"\x0a" + _length(len(data)) + data)
    data = b"".join(items)
    return b"\x32" + _length(len(data)) + data


def _other(value: Any) -> bytes:
    """The rarer kinds, in ``plain``'s order of checks (subclasses: enums, value objects...)."""
    if isinstance(value, dict):
        data = struct_bytes(value)
        return b"\x2a" + _length(len(data)) + data
    if isinstance(value, (list, tuple)):
        return _list(value)
    if isinstance(value, Decimal):
        return _text(f"{value:f}")
    if isinstance(value, (datetime, date)):
        return _text(value.isoformat())
    if isinstance(value, UUID):
        return _text(str(value))
    if hasattr(value, "to_dict"):
        return _value(value.to_dict())
    if isinstance(value, str):
        return _text(str.__str__(value))  # a str subclass (a str enum): its string, as Struct.update stores it
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, (int, float)):
        return b"\x11" + _DOUBLE(float(value))
    return _text(str(value))


#: The start of a map entry for each key seen (its field tag, length and text, and the value's tag): payloads
#: repeat a few keys.
_KEYS: dict[str, bytes] = {}
#: Whole map entries of the values that repeat most (flags, numbers, nulls, empty texts and the texts of a few
#: fields that name kinds, not people), by key, type and value; cleared when full. (The type is part of the key:
#: True, 1 and 1.0 are equal in Python.) Customer ids, reasons and other personal text are never kept here.
_ENTRIES: dict[tuple[Any, ...], bytes] = {}
_MAX_ENTRIES = 1 << 16
_SIMPLE = (bool, int, type(None))
_CODES = frozenset({"currency", "kind", "state", "gift_type", "period", "mode", "outcome", "originator_topic",
                    "rule_code", "approver_role"})


def _key(key: Any) -> bytes:
    """The start of a map entry: the key's field tag, length and text, and the tag of the value that follows."""
    start = _KEYS.get(key) if type(key) is str else None
    if start is None:
        text = str(key).encode()
        start = b"\x0a" + _length(len(text)) + text + b"\x12"
        if type(key) is str and len(_KEYS) < 4096:
            _KEYS[key] = start
    return start


def _entry(key: Any, value: Any) -> bytes:
    return _entry_of(key, _value(value))


def _entry_of(key: Any, data: bytes) -> bytes:
    """The map entry of ``key`` with a ``Value`` already in wire form."""
    n = len(data)
    entry = _key(key) + (_SMALL[n] if n < 128 else _varint(n)) + data
    n = len(entry)
    return b"\x0a" + (_SMALL[n] if n < 128 else _varint(n)) + entry


def struct_bytes(mapping: dict[Any, Any]) -> bytes:
    """The wire form of the Struct holding ``plain(mapping)``. (The common kinds of value are written inline:
    this runs for every field of every event StreamEvents sends.)"""
    out: list[bytes] = []
    append = out.append
    entries = _ENTRIES
    heads = _HEADS
    for key, value in mapping.items():
        kind = type(value)
        if kind is str:
            if not value or (key in _CODES and len(value) <= 40):
                cached = entries.get((key, kind, value))
                append(_cache(key, kind, value) if cached is None else cached)
                continue
            data = value.encode()
        elif kind in _SIMPLE:
            cached = entries.get((key, kind, value))
            append(_cache(key, kind, value) if cached is None else cached)
            continue
        elif kind is datetime:
            data = value.isoformat().encode()
        elif kind is Decimal:
            data = f"{value:f}".encode()
        elif kind is list and not value:
            cached = entries.get((key, tuple, ()))
            append(_cache_empty_list(key) if cached is None else cached)
            continue
        else:
            append(_entry(key, value))
            continue
        # A string_value: the entry's head (its tag and length, the key, the value's tags and lengths), then the text.
        head = heads.get((key, len(data))) if type(key) is str else None
        append(_head(key, len(data)) if head is None else head)
        append(data)
    return b"".join(out)


#: The head of a map entry whose value is a string_value of n bytes, by (key, n): everything before the text.
_HEADS: dict[tuple[str, int], bytes] = {}


def _head(key: Any, n: int) -> bytes:
    start = _key(key)  # the key's field tag, length and text, and the value's tag
    value = b"\x1a" + _length(n)  # string_value, n bytes
    value_length = len(value) + n
    entry_length = len(start) + len(_length(value_length)) + value_length
    head = b"\x0a" + _length(entry_length) + start + _length(value_length) + value
    if type(key) is str:
        if len(_HEADS) >= _MAX_ENTRIES:
            _HEADS.clear()
        _HEADS[(key, n)] = head
    return head


def _cache_empty_list(key: Any) -> bytes:
    entry = _entry(key, [])
    if len(_ENTRIES) >= _MAX_ENTRIES:
        _ENTRIES.clear()
    _ENTRIES[(key, tuple, ())] = entry
    return entry


def _cache(key: Any, kind: type, value: Any) -> bytes:
    entry = _entry(key, value)
    if len(_ENTRIES) >= _MAX_ENTRIES:
        _ENTRIES.clear()
    _ENTRIES[(key, kind, value)] = entry
    return entry


def _int64(value: int) -> bytes:
    return _varint(value & 0xFFFFFFFFFFFFFFFF) if value < 0 else _varint(value)


def _field(tag: bytes, text: str) -> bytes:
    if not text:
        return b""
    data = text.encode()
    return tag + _length(len(data)) + data


def _timestamp(value: datetime) -> bytes:
    """A ``google.protobuf.Timestamp`` (as ``convert.time_to_proto``: a naive datetime is UTC)."""
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)) - _EPOCH
    seconds, nanos = delta.days * 86_400 + delta.seconds, delta.microseconds * 1000
    if seconds > 0 and nanos:  # the usual case
        return b"\x08" + _varint(seconds) + b"\x10" + _varint(nanos)
    return (b"\x08" + _int64(seconds) if seconds else b"") + (b"\x10" + _varint(nanos) if nanos else b"")


#: Whole fields of texts that repeat from event to event (aggregate ids, event types, employee ids), by tag and text.
_FIELDS: dict[tuple[bytes, str], bytes] = {}


def _known_field(tag: bytes, text: str) -> bytes:
    field = _FIELDS.get((tag, text))
    if field is None:
        if len(_FIELDS) >= _MAX_ENTRIES:
            _FIELDS.clear()
        field = _FIELDS[(tag, text)] = _field(tag, text)
    return field


def event_bytes(event: Any) -> bytes:
    """The wire form of the ``audit_pb2.Event`` of a ``LogEvent`` (application/audit_log.py)."""
    payload = struct_bytes(event.data)
    aggregate, version = event.aggregate_id, event.version
    parts = [
        b"\x08" + _int64(event.position) if event.position else b"",
        _field(b"\x12", f"{aggregate}/{version}"),
        _known_field(b"\x1a", event.event_type),
        _known_field(b"\x22", event.employee_id),
        _known_field(b"\x2a", aggregate),
        b"\x30" + _int64(version) if version else b"",
    ]
    if event.record_time is not None:
        stamp = _timestamp(event.record_time)
        parts.append(b"\x3a" + _length(len(stamp)) + stamp)
    parts.append(b"\x42" + _length(len(payload)) + payload)
    parts.append(_field(b"\x4a", event.hash))
    parts.append(_field(b"\x52", event.prev_hash))
    return b"".join(parts)


def response_bytes(events: Any, batched: bool) -> bytes:
    """The wire form of a ``StreamEventsResponse``: one event in ``event``, or ``events`` (``batched``)."""
    out = []
    tag = b"\x12" if batched else b"\x0a"
    for event in events:
        data = event_bytes(event)
        out.append(tag + _length(len(data)) + data)
    return b"".join(out)


def event_message(event: Any) -> audit_pb2.Event:
    return audit_pb2.Event.FromString(event_bytes(event))


def stream_response(events: Any, batched: bool) -> audit_pb2.StreamEventsResponse:
    """The ``StreamEventsResponse`` carrying ``events`` (exactly one unless ``batched``)."""
    return audit_pb2.StreamEventsResponse.FromString(response_bytes(events, batched))


def stream_items(events: Any, batch: int) -> list[tuple[int, bytes | None]]:
    """StreamEvents' responses for a run of ``LogEvent``s, each in wire form (a serialised
    ``StreamEventsResponse``: the gRPC front sends it as it is, ``interceptors.pass_encoded``; the HTTP front parses
    it), as (position of the last event in it, response), and markers (filtered-out stretches) as (position, None).
    ``batch`` 1: one event per response, in ``event``; more: up to ``batch`` events per response, in ``events``.
    Each event is converted as it is taken from ``events`` (which may decode it only then: ``AuditLog.log_chunk``)."""
    items: list[tuple[int, bytes | None]] = []
    run: list[bytes] = []  # events not yet in a response, each as a field of one
    last = 0
    for event in events:
        if event.is_marker:
            if run:
                items.append((last, b"".join(run)))
                run = []
            items.append((event.position, None))
            continue
        data = event_bytes(event)
        if batch == 1:
            items.append((event.position, b"\x0a" + _length(len(data)) + data))
        else:
            run.append(b"\x12" + _length(len(data)) + data)
            last = event.position
            if len(run) >= batch:
                items.append((last, b"".join(run)))
                run = []
    if run:
        items.append((last, b"".join(run)))
    return items


def pass_encoded(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A stream's response serializer that sends a response already in wire form (``bytes``: ``stream_items``) as
    it is, and serializes any other."""
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        return message if type(message) is bytes else serializer(message)

    return serialize


class _Handlers:
    """Stands in for the server while a generated ``add_*Servicer_to_server`` names its method handlers."""

    name = ""
    handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self.name, self.handlers = name, handlers


def add_passing_encoded(add: Callable[[Any, Any], None], servicer: Any, server: Any) -> None:
    """``add(servicer, server)`` (a generated ``add_*Servicer_to_server``) with the responses of its streaming
    methods sent as they are when the servicer yields them in wire form (``pass_encoded``): no message is built
    from bytes only to be serialized again."""
    named = _Handlers()
    add(servicer, named)
    handlers = {
        method: grpc.unary_stream_rpc_method_handler(
            handler.unary_stream, request_deserializer=handler.request_deserializer,
            response_serializer=pass_encoded(handler.response_serializer),
        )
        if handler.response_streaming and not handler.request_streaming
        else handler
        for method, handler in named.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(named.name, handlers),))
    server.add_registered_method_handlers(named.name, handlers)
