"""The Leeway application: owns every command and query. gRPC servicers only translate to and from it."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    EventStore,
    IntegrityError,
    JSONTranscoder,
    Mapper,
    PersistenceError,
    StoredEvent,
)

from ..domain.budget import (
    PENDING_APPROVAL,
    ActionView,
    Budget,
    BudgetView,
    action_view,
    budget_id_for,
    parse_action_id,
)
from ..domain.errors import (
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    LeewayError,
    NotFound,
    budget_not_found,
    Unavailable,
)
from ..domain.indexes import CustomerLedger, Directory, RequestRecord, TeamRoster
from ..domain.limits import HoldBook, OrgLimits, TeamLedger
from ..domain.policy import ActionKind
from ..domain.tally import Cap, CapUsage
from ..domain.validation import check_id
from ..runtime import name_os_thread
from ..storegate import check_idle_connections, table_creation_lock
from . import paging
from .audit import ChainedMapper, Verification, event_type, plain, records_from_notifications, verify
from .commands import Command, ExpireAction, RecordAction, fingerprint
from .pgrecorder import LogMoved
from .transcodings import MoneyAsDict, PolicyAsDict

log = structlog.get_logger("leeway.application")

T = TypeVar("T")
A = TypeVar("A", bound=Aggregate)

#: How many times a command is retried after losing an optimistic-concurrency race.
MAX_ATTEMPTS = 50
#: Events read per round trip while scanning a history for a filtered list.
SCAN_CHUNK = 500
#: Group commit: the most commands decided and saved in one transaction (LEEWAY_BATCH_MAX; 1 turns it off).
DEFAULT_BATCH_MAX = 128
#: Aggregates the writer keeps in memory between batches (LEEWAY_WRITE_CACHE_SIZE; 0 turns it off).
DEFAULT_WRITE_CACHE_SIZE = 2_000
#: Request records the writer remembers after saving them (duplicates in flight are answered without a query).
RECENT_REQUESTS = 10_000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class TeamView:
    """A team: its cap and where it stands in the cap's current period."""

    team_id: str
    usage: CapUsage
    member_count: int
    version: int


@dataclass(frozen=True)
class CustomerUsage:
    """The organisation-wide per-customer cap and what one customer received under it."""

    customer_id: str
    usage: CapUsage
    action_count: int


