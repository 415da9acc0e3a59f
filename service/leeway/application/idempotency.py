"""Idempotent commands (AIP-155): one RequestRecord per request, saved atomically with the change it produced,
and the fingerprint that tells a retry from a reused request_id.

**A request_id is scoped to its caller.** A request is (principal, method, request_id): its record's id is
``request_key(actor, method, request_id)``, so two callers (or one caller on two methods) using the same
request_id make two independent requests; neither is refused, answered or told anything because of the other.
The key is deterministic, so a retry finds its record after a restart or on another replica, and two replicas
deciding the same request at once still save one record (the loser's save fails on the record's unique key and
its batch is decided again, finding the record). The expiry task's ``expire:<action_id>`` requests all have the
same (empty) actor and method, so every replica's expiry of one action is one request.

Scoped ids are UUIDv8 (RFC 9562: SHA-256 of the key in Leeway's namespace, version 8); **legacy** records, saved
before request ids were scoped, have the uuid5 id ``leeway_id("request:<request_id>")`` (version 5), one namespace
for every caller. The version tells them apart without reading the record (``LegacyRecords``: the writer's index of
legacy records, built by scanning the log once and kept up to date). A legacy record keeps answering its retries:
``legacy_answers`` says whether it is the caller's. One whose ``actor`` is empty was saved before callers were
recorded (before authentication existed, when every caller was what an unauthenticated caller is now) or by the
expiry task: it answers only an unauthenticated caller (``anonymous``) or the expiry task (empty actor), never
an authenticated principal, which neither sees it nor is blocked by it."""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol
from uuid import UUID, uuid5

import structlog
from eventsourcing.domain import Aggregate, event

from ..adapters.id_scan import scan_ids
from ..domain.errors import AlreadyExists
from ..domain.ids import LEEWAY_NAMESPACE
from ..domain.money import Money
from ..domain.policy import ActionKind, Policy
from ..domain.reasons import Reason
from ..domain.tally import Cap
from ..domain.topics import keep_legacy_topics

log = structlog.get_logger("leeway.idempotency")

#: The principal of a caller without credentials (``leeway.auth.ANONYMOUS``: authentication off), which every
#: caller was before authentication existed.
UNAUTHENTICATED_ACTOR = "anonymous"
#: UUID versions of the two kinds of request-record ids.
SCOPED_ID_VERSION = 8
LEGACY_ID_VERSION = 5
# The version and variant fields of a 128-bit UUID, and what a UUIDv8 has in them (RFC 9562: version 8, variant 10).
_VERSION_AND_VARIANT = (0xF000 << 64) | (0xC000 << 48)
_V8 = (SCOPED_ID_VERSION << 76) | (0x8000 << 48)


@lru_cache(maxsize=65_536)
def request_key(actor: str, method: str, request_id: str) -> UUID:
    """The id of the request record of ``request_id`` sent by ``actor`` (the authenticated principal's id; empty
    for the expiry task) to ``method``: a UUIDv8 from SHA-256 of the three in Leeway's namespace (each length-
    prefixed but the last, so no two triples give one name)."""
    name = f"request\n{len(actor)}:{actor}\n{len(method)}:{method}\n{request_id}"
    value = int.from_bytes(hashlib.sha256(LEEWAY_NAMESPACE.bytes + name.encode()).digest()[:16], "big")
    return UUID(int=(value & ~_VERSION_AND_VARIANT) | _V8)


def legacy_request_id(request_id: str) -> UUID:
    """The id a request record had before request ids were scoped (one namespace for every caller): ``leeway_id``'s
    uuid5, not remembered by it (request ids are unique: they would only push the ids that recur out of its memory)."""
    return uuid5(LEEWAY_NAMESPACE, f"request:{request_id}")


class Fingerprinted(Protocol):
    method: str

    def payload(self) -> dict[str, Any]: ...


class RequestRecord(Aggregate):
    """What a request did: who sent it (``actor``), to which method, a fingerprint of the request, and a reference
    to the result (the command result's ``to_record()``). Its id is ``request_key(actor, method, request_id)``;
    records saved before request ids were scoped have ``legacy_request_id(request_id)`` (see the module)."""

    @staticmethod
    def create_id(request_id: str, method: str, actor: str = "") -> UUID:
        return request_key(actor, method, request_id)

    @property
    def key(self) -> UUID:
        """The scoped key of this record's request (also for a legacy record: the key it would have now)."""
        return request_key(self.actor, self.method, self.request_id)

    @event("Recorded")
    def __init__(
        self, request_id: str, method: str, fingerprint: str, result: dict[str, Any], at: datetime, actor: str = ""
    ) -> None:
        self.request_id = request_id
        self.actor = actor
        self.method = method
        self.fingerprint = fingerprint
        self.result = result
        self.at = at


# Stored since the first release under the module that held it then.
keep_legacy_topics("leeway.domain.indexes", RequestRecord)


