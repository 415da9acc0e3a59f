"""Tamper evidence for the event log: verification of the SHA-256 hash chain per aggregate (computed as events
are saved by ``adapters/hash_chain.py``), from the stored rows or from an export.

Every stored event's JSON state gets two extra keys, ``__prev__`` (the hash of the previous event of the same
aggregate; 64 zeros for version 1) and ``__hash__`` (this event's hash). The hash is

    SHA-256( prev_hash "\\n" aggregate_id "\\n" version "\\n" topic "\\n" canonical(state) )

where ``canonical(state)`` is the event's JSON state without the two keys, re-serialised with sorted keys,
no whitespace and UTF-8 (``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``). So
the chain can be checked from the stored rows, or from an export, with nothing but a JSON parser and SHA-256.

Snapshots are not part of the log and are stored without a chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

from ..adapters.hash_chain import GENESIS, HASH, PREV, event_hash, parse_state

__all__ = ["GENESIS", "Record", "Verification", "Violation", "event_hash", "export_line", "read_export", "verify"]

# ---------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Violation:
    position: int
    aggregate_id: str
    version: int
    kind: str
    description: str


@dataclass(frozen=True)
class Record:
    """One stored event as verification sees it (from the database or an export)."""

    position: int
    aggregate_id: str
    version: int
    topic: str
    state: dict[str, Any]


@dataclass
class Verification:
    events_checked: int = 0
    violations: list[Violation] | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


def verify(records: Iterable[Record], *, partial: bool = False) -> Verification:
    """Checks every record's hash and its link to the previous record of the same aggregate.

    ``partial``: the records may start after an aggregate's first event (an export from a position): the first
    record seen of such an aggregate is trusted as the start of its chain. Reports the first broken link of each
    aggregate.
    """
    last: dict[str, tuple[int, str]] = {}
    broken: set[str] = set()
    result = Verification(0, [])
    assert result.violations is not None
    for record in records:
        result.events_checked += 1
        if record.aggregate_id in broken:
            continue

        def fail(kind: str, description: str) -> None:
            assert result.violations is not None
            result.violations.append(Violation(record.position, record.aggregate_id, record.version, kind, description))
            broken.add(record.aggregate_id)

        stored_hash, stored_prev = record.state.get(HASH), record.state.get(PREV)
        if not isinstance(stored_hash, str) or not isinstance(stored_prev, str):
            fail("MISSING_HASH", "the event has no hash chain fields")
            continue
        expected = event_hash(stored_prev, record.aggregate_id, record.version, record.topic, record.state)
        if expected != stored_hash:
            fail("HASH_MISMATCH", "the event's content does not match its hash: it was altered")
            continue
        previous = last.get(record.aggregate_id)
        if previous is None:
            if record.version == 1 and stored_prev != GENESIS:
                fail("PREV_HASH_MISMATCH", "the first event of the aggregate does not start the chain")
                continue
            if record.version != 1 and not partial:
                fail("VERSION_GAP", f"the aggregate's events before version {record.version} are missing")
                continue
        else:
            previous_version, previous_hash = previous
            if record.version != previous_version + 1:
                fail("VERSION_GAP", f"version {previous_version} is followed by {record.version}")
                continue
            if stored_prev != previous_hash:
                fail("PREV_HASH_MISMATCH", "the previous event was altered, removed or replaced")
                continue
        last[record.aggregate_id] = (record.version, stored_hash)
    return result


def records_from_notifications(notifications: Iterable[Any]) -> Iterator[Record]:
    for n in notifications:
        try:
            state = parse_state(n.state)
        except ValueError:
            state = {}
        yield Record(n.id, str(n.originator_id), n.originator_version, n.topic, state)


# ---------------------------------------------------------------------------- the log as people read it


def event_type(topic: str) -> str:
    """'leeway.domain.budget:Budget.ActionRecorded' -> 'Budget.ActionRecorded'."""
    return topic.rpartition(":")[2]


def plain(value: Any) -> Any:
    """Decoded event data made JSON-safe: Decimal and UUID as strings, datetimes as ISO 8601, value objects as
    their dict form."""
    from datetime import date, datetime
    from decimal import Decimal

    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def export_line(notification: Any) -> str:
    """One JSON line of ``leeway export``: the stored event as it is (state with its hash chain fields)."""
    return json.dumps(
        {
            "position": notification.id,
            "aggregate_id": str(notification.originator_id),
            "version": notification.originator_version,
            "topic": notification.topic,
            "state": parse_state(notification.state),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def read_export(lines: Iterable[str]) -> Iterator[Record]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            yield Record(int(item["position"]), str(item["aggregate_id"]), int(item["version"]), str(item["topic"]), dict(item["state"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"line {number} is not an exported event: {error}") from None


def rebuild_budgets(records: Iterable[Record], mapper: Mapper) -> tuple[list[Any], list[str]]:  # type: ignore[type-arg]
    """Rebuilds every Budget aggregate from exported records alone; returns (budgets, ids it could not rebuild
    because their first events are not in the export)."""
    from ..domain.budget import Budget

    budgets: dict[str, Any] = {}
    incomplete: set[str] = set()
    prefix = f"{Budget.__module__}:{Budget.__qualname__}."
    for record in records:
        if not record.topic.startswith(prefix) or record.aggregate_id in incomplete:
            continue
        state = {k: v for k, v in record.state.items() if k not in (PREV, HASH)}
        stored = StoredEvent(
            originator_id=UUID(record.aggregate_id),
            originator_version=record.version,
            topic=record.topic,
            state=json.dumps(state).encode(),
        )
        event = mapper.to_domain_event(stored)
        current = budgets.get(record.aggregate_id)
        if current is None and record.version != 1:
            incomplete.add(record.aggregate_id)
            continue
        budgets[record.aggregate_id] = event.mutate(current)  # type: ignore[attr-defined]
    return list(budgets.values()), sorted(incomplete)
