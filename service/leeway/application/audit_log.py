"""The event log as auditors read it: positions, decoded payloads, hash chain fields, and its verification.

``AuditLog`` is mixed into ``LeewayApplication`` (it reads through the application's recorder and mapper)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.domain import Aggregate

from ..adapters.aggregate_reads import aggregate_notifications
from ..adapters.hash_chain import parse_state
from ..domain.budget import Budget
from ..domain.errors import FieldViolation, InvalidArgument, budget_not_found
from ..domain.ids import budget_id_for
from ..domain.privacy import Erasures
from .audit import (
    Checkpoint, Verification, Verifier, event_type, export_lines, plain, records_from_notifications, references, verify,
)  # fmt: skip
from .export import PERSONAL_MODES, ExportStats
from .integrity import REDACTION_TOPIC, START, Redactions, redactions_in
from .queries import SCAN_CHUNK, check_ids
from .verified import MARK_EVERY, VerifiedStore

#: The topic prefix of every Budget event.
BUDGET_TOPIC = f"{Budget.__module__}:{Budget.__qualname__}."
log = structlog.get_logger("leeway.audit")

#: Budgets whose employee id the log reader remembers.
KNOWN_EMPLOYEES = 100_000


@cache
def event_types() -> frozenset[str]:
    """The type of every event Leeway stores (``Budget.ActionRecorded``, ``TeamLedger.CapSet`` ...): each event
    class of its aggregates, by qualified name (the bases ``<Aggregate>.Event`` are never stored)."""

    def below(klass: type) -> Iterator[type]:
        for sub in klass.__subclasses__():
            yield sub
            yield from below(sub)

    return frozenset(
        k.__qualname__
        for k in below(Aggregate.Event)
        if k.__module__.startswith("leeway.") and "." in k.__qualname__ and not k.__qualname__.endswith(".Event")
    )


def check_event_types(types: tuple[str, ...]) -> None:
    """INVALID_ARGUMENT naming every filter that is not the type of a stored event (a typo would otherwise filter
    out everything and look like an empty log)."""
    known = event_types()
    problems = [
        FieldViolation(
            f"event_types[{index}]",
            f"unknown event type {name!r}: use a stored event's type, such as Budget.ActionRecorded",
        )
        for index, name in enumerate(types)
        if name not in known
    ]
    if problems:
        raise InvalidArgument(problems)


@dataclass(slots=True)
class LogEvent:
    """One stored event for auditors; a ``marker`` (event_type "") only carries the position read up to. (Not a
    frozen dataclass: StreamEvents makes one per event, and a frozen one's ``__init__`` was a tenth of its CPU.)"""

    position: int
    aggregate_id: str
    version: int
    event_type: str
    employee_id: str
    record_time: datetime | None
    #: The decoded event's attributes (values as decoded: Decimal, datetime ...); ``payload`` is their JSON-safe
    #: form. Kept as decoded so that a reader that converts them anyway (StreamEvents) walks them once.
    data: dict[str, Any]
    hash: str
    prev_hash: str

    @classmethod
    def marker(cls, position: int) -> LogEvent:
        return cls(position, "", 0, "", "", None, {}, "", "")

    @property
    def is_marker(self) -> bool:
        return not self.event_type

    @property
    def payload(self) -> dict[str, Any]:
        """The event's data, JSON-safe (amounts as decimal strings, times as ISO 8601)."""
        return plain(self.data)  # type: ignore[no-any-return]


class AuditLog:
    """Reads and verifies the whole log (mixed into LeewayApplication, which provides the attributes below)."""

    recorder: Any
    mapper: Any
    #: Opens personal fields (``adapters/pii.Sealer``): the readable view of an export.
    sealer: Any
    store_errors: Callable[[], Any]
    stored_event: Callable[[UUID, int], Any]
    #: Whether the log holds an event of an aggregate (``Queries.has_events``).
    has_events: Callable[[UUID], bool]
    #: Budget id -> employee id, for events that do not carry it (read once from the budget's first event).
    employee_cache: dict[UUID, str]

    def verify_integrity(
        self, employee_id: str = "", checkpoints: Sequence[Checkpoint] = (), *, full: bool = False, store: bool = True
    ) -> Verification:
        """Checks the whole log in one pass (``integrity.Verifier``: every hash chain, what the log points at, and
        that it still holds ``checkpoints``), or only one employee's budget's chain. The whole log's result carries
        its head (the checkpoint of its last event).

        The whole log is checked from the last verified checkpoint stored in the database (``verified.py``) unless
        ``full`` (or there is none, or a checkpoint to check is at or before it): only the events after it are
        read. A check of the whole log that finds nothing broken stores its head as the next verified checkpoint
        (unless not ``store``)."""
        if employee_id:
            check_ids(employee_id=employee_id)
            if checkpoints:
                raise InvalidArgument([FieldViolation(
                    "checkpoint", "is checked against the whole log: leave employee_id empty")])
        with self.store_errors():
            if employee_id:
                # Only check that the budget exists: rebuilding it would fail on the very damage we look for.
                budget_id = budget_id_for(employee_id)
                if not self.has_events(budget_id):
                    raise budget_not_found(employee_id)
                # Its events with their positions, through the primary key: not the whole log.
                result = verify(records_from_notifications(aggregate_notifications(self.recorder, budget_id)),
                                whole=False, redacted=self.recorded_redactions())
                result.head = None  # the head of a part of the log is no checkpoint of it
                return result
            verified = VerifiedStore.of(self.recorder)
            start = None if full or verified is None else self._verified_start(verified, checkpoints)
            if start is None:
                verifier = Verifier(checkpoints=checkpoints, mark_every=MARK_EVERY)
                for record in records_from_notifications(self.all_notifications()):
                    verifier.add(record)
                result = verifier.finish()
                heads = verifier.last
            else:
                result, heads, verifier = self._verify_after(verified, start, checkpoints)  # type: ignore[arg-type]
            if store and verified is not None and result.ok and result.head is not None and result.head.position:
                try:
                    verified.store(result.head, heads, result.events_checked, replace=start is None,
                                   marks=verifier.marks.found)
                except Exception as error:  # noqa: BLE001 - the verdict stands; the next verify just reads more
                    log.warning("audit.verified_checkpoint_not_stored", error=str(error))
            return result

    def recorded_redactions(self) -> Redactions:
        """Every legacy redaction recorded in the log (``LegacyRedacted`` events of the one Erasures aggregate)."""
        found: Redactions = {}
        for stored in self.recorder.select_events(Erasures.the_id()):
            if stored.topic == REDACTION_TOPIC:
                found.update(redactions_in(_state(stored.state)))
        return found

    def _verified_start(self, verified: VerifiedStore, checkpoints: Sequence[Checkpoint]) -> Checkpoint | None:
        """Where an incremental verify may start: the stored verified checkpoint, unless there is none or a
        checkpoint to check is at or before it (then only the events themselves can tell: a full verify)."""
        try:
            stored = verified.load()
        except Exception as error:  # noqa: BLE001 - unreadable: verify everything
            log.warning("audit.verified_checkpoint_unreadable", error=str(error))
            return None
        if stored is None or stored.checkpoint.position <= 0:
            return None
        start = stored.checkpoint
        if any(c.position <= start.position for c in checkpoints):
            return None  # that the log still holds it, only the events up to it can tell
        return start

    def _verify_after(
        self, verified: VerifiedStore, start: Checkpoint, checkpoints: Sequence[Checkpoint]
    ) -> tuple[Verification, dict[str, tuple[int, str]], Verifier]:
        """The events after the verified checkpoint ``start``, each aggregate's chain continued from the hash
        stored there, and the log hash from ``start``'s; (the verdict, the heads that moved)."""
        verifier = Verifier(start=start, checkpoints=[c for c in checkpoints if c.position > start.position],
                            mark_every=MARK_EVERY)
        if not self.recorder.select_notifications(start=start.position, limit=1):
            verifier.fail(None, "CHECKPOINT_NOT_REACHED", f"the log has no event at position {start.position}, "
                          "where the last verify ended: its last events were removed")
        looked_up: set[str] = set()
        for chunk in self.notification_chunks(after=start.position):
            records = list(records_from_notifications(chunk))
            wanted = {r.aggregate_id for r in records if r.version != 1}
            for record in records:
                wanted.update(target for target, _, _ in references(record))
            wanted = {a for a in wanted if a not in looked_up and a not in verifier.last}
            if wanted:
                verifier.known(verified.heads(wanted))
                looked_up |= wanted
            for record in records:
                verifier.add(record)
        result = verifier.finish()
        result.verified_from = start
        return result, {aggregate: verifier.last[aggregate] for aggregate in verifier.touched}, verifier

    def export(self, after: int = 0, personal: str = "clear", stats: ExportStats | None = None) -> Iterator[str]:
        """The lines of ``leeway export`` (``export.py``): a header, every event after position ``after``, a seal.
        The header's log hash at ``after`` continues from ``export_start``: only the events after it are read.
        ``personal``: the readable view of sealed personal fields, "clear" (their text, or ``[erased]``) or
        "sealed" (``[sealed]`` or ``[erased]``)."""
        with self.store_errors():
            start = self.export_start(after)
            yield from export_lines(self.all_notifications(start.position), after, start,
                                    view=self._personal_view(personal), personal=personal, stats=stats)

    def export_parquet(
        self, path: str, after: int = 0, personal: str = "clear", stats: ExportStats | None = None
    ) -> tuple[Checkpoint, int]:
        """``leeway export --format parquet`` (``export_parquet.py``) to ``path``; (the seal's checkpoint, events)."""
        from .export_parquet import write_parquet

        with self.store_errors():
            start = self.export_start(after)
            return write_parquet(self.all_notifications(start.position), path, after, start,
                                 view=self._personal_view(personal), personal=personal, stats=stats)

    def export_start(self, after: int) -> Checkpoint:
        """Where an export after position ``after`` starts reading: the verified checkpoint stored by the last
        VerifyIntegrity of the whole log that found nothing broken (``verified.py``) if it is at or before
        ``after`` (its log hash is the reference there, as for an incremental verify), or the furthest of the marks
        that verify left every ``MARK_EVERY`` positions at or before ``after``, else the log's start. So
        ``export --after`` any verified position reads at most ``MARK_EVERY`` events before it, not the whole log."""
        verified = VerifiedStore.of(self.recorder) if after > 0 else None
        try:
            stored = verified.load() if verified is not None else None
            if stored is None or stored.checkpoint.position <= 0:
                return START
            if stored.checkpoint.position <= after:
                return stored.checkpoint
            # The last verify ended after ``after``: the furthest mark it passed at or before ``after``.
            mark = verified.mark_at_or_before(after)  # type: ignore[union-attr]
        except Exception as error:  # noqa: BLE001 - unreadable: read from the start, as before
            log.warning("audit.verified_checkpoint_unreadable", error=str(error))
            return START
        return mark if mark is not None and mark.position > 0 else START

    def _personal_view(self, personal: str) -> Callable[[str, dict[str, Any]], dict[str, Any] | None]:
        if personal not in PERSONAL_MODES:
            raise ValueError(f"personal must be one of {', '.join(PERSONAL_MODES)}, not {personal!r}")
        return functools.partial(self.sealer.view, clear=personal == "clear")

    def log_head(self) -> int:
        """The position of the last stored event (0 for an empty log): one cheap query, for followers."""
        with self.store_errors():
            return int(self.recorder.max_notification_id() or 0)

    def read_log(
        self, after: int, *, event_types: tuple[str, ...] = (), employee_id: str = "", limit: int = SCAN_CHUNK
    ) -> list[LogEvent]:
        """Up to ``limit`` stored events after position ``after``, in position order, as auditors see them (the
        position of the last one read is the next ``after``, even when filters dropped it: see LogPage)."""
        return self.read_log_chunk(after, event_types=event_types, employee_id=employee_id, limit=limit)[0]

    def read_log_chunk(
        self, after: int, *, event_types: tuple[str, ...] = (), employee_id: str = "", limit: int = SCAN_CHUNK
    ) -> tuple[list[LogEvent], bool]:
        """``read_log``, and whether there may be more right after it (``limit`` stored events were read)."""
        events, more = self.log_chunk(after, event_types=event_types, employee_id=employee_id, limit=limit)
        return list(events), more

    def log_chunk(
        self, after: int, *, event_types: tuple[str, ...] = (), employee_id: str = "", limit: int = SCAN_CHUNK
    ) -> tuple[Iterator[LogEvent], bool]:
        """``read_log_chunk`` with its events decoded one at a time as they are taken: a reader that converts each
        at once (StreamEvents) keeps none of them decoded for long (a chunk of decoded events in a list made the
        stream a fifth slower: the memory they hold is no longer in the CPU's caches when they are converted)."""
        check_event_types(event_types)
        if employee_id:
            check_ids(employee_id=employee_id)
        budget_filter = budget_id_for(employee_id) if employee_id else None
        with self.store_errors():
            chunk = self.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)
        return self._log_events(chunk, event_types, budget_filter), len(chunk) >= limit

    def _log_events(
        self, chunk: Sequence[Any], event_types: tuple[str, ...], budget: UUID | None
    ) -> Iterator[LogEvent]:
        with self.store_errors():  # an employee id is read from its budget's first event (_employee_of)
            for n in chunk:
                kind = event_type(n.topic)
                if event_types and kind not in event_types:
                    continue
                if budget is not None and n.originator_id != budget:
                    continue
                yield self._log_event(n, kind)
        if chunk:
            yield LogEvent.marker(chunk[-1].id)

    def _log_event(self, n: Any, kind: str) -> LogEvent:
        # One decode: the chain fields come with the event (ChainedMapper.to_domain_event_and_chain).
        try:
            decoded, prev_hash, this_hash = self.mapper.to_domain_event_and_chain(n)
            data = dict(vars(decoded))
            data.pop("originator_id", None)
            data.pop("originator_version", None)
        except Exception:  # noqa: BLE001 - a damaged row must not break the auditor's stream
            state = _state(n.state)
            decoded, data = None, {"undecodable": True}
            this_hash, prev_hash = str(state.get("__hash__", "")), str(state.get("__prev__", ""))
        aggregate = n.originator_id
        text = _TEXTS.get(aggregate)
        if text is None:
            if len(_TEXTS) >= KNOWN_EMPLOYEES:
                _TEXTS.clear()
            text = _TEXTS[aggregate] = str(aggregate)
        return LogEvent(
            n.id,
            text,
            n.originator_version,
            kind,
            self._employee_of(aggregate, n.topic, data),
            (getattr(decoded, "at", None) or getattr(decoded, "timestamp", None)) if decoded else None,
            data,
            this_hash,
            prev_hash,
        )

    def _employee_of(self, aggregate_id: UUID, topic: str, payload: dict[str, Any]) -> str:
        if not topic.startswith(BUDGET_TOPIC):
            return ""
        if payload.get("employee_id"):
            return str(payload["employee_id"])
        cache = self.employee_cache
        cached = cache.get(aggregate_id)
        if cached is None:
            first = self.stored_event(aggregate_id, 1)
            cached = str(_state(first.state).get("employee_id", "")) if first is not None else ""
            if len(cache) > KNOWN_EMPLOYEES:
                cache.clear()
            cache[aggregate_id] = cached
        return cached

    def all_notifications(self, after: int = 0, topics: tuple[str, ...] = ()) -> Iterator[Any]:
        """Every stored event after position ``after``, read SCAN_CHUNK at a time."""
        for chunk in self.notification_chunks(after, topics):
            yield from chunk

    def notification_chunks(self, after: int = 0, topics: tuple[str, ...] = ()) -> Iterator[list[Any]]:
        """Every stored event after position ``after``, in lists of up to SCAN_CHUNK."""
        position = after
        while True:
            chunk = self.recorder.select_notifications(
                start=position, limit=SCAN_CHUNK, topics=topics, inclusive_of_start=False
            )
            if chunk:
                yield list(chunk)
            if len(chunk) < SCAN_CHUNK:
                return
            position = chunk[-1].id


#: Aggregate id -> its text (an aggregate has many events; ``str(UUID)`` is a Python method).
_TEXTS: dict[UUID, str] = {}


def _state(raw: bytes) -> dict[str, Any]:
    try:
        return parse_state(raw)
    except ValueError:
        return {}