@dataclass(frozen=True)
class LogEvent:
    """One stored event for auditors; a ``marker`` (event_type "") only carries the position read up to."""

    position: int
    aggregate_id: str
    version: int
    event_type: str
    employee_id: str
    record_time: datetime | None
    payload: dict[str, Any]
    hash: str
    prev_hash: str

    @classmethod
    def marker(cls, position: int) -> LogEvent:
        return cls(position, "", 0, "", "", None, {}, "", "")

    @property
    def is_marker(self) -> bool:
        return not self.event_type


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the token for the next one ("" on the last page)."""

    items: list[T]
    next_page_token: str


class WriteSet:
    """The aggregates a batch of commands (or one command) loads and changes, saved together in one transaction.

    Every aggregate is loaded once per batch and shared by the batch's commands in order, so two commands on one
    budget see each other. ``checkpoint`` marks the events triggered so far as accepted; ``undo`` puts every
    aggregate a failed command touched back to its loaded state plus the accepted events (rebuilt from the store,
    never from the dirty object), so a refused command leaves nothing behind for its neighbours."""

    def __init__(self, app: LeewayApplication, *, cached: bool = False):
        self.app = app
        self.cached = cached
        self.loaded: dict[UUID, Aggregate | None] = {}
        #: Version of each aggregate as loaded from the store (0: it did not exist).
        self.base_version: dict[UUID, int] = {}
        #: How many of each aggregate's pending events belong to commands that succeeded.
        self.accepted: dict[UUID, int] = {}
        self.records: list[RequestRecord] = []
        #: Request records read ahead for the batch (None: there is none).
        self.known_records: dict[UUID, RequestRecord | None] = {}
        #: Request records taken as absent without reading (see LeewayApplication._prefetch).
        self.assumed_new: set[UUID] = set()
        #: Aggregate ids in the order commands first used them (the order their events are saved in).
        self.order: dict[UUID, None] = {}
        #: The log head the batch was decided at without reading ahead (see LeewayApplication._prefetch): its save
        #: is checked against it. None: the batch read what it uses from the store.
        self.expected_head: int | None = None

    def preload(self, aggregate_id: UUID, aggregate: Aggregate | None) -> None:
        """An aggregate read ahead for the whole batch (see LeewayApplication._prefetch)."""
        if isinstance(aggregate, RequestRecord) or aggregate_id in self.known_records:
            self.known_records[aggregate_id] = aggregate
        elif aggregate_id not in self.loaded:
            self.loaded[aggregate_id] = aggregate
            self.base_version[aggregate_id] = aggregate.version if aggregate is not None else 0
            self.accepted[aggregate_id] = 0

    def request_record(self, record_id: UUID) -> RequestRecord | None:
        if record_id in self.known_records:
            return self.known_records[record_id]
        return self.app._request_record(record_id)

    def get(self, aggregate_id: UUID) -> Any:
        self.order.setdefault(aggregate_id)
        if aggregate_id not in self.loaded:
            aggregate = self.app._load_for_write(aggregate_id) if self.cached else self.app._get_or_none(aggregate_id)
            self.loaded[aggregate_id] = aggregate
            self.base_version[aggregate_id] = aggregate.version if aggregate is not None else 0
            self.accepted[aggregate_id] = 0
        return self.loaded[aggregate_id]

    def add(self, aggregate: Aggregate) -> None:
        self.order.setdefault(aggregate.id)
        if aggregate.id not in self.loaded:
            self.base_version[aggregate.id] = 0
            self.accepted[aggregate.id] = 0
        self.loaded[aggregate.id] = aggregate

    def changed(self) -> list[Aggregate]:
        in_order = (self.loaded[i] for i in self.order)
        return [a for a in in_order if a is not None and a.pending_events]

    def committed_version(self, aggregate: Aggregate) -> int:
        return aggregate.version - len(aggregate.pending_events)

    def checkpoint(self, touched: set[UUID]) -> None:
        for aggregate_id in touched:
            aggregate = self.loaded[aggregate_id]
            self.accepted[aggregate_id] = len(aggregate.pending_events) if aggregate is not None else 0

    def undo(self, touched: set[UUID], *, suspect: bool = False) -> None:
        """Forgets the events a failed command triggered. ``suspect``: the command failed with something other
        than a domain refusal, so an aggregate may be half-changed even without a new event: rebuild them all."""
        for aggregate_id in touched:
            aggregate = self.loaded[aggregate_id]
            keep = self.accepted[aggregate_id]
            base = self.base_version[aggregate_id]
            if aggregate is None:
                continue
            if not suspect and len(aggregate.pending_events) == keep and aggregate.version == base + keep:
                continue  # untouched by the failed command
            events = list(aggregate.pending_events[:keep])
            self.app._forget_cached(aggregate_id)
            rebuilt: Any = None
            if base:
                rebuilt = self.app._get_or_none(aggregate_id)
                if rebuilt is None or rebuilt.version != base:
                    # Another writer changed it since the batch loaded it: the save would conflict anyway.
                    raise _StaleBatch()
            for event in events:
                rebuilt = event.mutate(rebuilt)
            if rebuilt is not None:
                rebuilt._pending_events = events
            self.loaded[aggregate_id] = rebuilt

    def event_at(self, aggregate_id: UUID, version: int) -> Any:
        """One event of an aggregate, also if it was triggered earlier in this batch and not saved yet (or None)."""
        aggregate = self.loaded.get(aggregate_id)
        if aggregate is not None and version > self.committed_version(aggregate):
            for event in aggregate.pending_events:
                if event.originator_version == version:
                    return event
            return None
        return next(iter(self.app.events.get(aggregate_id, gt=version - 1, lte=version)), None)

    def history(self, aggregate: Aggregate) -> list[Any]:
        """Every event of an aggregate: the stored ones and those pending in this batch."""
        stored = list(self.app.events.get(aggregate.id, lte=self.committed_version(aggregate)))
        return stored + list(aggregate.pending_events)

    def aggregates(self) -> list[Aggregate]:
        return [a for a in self.loaded.values() if a is not None]


class _StaleBatch(Exception):
    """An aggregate of the batch changed in the store while the batch was being decided (decide it again)."""


class UnitOfWork:
    """What one command sees: the aggregates of its write set (shared with the other commands of its batch)."""

    def __init__(self, app: LeewayApplication, request_id: str, actor: str = "", writes: WriteSet | None = None):
        self.app = app
        self.request_id = request_id
        #: The authenticated principal the command runs for (recorded in its events).
        self.actor = actor
        self.writes = writes if writes is not None else WriteSet(app)
        #: Ids of the aggregates this command loaded or added (undone together if it fails).
        self.touched: set[UUID] = set()

    def get(self, aggregate_id: UUID) -> Any:
        self.touched.add(aggregate_id)
        return self.writes.get(aggregate_id)

    def add(self, aggregate: Aggregate) -> None:
        self.touched.add(aggregate.id)
        self.writes.add(aggregate)

    def get_or_create(self, aggregate_id: UUID, create: Callable[[], A]) -> A:
        existing = self.get(aggregate_id)
        if existing is None:
            existing = create()
            assert existing.id == aggregate_id
            self.add(existing)
        return existing  # type: ignore[no-any-return]

    def changed(self) -> list[Aggregate]:
        return self.writes.changed()

    def event_at(self, aggregate_id: UUID, version: int) -> Any:
        return self.writes.event_at(aggregate_id, version)

    def history(self, aggregate: Aggregate) -> list[Any]:
        return self.writes.history(aggregate)


class LeewayApplication(Application[UUID]):
    """Budgets, actions and the indexes that find them, on SQLite or PostgreSQL."""

    name = "Leeway"
    # Long histories replay from a snapshot; the index aggregates hold only counters, so theirs are tiny.
    snapshotting_intervals = {
        Budget: 100,
        TeamRoster: 50,
        Directory: 50,
        CustomerLedger: 50,
        TeamLedger: 50,
        HoldBook: 50,
        OrgLimits: 50,
    }

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        batch_max: int | None = None,
        write_cache_size: int | None = None,
    ):
        with self._store_errors(), table_creation_lock(env):
            super().__init__(env)
        self.clock = clock
        self._employee_cache: dict[UUID, str] = {}
        self._teams: dict[str, str] = {}
        self._stripes = [threading.Lock() for _ in range(1024)]
        # Group commit (see execute): the queue, the writer thread and the writer's aggregates.
        self.batch_max = batch_max if batch_max is not None else int(self.env.get("BATCH_MAX") or DEFAULT_BATCH_MAX)
        self.write_cache_size = (
            write_cache_size
            if write_cache_size is not None
            else int(self.env.get("WRITE_CACHE_SIZE") or DEFAULT_WRITE_CACHE_SIZE)
        )
        self._queue: deque[_Pending] = deque()
        self._queue_ready = threading.Condition()
        self._writer: threading.Thread | None = None
        self._writer_closed = False
        self._write_lock = threading.Lock()
        self._write_cache: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._recent_records: OrderedDict[str, RequestRecord] = OrderedDict()
        self.batches_committed = 0
        self.batch_conflicts = 0
        self._bulk_reads: _PostgresBulkReads | None = None
        # The writer's knowledge of the log (PostgreSQL, see _prefetch): its head right after the writer's last
        # commit, and which cached aggregates (and which ids of aggregates that did not exist) are current as of it.
        self._log_head: int | None = None
        self._current: set[UUID] = set()
        self._absent: set[UUID] = set()
        #: Batches decided from the writer's cache alone, without reading ahead (PostgreSQL).
        self.read_aheads_skipped = 0
        if isinstance(self.recorder, PostgresAggregateRecorder):
            self._bulk_reads = _PostgresBulkReads(self)
            datastores = {id(r.datastore): r.datastore for r in (self.recorder, getattr(self.snapshots, "recorder", None)) if r}
            for datastore in datastores.values():
                check_idle_connections(datastore)
        #: Called with (command, result) after each command that changed something (not for replays);
        #: used for metrics. A failing listener is logged and never fails the command.
        self.commit_listeners: list[Callable[[Command, dict[str, Any]], None]] = []
        #: Called after every save that stored events (once per group-commit batch): wakes the projections.
        self.save_listeners: list[Callable[[], None]] = []
        self._save_local = threading.local()

    # ------------------------------------------------------------------ storage: a hash chain per aggregate

    def construct_mapper(self) -> Mapper:  # type: ignore[type-arg]
        return ChainedMapper(transcoder=self.construct_transcoder(), read_previous=self._stored_event)

    def construct_snapshot_store(self) -> EventStore:  # type: ignore[type-arg]
        # Snapshots are a cache, not part of the audited log: stored without a chain.
        return self.factory.event_store(
            mapper=self.factory.mapper(transcoder=self.construct_transcoder()),
            recorder=self.factory.aggregate_recorder(purpose="snapshots"),
        )

    def _stored_event(self, aggregate_id: UUID, version: int) -> StoredEvent | None:
        found = self.recorder.select_events(aggregate_id, gt=version - 1, lte=version)
        return found[0] if found else None

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        mapper = self.mapper
        assert isinstance(mapper, ChainedMapper)
        mapper.begin()
        try:
            if kwargs or not all(isinstance(obj, Aggregate) for obj in objs):
                recordings = super().save(*objs, **kwargs)
            else:
                # Application.save for plain aggregates, without its per-object runtime Protocol checks (a
                # measurable share of a large batch).
                processing_event: ProcessingEvent[UUID] = ProcessingEvent()
                for aggregate in objs:
                    processing_event.events.extend(aggregate.collect_events())
                    processing_event.aggregates[aggregate.id] = aggregate
                recordings = self._record(processing_event)
                snapshots = self._take_snapshots(processing_event)
                if snapshots:
                    self._after_save(lambda: self._store_snapshots(snapshots))
                self._notify(recordings)
                self.notify(processing_event.events)  # type: ignore[arg-type]
        except BaseException:
            mapper.discard()
            raise
        mapper.commit()
        if recordings:
            self._after_save(self._tell_save_listeners)
        return recordings

    def _tell_save_listeners(self) -> None:
        for listener in self.save_listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener never fails a save that committed
                log.exception("save_listener.failed")

    @contextmanager
    def _deferring_after_save(self) -> Iterator[list[Callable[[], None]]]:
        """Saves by this thread inside the block leave what follows a commit (storing snapshots, waking the
        projections) in the yielded list instead of doing it at once: the writer runs it once the batch's callers
        have their answers, so they do not wait for it."""
        deferred: list[Callable[[], None]] = []
        self._save_local.deferred = deferred
        try:
            yield deferred
        finally:
            self._save_local.deferred = None

    def _after_save(self, work: Callable[[], None]) -> None:
        deferred = getattr(self._save_local, "deferred", None)
        if deferred is not None:
            deferred.append(work)
        else:
            work()

    def _take_snapshots(self, processing_event: Any) -> list[StoredEvent]:
        """Snapshots from the aggregates just saved, as they are in memory (the library reads each one back from
        the store): one per aggregate whose events in this save reached a multiple of its interval, at the
        aggregate's version after the save (a snapshot at any version is valid). Encoded now, stored by
        ``_store_snapshots`` (after the callers have their answers, for the writer)."""
        if not (self.snapshots and self.snapshotting_intervals):
            return []
        due: dict[UUID, Any] = {}
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate)) if aggregate is not None else None
            if interval and event.originator_version % interval == 0:
                due[aggregate.id] = aggregate
        snapshot_class = type(self).snapshot_class
        return [
            self.snapshots.mapper.to_stored_event(getattr(type(a), "Snapshot", snapshot_class).take(a))
            for a in due.values()
        ]

    def _store_snapshots(self, snapshots: list[StoredEvent]) -> None:
        """Snapshots are a cache: one that cannot be stored is logged and skipped (its aggregate replays from an
        earlier snapshot, or from its events), never turned into a failure of the save that committed."""
        assert self.snapshots is not None
        try:
            self.snapshots.recorder.insert_events(snapshots)
        except PersistenceError as error:
            log.warning("snapshot.not_stored", count=len(snapshots), error_type=type(error).__name__, error=str(error))

    def verify_integrity(self, employee_id: str = "") -> Verification:
        """Recomputes the hash chain of every stored event (or of one employee's budget)."""
        if employee_id:
            self._check_ids(employee_id=employee_id)
        with self._store_errors():
            if employee_id:
                # Only check that the budget exists: rebuilding it would fail on the very damage we look for.
                budget_id = budget_id_for(employee_id)
                if not self.recorder.select_events(budget_id, limit=1):
                    raise budget_not_found(employee_id)
                # The log order gives each event its position (one pass over the log, like the full check).
                return verify(
                    records_from_notifications(n for n in self._all_notifications() if n.originator_id == budget_id)
                )
            return verify(records_from_notifications(self._all_notifications()))

    def read_log(self, after: int, *, event_types: tuple[str, ...] = (), employee_id: str = "", limit: int = SCAN_CHUNK) -> list[LogEvent]:
        """Up to ``limit`` stored events after position ``after``, in position order, as auditors see them (the
        position of the last one read is the next ``after``, even when filters dropped it: see LogPage)."""
        if employee_id:
            self._check_ids(employee_id=employee_id)
        budget_filter = budget_id_for(employee_id) if employee_id else None
        with self._store_errors():
            chunk = self.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)
            events = []
            for n in chunk:
                kind = event_type(n.topic)
                if event_types and kind not in event_types:
                    continue
                if budget_filter is not None and n.originator_id != budget_filter:
                    continue
                state = _state(n.state)
                try:
                    decoded: Any = self.mapper.to_domain_event(n)
                    payload = plain(
                        {k: v for k, v in vars(decoded).items() if k not in ("originator_id", "originator_version")}
                    )
                except Exception:  # noqa: BLE001 - a damaged row must not break the auditor's stream
                    decoded, payload = None, {"undecodable": True}
                events.append(
                    LogEvent(
                        position=n.id,
                        aggregate_id=str(n.originator_id),
                        version=n.originator_version,
                        event_type=kind,
                        employee_id=self._employee_of(n.originator_id, n.topic, payload),
                        record_time=(getattr(decoded, "at", None) or getattr(decoded, "timestamp", None)) if decoded else None,
                        payload=payload,
                        hash=str(state.get("__hash__", "")),
                        prev_hash=str(state.get("__prev__", "")),
                    )
                )
        return events if not chunk else events + [LogEvent.marker(chunk[-1].id)]

    def _employee_of(self, aggregate_id: UUID, topic: str, payload: dict[str, Any]) -> str:
        if not topic.startswith(f"{Budget.__module__}:{Budget.__qualname__}."):
            return ""
        if payload.get("employee_id"):
            return str(payload["employee_id"])
        cached = self._employee_cache.get(aggregate_id)
        if cached is None:
            first = self._stored_event(aggregate_id, 1)
            cached = str(_state(first.state).get("employee_id", "")) if first is not None else ""
            if len(self._employee_cache) > 100_000:
                self._employee_cache.clear()
            self._employee_cache[aggregate_id] = cached
        return cached

    def _all_notifications(self, after: int = 0, topics: tuple[str, ...] = ()) -> Iterator[Any]:
        position = after
        while True:
            chunk = self.recorder.select_notifications(
                start=position, limit=SCAN_CHUNK, topics=topics, inclusive_of_start=False
            )
            yield from chunk
            if len(chunk) < SCAN_CHUNK:
                return
            position = chunk[-1].id

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(PolicyAsDict())
        transcoder.register(MoneyAsDict())

    # ------------------------------------------------------------------ the one write entry point

    def execute(self, command: Command, *, actor: str = "", deadline: float = float("inf")) -> Any:
        """Validates, decides and saves a command exactly once per request_id; returns its response.

        ``actor`` is the authenticated principal (recorded in the events); ``deadline`` a time.monotonic() after
        which no further attempt is made (DEADLINE_EXCEEDED).

        With group commit (``batch_max`` > 1) the command is queued for the writer thread, which decides all
        pending commands against one shared set of aggregates and saves them in one transaction (see
        ``_run_batch``); with ``batch_max`` 1 every request decides and saves on its own (``_execute_alone``)."""
        problems = command.validate()
        if problems:
            raise InvalidArgument(problems)
        if self._writer_closed:
            raise Unavailable("the service is shutting down; retry with the same request_id")
        if self.batch_max <= 1:
            return self._execute_alone(command, actor, deadline)
        request_id = command.request_id or f"generated:{uuid.uuid4()}"
        digest = fingerprint(command)
        # Whether the writer may take the request as new at first, without looking for its record: a generated
        # request_id is new; on SQLite every request is (a retry of a request older than the writer's memory of
        # recent ones then fails the batch's save on the record's unique key, and the batch is decided again,
        # reading the records: a rare, dearer path instead of a read per request). On PostgreSQL the writer reads
        # a batch's records with its read-ahead, or skips both (see _prefetch).
        checked = not command.request_id or self._bulk_reads is None
        pending = _Pending(command, actor, deadline, request_id, digest, checked=checked)
        self._enqueue(pending)
        pending.done.wait()
        return self._answer(pending)

    def execute_batch(self, commands: list[Command], *, actor: str = "") -> list[Any]:
        """Runs ``commands`` as ONE batch (one transaction), in order, in the calling thread; returns each one's
        response or the exception it failed with. The writer thread does the same with what it dequeues; tests
        use this to put chosen commands into one batch."""
        items = []
        outcomes: list[Any] = []
        for command in commands:
            problems = command.validate()
            if problems:
                outcomes.append(InvalidArgument(problems))
                continue
            item = _Pending(command, actor, float("inf"), command.request_id or f"generated:{uuid.uuid4()}", fingerprint(command))
            items.append(item)
            outcomes.append(item)
        with self._write_lock:
            self._run_batch(items)
        answers = []
        for outcome in outcomes:
            if isinstance(outcome, _Pending):
                try:
                    answers.append(self._answer(outcome))
                except Exception as error:  # noqa: BLE001 - handed back to the test
                    answers.append(error)
            else:
                answers.append(outcome)
        return answers

    def _answer(self, pending: _Pending) -> Any:
        """The caller's side once the writer is done with its command: the response or the exception."""
        if pending.error is not None:
            raise pending.error
        if pending.replay_of is not None:
            return self._replay(pending.command, pending.replay_of, pending.digest)
        result = pending.result
        assert result is not None
        if pending.fresh:
            self._tell_listeners(pending.command, result)
        if pending.view is not None:
            return pending.view
        return pending.command.render(self, result)

    # ------------------------------------------------------------------ group commit: the writer thread

    def _enqueue(self, pending: _Pending) -> None:
        with self._queue_ready:
            if self._writer_closed:
                raise Unavailable("the service is shutting down; retry with the same request_id")
            self._queue.append(pending)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="leeway-writer", daemon=True)
                self._writer.start()
            self._queue_ready.notify()

    def _write_loop(self) -> None:
        name_os_thread()  # "leeway-writer": its CPU time apart from the gRPC threads' (top -H, make bench)
        while True:
            with self._queue_ready:
                while not self._queue and not self._writer_closed:
                    self._queue_ready.wait()
                if not self._queue:
                    return  # closed and drained
                batch = []
                while self._queue and len(batch) < self.batch_max:
                    batch.append(self._queue.popleft())
            try:
                with self._write_lock:
                    self._run_batch(batch)
            except BaseException as error:  # noqa: BLE001 - never leave a caller waiting
                log.exception("writer.batch_failed")
                for item in batch:
                    if not item.done.is_set():
                        item.fail(error if isinstance(error, LeewayError) else Unavailable(
                            "the write failed; retry with the same request_id"))

    def close(self) -> None:
        """Stops the writer thread after it has written what is queued (what it cannot, fails UNAVAILABLE)."""
        with self._queue_ready:
            self._writer_closed = True
            self._queue_ready.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=30)
        with self._queue_ready:
            left = list(self._queue)
            self._queue.clear()
        for item in left:
            item.fail(Unavailable("the service is shutting down; retry with the same request_id"))
        super().close()

    def _run_batch(self, items: list[_Pending]) -> None:
        """Decides ``items`` in order on one shared write set and saves everything in one transaction; then
        answers each one (refusals too: a refusal may rest on an earlier command of the batch, so it is only
        given once that command is saved), and only then stores the batch's snapshots and wakes the projections.
        A version conflict (another replica, or a duplicate request_id)
        decides the batch again from freshly read aggregates; a store error fails the batch's callers with
        UNAVAILABLE and forgets every aggregate it touched, so nothing unsaved leaks into the next batch."""
        todo = [item for item in items if not item.done.is_set()]
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                now_monotonic = time.monotonic()
                for item in todo:
                    if now_monotonic > item.deadline:
                        item.fail(DeadlineExceeded("the request ran out of time while retrying; retry with the same request_id"))
                todo = [item for item in todo if not item.done.is_set()]
                if not todo:
                    return
            writes = WriteSet(self, cached=self.write_cache_size > 0)
            try:
                with self._store_errors():
                    self._prefetch(todo, writes, fresh_records=attempt > 0)
                    self._decide_batch(todo, writes, fresh_records=attempt > 0)
                    changed = writes.changed()
                    check = None
                    after_save: list[Callable[[], None]] = []
                    if changed or writes.records:
                        with self._checking_head(writes.expected_head) as check:
                            with self._deferring_after_save() as after_save:
                                self.save(*changed, *writes.records)
                    elif writes.expected_head is not None:
                        self._confirm_head(writes.expected_head)
            except (IntegrityError, _StaleBatch):
                self._forget_all(writes)
                self.batch_conflicts += 1
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                continue
            except BaseException as error:
                self._forget_all(writes)
                for item in todo:
                    item.fail(error if isinstance(error, LeewayError) else Unavailable(
                        "the write failed; retry with the same request_id"))
                if not isinstance(error, (LeewayError, PersistenceError)):
                    log.exception("writer.batch_error")
                return
            self._remember(writes)
            self._learn_head(writes, check)
            self.batches_committed += 1
            for item in todo:
                item.finish()
            for work in after_save:
                work()
            return
        log.warning("batch.retries_exhausted", size=len(todo))
        for item in todo:
            item.fail(Conflict(
                "too many concurrent changes to the same budget; retry with the same request_id",
                reason="CONCURRENCY_CONFLICT",
            ))

    def _decide_batch(self, items: list[_Pending], writes: WriteSet, *, fresh_records: bool) -> None:
        """Decides each item in order (provisional outcomes, given once the batch is saved)."""
        in_batch: dict[str, _Pending] = {}
        for item in items:
            item.reset()
            first = in_batch.get(item.request_id)
            if first is not None:
                if first.digest != item.digest:
                    item.error = _reused(item.request_id, first.command.method)
                else:
                    item.result, item.view = first.result, first.view
                continue
            record_id = RequestRecord.create_id(item.request_id)
            earlier = self._recent_records.get(item.request_id)
            # Whether the store was asked for this request's record (or the request is new by construction):
            # a request taken as new without asking may be the retry of one stored long ago.
            looked = not item.command.request_id or earlier is not None
            if earlier is None and (fresh_records or not item.checked):
                earlier = writes.request_record(record_id)
                looked = record_id not in writes.assumed_new
            if earlier is not None:
                item.replay_of = earlier
                continue
            uow = UnitOfWork(self, item.request_id, item.actor, writes)
            now = self.clock()
            try:
                result = item.command.decide(uow, now)
                render_now = getattr(item.command, "render_now", None)
                view = render_now(uow, result) if render_now is not None else None
            except PersistenceError:
                raise
            except LeewayError as error:
                writes.undo(uow.touched)
                if not looked:
                    # A retry of a request that succeeded long ago is refused when decided again (its own effect
                    # is there now: the budget spent, the action decided). A success would fail the save on the
                    # record's unique key; a refusal saves nothing, so the record is looked for here.
                    stored = self._request_record(record_id)
                    if stored is not None:
                        item.replay_of = stored
                        continue
                item.error = error
                continue
            except Exception as error:  # noqa: BLE001 - a bug in one command must not fail its neighbours
                log.exception("command.failed", method=item.command.method)
                writes.undo(uow.touched, suspect=True)
                item.error = error
                continue
            writes.checkpoint(uow.touched)
            writes.records.append(
                RequestRecord(
                    request_id=item.request_id,
                    method=item.command.method,
                    fingerprint=item.digest,
                    result=result,
                    at=now,
                    actor=item.actor,
                )
            )
            item.result, item.view, item.fresh = result, view, True
            in_batch[item.request_id] = item

    # ------------------------------------------------------------------ the writer's aggregates

    def _prefetch(self, items: list[_Pending], writes: WriteSet, *, fresh_records: bool) -> None:
        """Reads ahead, in two queries for the whole batch, what its commands will load (their hints) and the
        request records the writer must look for (PostgreSQL only; SQLite reads are local and cheap)."""
        if self._bulk_reads is None:
            return
        records = {
            RequestRecord.create_id(item.request_id)
            for item in items
            if (fresh_records or not item.checked) and item.request_id not in self._recent_records
        }
        hinted: set[UUID] = set()
        for item in items:
            hint = getattr(item.command, "prefetch", None)
            if hint is not None:
                hinted.update(hint(self))
        for record_id in records:
            writes.known_records[record_id] = None
        if not fresh_records and self._log_head is not None and all(map(self._is_current, hinted)):
            # Single-writer fast path: nothing of the batch's needs reading, as far as the writer knows. Its save
            # checks, under the table lock, that the log's head is still the one after the writer's last commit
            # (no other writer committed since) and fails with LogMoved otherwise: the batch is then decided again,
            # reading ahead. A request record read as absent here, but stored long ago, makes the save fail on
            # its unique key, with the same outcome.
            for aggregate_id in hinted:
                writes.preload(aggregate_id, self._write_cache.get(aggregate_id))
            writes.assumed_new.update(records)
            writes.expected_head = self._log_head
            self.read_aheads_skipped += 1
            return
        wanted = hinted | records
        if wanted:
            for aggregate_id, aggregate in self._bulk_reads.load(wanted, never_snapshotted=records).items():
                writes.preload(aggregate_id, aggregate)

    def _is_current(self, aggregate_id: UUID) -> bool:
        """True if the writer knows this aggregate as it is at ``_log_head``: in its cache, or known not to exist."""
        return aggregate_id in self._absent or (aggregate_id in self._current and aggregate_id in self._write_cache)

    def _checking_head(self, expected: int | None) -> Any:
        """The save's head check on PostgreSQL (see LeewayPostgresRecorder.checking_head); nothing elsewhere."""
        checking = getattr(self.recorder, "checking_head", None)
        return checking(expected) if checking is not None else nullcontext(None)

    def _confirm_head(self, expected: int) -> None:
        """A batch decided without reading ahead that saves nothing (refusals, replays): its outcomes stand only if
        no other writer committed since the writer's last commit."""
        if self.recorder.max_notification_id() != expected:  # type: ignore[attr-defined]
            raise LogMoved("the event log moved since the writer's last commit")

    def _learn_head(self, writes: WriteSet, check: Any) -> None:
        """After a committed batch: the log's new head, and what the writer now knows to be current as of it.
        Everything the batch loaded is current if the head right before its insert was the head after the
        writer's previous commit (nobody else committed in between: checked by the insert itself when the batch
        skipped reading ahead). Otherwise the writer forgets what it knew and starts again from this head."""
        if check is None or check.head_after is None:
            return
        certain = check.head_before is not None and check.head_before == self._log_head
        if not certain:
            self._current.clear()
            self._absent.clear()
        self._log_head = check.head_after
        if certain:
            for aggregate_id, aggregate in writes.loaded.items():
                if aggregate is None:
                    self._absent.add(aggregate_id)
                elif not isinstance(aggregate, RequestRecord):
                    self._current.add(aggregate_id)
                    self._absent.discard(aggregate_id)
            if len(self._absent) > self.write_cache_size:
                self._absent.clear()

    def _forget_log_head(self) -> None:
        self._log_head = None
        self._current.clear()
        self._absent.clear()

    def _load_for_write(self, aggregate_id: UUID) -> Any:
        """An aggregate for the writer: from its cache, brought up to date with any events other replicas stored
        since (one query, usually empty), or from the store. The cache only ever holds saved state."""
        cached = self._write_cache.get(aggregate_id)
        if cached is None:
            return self._get_or_none(aggregate_id)
        self._write_cache.move_to_end(aggregate_id)
        for event in self.events.get(aggregate_id, gt=cached.version):
            event.mutate(cached)
        return cached

    def _forget_cached(self, aggregate_id: UUID) -> None:
        self._write_cache.pop(aggregate_id, None)
        self._current.discard(aggregate_id)

    def _forget_all(self, writes: WriteSet) -> None:
        for aggregate_id in writes.loaded:
            self._write_cache.pop(aggregate_id, None)
        self._forget_log_head()

    def _remember(self, writes: WriteSet) -> None:
        for aggregate in writes.aggregates():
            if isinstance(aggregate, Budget):
                self._teams[aggregate.employee_id] = aggregate.team_id
        if self.write_cache_size > 0:
            for aggregate in writes.aggregates():
                if isinstance(aggregate, RequestRecord):
                    continue
                self._write_cache[aggregate.id] = aggregate
                self._write_cache.move_to_end(aggregate.id)
            while len(self._write_cache) > self.write_cache_size:
                evicted, _ = self._write_cache.popitem(last=False)
                self._current.discard(evicted)
        for record in writes.records:
            self._recent_records[record.request_id] = record
        while len(self._recent_records) > RECENT_REQUESTS:
            self._recent_records.popitem(last=False)

    def _request_record(self, record_id: UUID) -> RequestRecord | None:
        """A request's record (one query: a record is a single event, never snapshotted)."""
        first = next(iter(self.events.get(record_id, limit=1)), None)
        return first.mutate(None) if first is not None else None  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ one save per request (batch_max 1)

    def _execute_alone(self, command: Command, actor: str, deadline: float) -> Any:
        request_id = command.request_id or f"generated:{uuid.uuid4()}"
        digest = fingerprint(command)
        record_id = RequestRecord.create_id(request_id)
        stripes = self._stripes_for(command)
        for attempt in range(MAX_ATTEMPTS):
            with self._store_errors():
                with _holding(stripes):
                    earlier = self._get_or_none(record_id)
                    if earlier is not None:
                        return self._replay(command, earlier, digest)
                    if attempt and time.monotonic() > deadline:
                        raise DeadlineExceeded(
                            "the request ran out of time while retrying; retry with the same request_id"
                        )
                    uow = UnitOfWork(self, request_id, actor)
                    now = self.clock()
                    result = command.decide(uow, now)
                    record = RequestRecord(
                        request_id=request_id, method=command.method, fingerprint=digest, result=result, at=now, actor=actor
                    )
                    try:
                        self.save(*uow.changed(), record)
                        saved = True
                    except IntegrityError:
                        saved = False
                if not saved:
                    # Another writer got there first (another replica, or an aggregate this process does not
                    # serialise): decide again.
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                    continue
                self._tell_listeners(command, result)
                return command.render(self, result)
        log.warning("command.retries_exhausted", method=command.method, request_id=request_id)
        raise Conflict(
            "too many concurrent changes to the same budget; retry with the same request_id",
            reason="CONCURRENCY_CONFLICT",
        )

    def _stripes_for(self, command: Command) -> list[threading.Lock]:
        """Locks that serialise, inside this process, commands that would write the same hot aggregates (a
        team's ledger, a customer's ledger): they queue here instead of losing optimistic-concurrency races and
        retrying. Other replicas are still kept apart by the versions (IntegrityError + retry)."""
        keys: list[str] = []
        if isinstance(command, RecordAction) and not command.validate():
            team = self._team_of(command.employee_id)
            if team is not None:
                keys.append(f"team:{team}")
            keys.append(f"customer:{command.customer_id}")
        indexes = sorted({hash(key) % len(self._stripes) for key in keys})
        return [self._stripes[i] for i in indexes]

    def _team_of(self, employee_id: str) -> str | None:
        """An employee's team (it never changes), cached; None if there is no budget (the command will say so)."""
        team = self._teams.get(employee_id)
        if team is None:
            try:
                with self._store_errors():
                    team = self._load_budget(employee_id).team_id
            except LeewayError:
                return None
            if len(self._teams) > 100_000:
                self._teams.clear()
            self._teams[employee_id] = team
        return team

    def _tell_listeners(self, command: Command, result: dict[str, Any]) -> None:
        for listener in self.commit_listeners:
            try:
                listener(command, result)
            except Exception:  # noqa: BLE001 - observers must never fail a committed command
                log.exception("commit_listener.failed", method=command.method)

    def _replay(self, command: Command, record: RequestRecord, digest: str) -> Any:
        if record.fingerprint != digest:
            raise _reused(record.request_id, record.method)
        return command.render(self, record.result)

    # ------------------------------------------------------------------ queries

    def get_budget(self, employee_id: str, as_of: datetime | None = None) -> BudgetView:
        self._check_ids(employee_id=employee_id)
        now = self.clock()
        if as_of is not None and as_of > now:
            raise InvalidArgument([FieldViolation("as_of", "must not be in the future")])
        with self._store_errors():
            budget = self._load_budget(employee_id)
            if as_of is None:
                return budget.view(now)
            version = self._version_at(budget.id, budget.version, as_of)
            if version == 0:
                raise budget_not_found(employee_id, f"employee {employee_id} had no budget at {as_of.isoformat()}")
            return self.repository.get(budget.id, version=version).view(as_of)  # type: ignore[no-any-return]

    def _version_at(self, aggregate_id: UUID, current: int, at: datetime) -> int:
        """The last version recorded at or before ``at`` (0: none), by binary search over single-event reads."""
        low, high = 0, current
        while low < high:
            middle = (low + high + 1) // 2
            if self.event_at(aggregate_id, middle).at <= at:
                low = middle
            else:
                high = middle - 1
        return low

    def get_action(self, action_id: str) -> ActionView:
        parsed = parse_action_id(action_id) if action_id else None
        if parsed is None:
            raise InvalidArgument(
                [FieldViolation("action_id", "is required" if not action_id else "is not an action id")]
            )
        budget_id, version = parsed
        with self._store_errors():
            events = list(self.events.get(budget_id, gt=version - 1, lte=version))
            if not events or not isinstance(events[0], Budget.ActionRecorded):
                raise NotFound(
                    f"action {action_id} does not exist",
                    reason="ACTION_NOT_FOUND",
                    resource_type="leeway.v1.Action",
                    resource_name=f"actions/{action_id}",
                )
            budget = self.repository.get(budget_id)
        return action_view(events[0], budget.outcome(version), self.clock())

    def get_team(self, team_id: str, *, version: int | None = None, at: datetime | None = None) -> TeamView:
        """A team now, or (version, at) as a SetTeamCap left it."""
        self._check_ids(team_id=team_id)
        with self._store_errors():
            ledger = self._get_or_none(TeamLedger.create_id(team_id), version)
            roster = self._get_or_none(TeamRoster.create_id(team_id))
        if ledger is None and roster is None:
            raise NotFound(
                f"team {team_id} has no budgets and no cap",
                reason="TEAM_NOT_FOUND",
                resource_type="leeway.v1.Team",
                resource_name=f"teams/{team_id}",
            )
        now = at or self.clock()
        usage = ledger.usage(now) if ledger is not None else CapUsage(None, None, None, None, None, None)
        return TeamView(
            team_id=team_id,
            usage=usage,
            member_count=roster.member_count if roster is not None else 0,
            version=ledger.version if ledger is not None else 0,
        )

    def get_customer_cap(self) -> Cap | None:
        with self._store_errors():
            org = self._get_or_none(OrgLimits.create_id(OrgLimits.NAME))
        return org.customer_cap if org is not None else None

    def get_customer_usage(self, customer_id: str) -> CustomerUsage:
        self._check_ids(customer_id=customer_id)
        cap = self.get_customer_cap()
        with self._store_errors():
            ledger = self._get_or_none(CustomerLedger.create_id(customer_id))
        if ledger is None:
            ledger = CustomerLedger(customer_id=customer_id)  # never saved: a customer nobody acted for
        return CustomerUsage(customer_id, ledger.usage(cap, self.clock()), ledger.action_count)

    def action_at(self, budget_id: UUID, action_version: int, budget_version: int) -> tuple[ActionView, BudgetView]:
        """An action and its budget as they were right after ``budget_version`` (the response a request got)."""
        with self._store_errors():
            budget = self.repository.get(budget_id, version=budget_version)
            event = self.event_at(budget_id, action_version)
        return action_view(event, budget.outcome(action_version)), budget.view()

    def pending_count(self) -> int:
        """Actions waiting for approval now (holds past their timeout are not counted)."""
        with self._store_errors():
            book = self._get_or_none(HoldBook.create_id(HoldBook.NAME))
        if book is None:
            return 0
        now = self.clock()
        return sum(1 for hold in book.open.values() if hold["expires_at"] > now)

    def expire_due(self, limit: int = 100) -> int:
        """Expires pending actions whose approval timeout has passed; returns how many. Safe on many replicas:
        each expiry is a command with the request_id ``expire:<action_id>``."""
        with self._store_errors():
            book = self._get_or_none(HoldBook.create_id(HoldBook.NAME))
        if book is None:
            return 0
        done = 0
        for action_id in book.due(self.clock(), limit):
            try:
                self.execute(ExpireAction(request_id=f"expire:{action_id}", action_id=action_id))
                done += 1
            except LeewayError as error:
                log.warning("expiry.failed", action_id=action_id, reason=error.reason, error=error.message)
        return done

    def list_budgets(self, team_id: str, page_size: int, page_token: str) -> Page[BudgetView]:
        if team_id:
            self._check_ids(team_id=team_id)
        size = paging.page_size(page_size)
        filters = {"team_id": team_id}
        after = paging.decode_token(page_token, "budgets", filters)
        index_id = TeamRoster.create_id(team_id) if team_id else Directory.create_id(Directory.NAME)
        now = self.clock()
        with self._store_errors():
            entries = [
                e
                for e in self.events.get(index_id, gt=max(after, 1), limit=size + 1)
                if isinstance(e, (TeamRoster.MemberAdded, Directory.BudgetListed))
            ]
            budgets = [self._load_budget(e.employee_id).view(now) for e in entries[:size]]
        token = (
            paging.encode_token("budgets", filters, entries[size - 1].originator_version) if len(entries) > size else ""
        )
        return Page(budgets, token)

    def list_actions(
        self,
        employee_id: str,
        customer_id: str,
        kind: ActionKind | None,
        page_size: int,
        page_token: str,
        state: str | None = None,
        approver_id: str = "",
    ) -> Page[ActionView]:
        waiting_list = state == PENDING_APPROVAL
        if not employee_id and not customer_id and not waiting_list:
            raise InvalidArgument(
                [
                    FieldViolation("employee_id", "employee_id or customer_id is required (or state PENDING_APPROVAL)"),
                    FieldViolation("customer_id", "employee_id or customer_id is required (or state PENDING_APPROVAL)"),
                ]
            )
        self._check_ids(employee_id=employee_id, customer_id=customer_id, approver_id=approver_id, required=False)
        size = paging.page_size(page_size)
        filters = {
            "employee_id": employee_id,
            "customer_id": customer_id,
            "kind": kind.value if kind else "",
            "state": state or "",
            "approver_id": approver_id,
        }
        after = paging.decode_token(page_token, "actions", filters)
        now = self.clock()
        views = _ViewCache(self, now)

        def keep(view: ActionView) -> bool:
            return (
                (kind is None or view.kind is kind)
                and (state is None or view.state == state)
                and (not approver_id or approver_id in view.approver_ids)
            )

        with self._store_errors():
            if waiting_list:
                matches = self._scan_holds(employee_id, customer_id, approver_id, after, size + 1, views, keep)
            elif customer_id:
                matches = self._scan_customer(customer_id, employee_id, after, size + 1, views, keep)
            else:
                self._load_budget(employee_id)  # NOT_FOUND for an unknown employee
                matches = self._scan_budget(budget_id_for(employee_id), after, size + 1, views, keep)
            actions = [view for _, view in matches[:size]]
        token = paging.encode_token("actions", filters, matches[size - 1][0]) if len(matches) > size else ""
        return Page(actions, token)

    # ------------------------------------------------------------------ helpers for commands and queries

    def budget_at(self, budget_id: UUID, version: int) -> BudgetView:
        """The budget exactly as it was right after ``version`` (the response a request got)."""
        with self._store_errors():
            budget = self.repository.get(budget_id, version=version)
        return budget.view()

    def event_at(self, aggregate_id: UUID, version: int) -> Any:
        with self._store_errors():
            return next(iter(self.events.get(aggregate_id, gt=version - 1, lte=version)))

    def _scan_budget(
        self, budget_id: UUID, after: int, want: int, views: _ViewCache, keep: Callable[[ActionView], bool]
    ) -> list[tuple[int, ActionView]]:
        found: list[tuple[int, ActionView]] = []
        position = after
        while len(found) < want:
            chunk = list(self.events.get(budget_id, gt=position, limit=SCAN_CHUNK))
            for event in chunk:
                if isinstance(event, Budget.ActionRecorded):
                    view = views.of(event)
                    if keep(view):
                        found.append((event.originator_version, view))
                        if len(found) == want:
                            break
            if len(chunk) < SCAN_CHUNK:
                break
            position = chunk[-1].originator_version
        return found

    def _scan_customer(
        self,
        customer_id: str,
        employee_id: str,
        after: int,
        want: int,
        views: _ViewCache,
        keep: Callable[[ActionView], bool],
    ) -> list[tuple[int, ActionView]]:
        found: list[tuple[int, ActionView]] = []
        ledger_id = CustomerLedger.create_id(customer_id)
        position = after
        while len(found) < want:
            chunk = list(self.events.get(ledger_id, gt=position, limit=SCAN_CHUNK))
            for event in chunk:
                if not isinstance(event, CustomerLedger.ActionNoted):
                    continue
                if employee_id and event.employee_id != employee_id:
                    continue
                view = views.by_id(event.action_id)
                if keep(view):
                    found.append((event.originator_version, view))
                    if len(found) == want:
                        break
            if len(chunk) < SCAN_CHUNK:
                break
            position = chunk[-1].originator_version
        return found

    def _scan_holds(
        self,
        employee_id: str,
        customer_id: str,
        approver_id: str,
        after: int,
        want: int,
        views: _ViewCache,
        keep: Callable[[ActionView], bool],
    ) -> list[tuple[int, ActionView]]:
        book = self._get_or_none(HoldBook.create_id(HoldBook.NAME))
        if book is None:
            return []
        found: list[tuple[int, ActionView]] = []
        for sequence, action_id in book.waiting(after, approver_id, employee_id, customer_id):
            view = views.by_id(action_id)
            if keep(view):
                found.append((sequence, view))
                if len(found) == want:
                    break
        return found

    def _load_budget(self, employee_id: str) -> Budget:
        try:
            budget = self.repository.get(budget_id_for(employee_id))
        except AggregateNotFoundError:
            raise budget_not_found(employee_id) from None
        assert isinstance(budget, Budget)
        return budget

    def _get_or_none(self, aggregate_id: UUID, version: int | None = None) -> Any:
        try:
            return self.repository.get(aggregate_id, version=version)
        except AggregateNotFoundError:
            return None

    @staticmethod
    def _check_ids(*, required: bool = True, **ids: str) -> None:
        problems = [p for name, value in ids.items() for p in check_id(value, name, required=required)]
        if problems:
            raise InvalidArgument(problems)

    @staticmethod
    @contextmanager
    def _store_errors() -> Iterator[None]:
        """Turns event-store failures (other than version conflicts) into a retryable Unavailable."""
        try:
            yield
        except IntegrityError:
            raise
        except (PersistenceError, ConnectionPoolClosedError) as error:
            log.warning("store.unavailable", error_type=type(error).__name__, error=str(error))
            raise Unavailable("the event store is unavailable; retry with the same request_id") from error

    def ping(self) -> None:
        """Raises Unavailable unless the event store answers a query."""
        with self._store_errors():
            self.recorder.max_notification_id()