def _json_default(value: Any) -> Any:
    if isinstance(value, (Policy, Money, Cap)):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ActionKind):
        return value.value
    return str(value)


#: ``json.dumps(..., sort_keys=True, default=_json_default)``'s encoder, made once (dumps makes one per call).
_FINGERPRINT_ENCODER = json.JSONEncoder(sort_keys=True, default=_json_default)


def fingerprint(command: Fingerprinted) -> str:
    """A digest of what the request asked for, to tell a retry from a reused request_id."""
    body = _FINGERPRINT_ENCODER.encode([command.method, command.payload()])
    return hashlib.sha256(body.encode()).hexdigest()


def reused(request_id: str, method: str) -> AlreadyExists:
    """ALREADY_EXISTS for a request_id that was used before for a different request."""
    return AlreadyExists(
        f"request_id {request_id!r} was already used for a different request ({method})",
        reason=Reason.REQUEST_ID_REUSED,
        metadata={"request_id": request_id, "original_method": method},
    )


def check_replay(record: RequestRecord, digest: str) -> None:
    """A stored request answered again: refused if the same caller's request_id asked for something else (only
    ever the caller's own record: another caller's is never looked at, so the method named is the caller's own)."""
    if record.fingerprint != digest:
        raise reused(record.request_id, record.method)


def legacy_answers(record: RequestRecord, actor: str, method: str) -> bool:
    """Whether a legacy record (saved before request ids were scoped) is this caller's request on this method,
    and so answers it (its stored answer, or REQUEST_ID_REUSED if the content differs). Another caller's legacy
    record, or one for another method, is ignored: the request is new. A record without an actor (saved before
    callers were recorded, or by the expiry task) is the unauthenticated caller's or the expiry task's, never an
    authenticated principal's."""
    if record.method != method:
        return False
    if record.actor:
        return record.actor == actor
    return actor in ("", UNAUTHENTICATED_ACTOR)


class LegacyRecords:
    """The writer's index of legacy request records (ids only, 8 bytes each: the first 64 bits of the id), so that
    it looks for a request's legacy record only when one may exist. ``covered``: every legacy record stored at a
    notification id up to it is in the index (it is built by scanning the log from 0, and brought up to date by
    scanning what was stored since, or moved on past the writer's own commits, which hold no legacy record)."""

    #: Ids added since the last merge into the sorted array (merged when there are more).
    MERGE_AT = 4_096

    def __init__(self) -> None:
        self.covered = 0
        #: The highest log head the writer's saves have shown it (SQLite: above ``covered``, others stored events).
        self.seen = 0
        self.count = 0
        self._sorted = array("Q")
        self._fresh: set[int] = set()

    @staticmethod
    def _prefix(record_id: UUID) -> int:
        return record_id.int >> 64

    def add(self, record_ids: Iterable[UUID]) -> None:
        fresh = {self._prefix(record_id) for record_id in record_ids}
        fresh = {prefix for prefix in fresh if not self._has(prefix)}
        self.count += len(fresh)
        self._fresh |= fresh
        if len(self._fresh) > self.MERGE_AT:
            merged = array("Q", self._sorted)
            merged.extend(self._fresh)
            self._sorted = array("Q", sorted(merged))
            self._fresh.clear()

    def __contains__(self, record_id: UUID) -> bool:
        return self._has(self._prefix(record_id))

    def none_of(self, request_ids: list[str], log_head: int | None, recorder: Any) -> bool:
        """On the writer's fast path (PostgreSQL): True if no legacy record of these request_ids exists as of the
        writer's log head (its save checks that the head has not moved). The index covers the head once it has
        indexed what others stored since it was last sure (one query, after another writer's commits, and the
        first time: a scan of the whole log); a request whose legacy record may exist is read ahead."""
        if not request_ids:
            return True
        if self.covered < (log_head or 0):
            self.catch_up(recorder)
        if self.covered != log_head:
            return False  # the log moved on: the fast path's save would fail anyway
        return not self.count or not any(legacy_request_id(r) in self for r in request_ids)

    def catch_up(self, recorder: Any) -> None:
        """Adds the legacy request records stored since ``covered`` to the index (the first time: every one)."""
        started = time.monotonic()
        first, before = self.covered == 0, self.count
        self.covered = scan_ids(
            recorder,
            after=self.covered,
            topic=RequestRecord.Recorded.TOPIC,  # type: ignore[attr-defined]
            uuid_version=LEGACY_ID_VERSION,
            found=self.add,
        )
        if self.count > before or (first and self.covered):
            log.info(
                "idempotency.legacy_records_indexed", found=self.count - before, indexed=self.count,
                log_head=self.covered, seconds=round(time.monotonic() - started, 3),
            )

    def _has(self, prefix: int) -> bool:
        if prefix in self._fresh:
            return True
        at = bisect_left(self._sorted, prefix)
        return at < len(self._sorted) and self._sorted[at] == prefix