class _PostgresBulkReads:
    """Loads many aggregates in two queries: their latest snapshots, then every event after each one's snapshot
    (or after the version the writer's cache holds, which it brings up to date)."""

    def __init__(self, app: LeewayApplication):
        from psycopg.sql import SQL, Identifier

        self.app = app
        recorder = app.recorder
        snapshots = app.snapshots.recorder if app.snapshots is not None else None
        schema = Identifier(recorder.datastore.schema)  # type: ignore[attr-defined]
        # One index range scan per aggregate (a LATERAL subquery the planner cannot flatten: LIMIT / OFFSET 0).
        # As a plain join, one aggregate with a long history skews the statistics and the planner picks a
        # sequential scan of the whole log for every batch (measured: 47 ms instead of 0.2 ms at 100,000 events).
        self.select_snapshots = (
            SQL(
                "SELECT s.originator_id, s.originator_version, s.topic, s.state FROM unnest(%s::uuid[]) AS v(id) "
                "CROSS JOIN LATERAL (SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
                "WHERE originator_id = v.id ORDER BY originator_version DESC LIMIT 1) s"
            ).format(schema=schema, table=Identifier(snapshots.events_table_name))  # type: ignore[union-attr]
            if snapshots is not None
            else None
        )
        self.select_events = SQL(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state "
            "FROM unnest(%s::uuid[], %s::bigint[]) AS v(id, after) "
            "CROSS JOIN LATERAL (SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = v.id AND originator_version > v.after OFFSET 0) e "
            "ORDER BY e.originator_id, e.originator_version"
        ).format(schema=schema, table=Identifier(recorder.events_table_name))  # type: ignore[attr-defined]

    def load(self, ids: set[UUID], *, never_snapshotted: set[UUID] | frozenset[UUID] = frozenset()) -> dict[UUID, Any]:
        """``never_snapshotted``: ids known to have no snapshots (request records), left out of the first query
        (which is skipped when nothing else needs it)."""
        app = self.app
        found: dict[UUID, Any] = {i: app._write_cache[i] for i in ids if i in app._write_cache}
        rest = [i for i in ids if i not in found]
        after = {i: a.version for i, a in found.items()}
        with app.recorder.datastore.get_connection() as conn, conn.cursor() as cursor:  # type: ignore[attr-defined]
            may_have_snapshots = [i for i in rest if i not in never_snapshotted]
            if may_have_snapshots and self.select_snapshots is not None:
                cursor.execute(self.select_snapshots, [may_have_snapshots], prepare=True)
                for row in cursor.fetchall():
                    snapshot = app.snapshots.mapper.to_domain_event(_stored(row))  # type: ignore[union-attr]
                    found[snapshot.originator_id] = snapshot.mutate(None)
                    after[snapshot.originator_id] = snapshot.originator_version
            for i in rest:
                after.setdefault(i, 0)
            ordered = list(after)
            cursor.execute(self.select_events, [ordered, [after[i] for i in ordered]], prepare=True)
            rows = cursor.fetchall()
        for row in rows:
            event = app.mapper.to_domain_event(_stored(row))
            found[event.originator_id] = event.mutate(found.get(event.originator_id))
        for i in ids:
            found.setdefault(i, None)
        return found


def _stored(row: dict[str, Any]) -> StoredEvent:
    return StoredEvent(
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )


class _Pending:
    """One queued command and, once its batch is done, its outcome."""

    def __init__(
        self, command: Command, actor: str, deadline: float, request_id: str, digest: str, *, checked: bool = False
    ):
        self.command = command
        self.actor = actor
        self.deadline = deadline
        self.request_id = request_id
        self.digest = digest
        #: The writer may take the request as new at first, without looking for its record (see execute).
        self.checked = checked
        self.done = threading.Event()
        self.reset()

    def reset(self) -> None:
        """Forgets a provisional outcome (the batch is decided again)."""
        self.result: dict[str, Any] | None = None
        self.view: Any = None
        self.error: BaseException | None = None
        self.replay_of: RequestRecord | None = None
        #: True if this command's own events were saved (False for replays).
        self.fresh = False

    def finish(self) -> None:
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.reset()
        self.error = error
        self.done.set()


def _reused(request_id: str, method: str) -> AlreadyExists:
    return AlreadyExists(
        f"request_id {request_id!r} was already used for a different request ({method})",
        reason="REQUEST_ID_REUSED",
        metadata={"request_id": request_id, "original_method": method},
    )


class _ViewCache:
    """Action views for one list call: each budget is loaded once for the outcomes of its actions."""

    def __init__(self, app: LeewayApplication, now: datetime):
        self.app = app
        self.now = now
        self.budgets: dict[UUID, Budget] = {}

    def budget(self, budget_id: UUID) -> Budget:
        if budget_id not in self.budgets:
            self.budgets[budget_id] = self.app.repository.get(budget_id)
        return self.budgets[budget_id]

    def of(self, event: Any) -> ActionView:
        budget = self.budget(event.originator_id)
        return action_view(event, budget.outcome(event.originator_version), self.now)

    def by_id(self, action_id: str) -> ActionView:
        parsed = parse_action_id(action_id)
        assert parsed is not None
        return self.of(self.app.event_at(*parsed))


def _state(raw: bytes) -> dict[str, Any]:
    from .audit import parse_state

    try:
        return parse_state(raw)
    except ValueError:
        return {}


@contextmanager
def _holding(locks: list[threading.Lock]) -> Iterator[None]:
    """Holds ``locks`` (already in a global order, so two commands never wait for each other in a circle)."""
    for lock in locks:
        lock.acquire()
    try:
        yield
    finally:
        for lock in reversed(locks):
            lock.release()
