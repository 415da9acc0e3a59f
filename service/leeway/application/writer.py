"""The group-commit writer: one thread decides queued commands in batches against one shared set of aggregates
and saves each batch in one transaction (``LEEWAY_BATCH_MAX`` commands at most; 1 makes batches of one).

A caller's command goes: ``LeewayApplication.execute`` (shape checks) -> ``Writer.submit`` (queue) ->
``Writer.run_batch`` (read ahead, decide each command in order, render its response from memory, save everything,
answer) -> ``Writer.answer`` in the caller's thread (the response, a replay of a stored one, or the error)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import structlog
from eventsourcing.persistence import EventStore, IntegrityError, PersistenceError

from ..adapters.bulk_reads import PostgresBulkReads
from ..adapters.pgrecorder import LogMoved
from ..domain.errors import Conflict, DataLoss, DeadlineExceeded, LeewayError, Unavailable, event_missing
from ..domain.reasons import Reason
from ..runtime import name_os_thread
from .. import tracing
from .idempotency import RequestRecord, check_replay, legacy_answers, legacy_request_id, request_key, reused
from .pending import LoopWake, Pending, finish_all
from .reader import BatchReader, NotInMemory, Reader
from .unit_of_work import StaleBatch, UnitOfWork, WriteSet
from .writer_memory import WriterMemory

if TYPE_CHECKING:
    from .commands import Command

log = structlog.get_logger("leeway.writer")

#: How many times a batch is decided again after losing an optimistic-concurrency race.
MAX_ATTEMPTS = 50
#: Group commit: the most commands decided and saved in one transaction (LEEWAY_BATCH_MAX).
DEFAULT_BATCH_MAX = 128

SHUTTING_DOWN = "the service is shutting down; retry with the same request_id"


class Store(Reader, Protocol):
    """What the writer needs of the application: the event store, the clock and the listeners (LeewayApplication)."""

    events: EventStore  # type: ignore[type-arg]
    recorder: Any
    bulk_reads: PostgresBulkReads | None
    clock: Callable[[], datetime]

    def store_errors(self) -> AbstractContextManager[None]: ...

    def deferring_after_save(self) -> AbstractContextManager[list[Callable[[], None]]]: ...

    def save(self, *objs: Any) -> Any: ...

    def get_or_none(self, aggregate_id: UUID) -> Any: ...

    def tell_commit_listeners(self, command: Command, result: Any) -> None: ...


class Writer:
    """The one write path. ``app`` gives it the store (``save``, ``events``, ``recorder``), the clock, the bulk
    reads (PostgreSQL) and the listeners; the writer owns the queue, its thread and its memory."""

    def __init__(self, app: Store, *, batch_max: int, cache_size: int):
        self.app = app
        self.events = app.events
        self.batch_max = max(1, batch_max)
        self.memory = WriterMemory(app.events, app.get_or_none, cache_size)
        self.queue: deque[Pending] = deque()
        self.queue_ready = threading.Condition()
        #: Held while a batch is decided and saved (tests hold it to make callers queue up).
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.closed = False
        self.batches_committed = 0
        self.batch_conflicts = 0
        #: Batches decided from the writer's memory alone, without reading ahead (PostgreSQL).
        self.read_aheads_skipped = 0

    # ------------------------------------------------------------------ AggregateSource (for the write sets)

    def get_or_none(self, aggregate_id: UUID) -> Any:
        return self.app.get_or_none(aggregate_id)

    def load_for_write(self, aggregate_id: UUID) -> Any:
        return self.memory.load_for_write(aggregate_id)

    def forget_cached(self, aggregate_id: UUID) -> None:
        self.memory.forget(aggregate_id)

    def request_record(self, record_id: UUID) -> RequestRecord | None:
        """A request's record (one query: a record is a single event, never snapshotted)."""
        first = next(iter(self.events.get(record_id, limit=1)), None)
        return first.mutate(None) if first is not None else None  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ callers' side

    def submit(self, command: Command, actor: str, deadline: float) -> Any:
        """Queues a command, waits (blocking this thread) for its batch and returns its response (or raises)."""
        pending = self.enqueue(command, actor, deadline, waited=True)
        pending.done.wait()  # type: ignore[union-attr]
        return self.answer(pending)

    async def submit_async(self, command: Command, actor: str, deadline: float, *, answer_in: Any) -> Any:
        """``submit`` for an asyncio caller: no thread waits. The writer thread completes the caller's future with
        ``loop.call_soon_threadsafe`` (once per batch for all its callers on this loop: ``finish_all``); an answer that needs a read (a replayed request's stored result) is made by
        ``answer_in(function, pending)`` (the front's bounded executor), one already known is made at once."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # A batch's callers on this loop are woken together: one call_soon_threadsafe (finish_all).
        pending = self.enqueue(command, actor, deadline, on_done=LoopWake(loop, future))
        await future
        if pending.error is not None or (pending.replay_of is None and pending.view is not None):
            return self.answer(pending)
        return await answer_in(self.answer, pending)

    def enqueue(
        self, command: Command, actor: str, deadline: float, on_done: Callable[[], None] | None = None, *,
        waited: bool = False,
    ) -> Pending:
        """Queues a command for the writer thread; ``pending.finished`` becomes True, ``pending.done`` is set (with
        ``waited``) and ``on_done`` is called once its batch is done.

        Whether the writer may take the request as new at first, without looking for its record: a generated
        request_id is new; on SQLite every request is (a retry of a request older than the writer's memory of
        recent ones then fails the batch's save on the record's unique key, and the batch is decided again,
        reading the records: a rare, dearer path instead of a read per request). On PostgreSQL the writer reads a
        batch's records with its read-ahead, or skips both (see prefetch)."""
        pending = Pending(command, actor, deadline, checked=self.app.bulk_reads is None, on_done=on_done,
                          waited=waited)
        with self.queue_ready:
            if self.closed:
                raise Unavailable(SHUTTING_DOWN)
            self.queue.append(pending)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="leeway-writer", daemon=True)
                self.thread.start()
            self.queue_ready.notify()
        return pending

    def run_now(self, items: list[Pending]) -> None:
        """Runs ``items`` as one batch in the calling thread (LeewayApplication.execute_batch)."""
        with self.lock:
            self.run_batch(items)

    def answer(self, pending: Pending) -> Any:
        """The caller's side once the writer is done with its command: the response or the exception."""
        if pending.error is not None:
            raise pending.error
        command = pending.command
        if pending.replay_of is not None:
            record = pending.replay_of
            check_replay(record, pending.digest)
            try:
                result = command.result_type.from_record(record.result)
                return command.render(self.app, result) if pending.respond else result
            except DataLoss as error:  # the log lost what the request did: say which request points at it
                raise event_missing(error.metadata["resource_name"], f"request_id {record.request_id!r}") from None
        if pending.fresh:
            self.app.tell_commit_listeners(command, pending.result)
        if pending.view is not None or not pending.respond:
            return pending.view if pending.respond else pending.result
        return command.render(self.app, pending.result)

    # ------------------------------------------------------------------ the writer thread

    def _loop(self) -> None:
        name_os_thread()  # "leeway-writer": its CPU time apart from the gRPC threads' (top -H, make bench)
        while True:
            with self.queue_ready:
                while not self.queue and not self.closed:
                    self.queue_ready.wait()
                if not self.queue:
                    return  # closed and drained
                batch = []
                while self.queue and len(batch) < self.batch_max:
                    batch.append(self.queue.popleft())
            try:
                with self.lock:
                    tracing.run_batch(self, batch)  # a span only while tracing is on
            except BaseException as error:  # noqa: BLE001 - never leave a caller waiting
                log.exception("writer.batch_failed")
                for item in batch:
                    if not item.finished:
                        item.fail(_unavailable(error))

    def close(self) -> None:
        """Stops the writer thread after it has written what is queued (what it cannot, fails UNAVAILABLE)."""
        with self.queue_ready:
            self.closed = True
            self.queue_ready.notify_all()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        with self.queue_ready:
            left = list(self.queue)
            self.queue.clear()
        for item in left:
            item.fail(Unavailable(SHUTTING_DOWN))

    # ------------------------------------------------------------------ one batch

    def run_batch(self, items: list[Pending]) -> None:
        """Decides ``items`` in order on one shared write set and saves everything in one transaction; then
        answers each one (refusals too: a refusal may rest on an earlier command of the batch, so it is only
        given once that command is saved), and only then stores the batch's snapshots and wakes the projections.
        A version conflict (another replica, or a duplicate request_id) decides the batch again from freshly read
        aggregates; a store error fails the batch's callers with UNAVAILABLE and forgets every aggregate it
        touched, so nothing unsaved leaks into the next batch."""
        app, memory = self.app, self.memory
        todo = [item for item in items if not item.finished]
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                now_monotonic = time.monotonic()
                for item in todo:
                    if now_monotonic > item.deadline:
                        item.fail(DeadlineExceeded(
                            "the request ran out of time while retrying; retry with the same request_id"))
                todo = [item for item in todo if not item.finished]
                if not todo:
                    return
            writes = WriteSet(self, cached=memory.cache_size > 0)
            try:
                with app.store_errors():
                    self.prefetch(todo, writes, fresh_records=attempt > 0)
                    self.decide_batch(todo, writes, fresh_records=attempt > 0)
                    changed = writes.changed()
                    check = None
                    after_save: list[Callable[[], None]] = []
                    if changed or writes.records:
                        with self._checking_head(writes.expected_head) as check:
                            with app.deferring_after_save() as after_save:
                                tracing.save(app, changed, writes.records)  # one transaction
                    elif writes.expected_head is not None:
                        self._confirm_head(writes.expected_head)
            except (IntegrityError, StaleBatch):
                memory.forget_all(writes)
                self.batch_conflicts += 1
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                continue
            except BaseException as error:
                memory.forget_all(writes)
                for item in todo:
                    item.fail(_unavailable(error))
                if not isinstance(error, (LeewayError, PersistenceError)):
                    log.exception("writer.batch_error")
                return
            memory.remember(writes)
            memory.learn_head(writes, check)
            self.batches_committed += 1
            finish_all(todo)  # one wake-up per event loop for the whole batch
            for work in after_save:
                work()
            return
        log.warning("batch.retries_exhausted", size=len(todo))
        for item in todo:
            item.fail(Conflict(
                "too many concurrent changes to the same budget; retry with the same request_id",
                reason=Reason.CONCURRENCY_CONFLICT,
            ))

    def decide_batch(self, items: list[Pending], writes: WriteSet, *, fresh_records: bool) -> None:
        """Decides each item in order (provisional outcomes, given once the batch is saved)."""
        recent = self.memory.recent_records
        in_batch: dict[UUID, Pending] = {}
        for item in items:
            item.reset()
            record_id = _key(item)
            first = in_batch.get(record_id)
            if first is not None:
                if first.digest != item.digest:
                    item.error = reused(item.request_id, first.command.method)
                else:
                    item.result, item.view = first.result, first.view
                continue
            earlier = recent.get(record_id)
            # Whether the store was asked for this request's record (or the request is new by construction):
            # a request taken as new without asking may be the retry of one stored long ago.
            looked = not item.command.request_id or earlier is not None
            if earlier is None and (fresh_records or not item.checked):
                earlier = writes.request_record(record_id)
                looked = record_id not in writes.assumed_new
            if earlier is None and item.command.request_id:
                earlier = self._legacy_record(item, writes)
            if earlier is not None:
                item.replay_of = earlier
                continue
            uow = UnitOfWork(writes, item.request_id, item.actor)
            now = self.app.clock()
            try:
                result = item.command.decide(uow, now)
                try:
                    view = item.command.render(BatchReader(writes), result) if item.respond else None
                except NotInMemory:
                    view = None  # rendered from the store once saved (Writer.answer)
            except PersistenceError:
                raise
            except LeewayError as error:
                writes.undo(uow.touched)
                if not looked:
                    # A retry of a request that succeeded long ago is refused when decided again (its own effect
                    # is there now: the budget spent, the action decided). A success would fail the save on the
                    # record's unique key; a refusal saves nothing, so the record is looked for here.
                    stored = self.request_record(record_id)
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
                    result=result.to_record(),
                    at=now,
                    actor=item.actor,
                )
            )
            item.result, item.view, item.fresh = result, view, True
            in_batch[record_id] = item

    def _legacy_record(self, item: Pending, writes: WriteSet) -> RequestRecord | None:
        """The legacy record (saved before request ids were scoped) that answers this request, if there is one:
        read ahead with the batch (PostgreSQL), or read here if the index of legacy records has its id (only
        legacy retries are read), and only if it is this caller's (``legacy_answers``)."""
        index = self.memory.legacy
        if not writes.legacy_read and not index.count:
            return None  # the index covers what the batch may see, and there are none (nor ids to compute)
        legacy_id = legacy_request_id(item.request_id)
        if legacy_id in writes.known_records:
            record = writes.known_records[legacy_id]
        elif legacy_id in index:
            record = writes.request_record(legacy_id)
        else:
            return None
        if record is None or not legacy_answers(record, item.actor, item.command.method):
            return None
        return record

    # ------------------------------------------------------------------ reading ahead (PostgreSQL)

    def prefetch(self, items: list[Pending], writes: WriteSet, *, fresh_records: bool) -> None:
        """Reads ahead, in two queries for the whole batch, what its commands will load (their hints) and the
        request records the writer must look for, legacy ones included (PostgreSQL only; SQLite reads are local
        and cheap). On SQLite, brings the index of legacy request records up to date instead, when the writer's
        last save found that others had stored events since the index's position (one local query)."""
        bulk_reads = self.app.bulk_reads
        memory = self.memory
        if bulk_reads is None:
            legacy = memory.legacy
            if not legacy.covered or legacy.covered < legacy.seen:
                legacy.catch_up(self.app.recorder)  # the first batch, or the writer's last save found others' events
            return
        records: set[UUID] = set()
        #: The request_ids whose legacy record the batch may need.
        legacy_ids: list[str] = []
        for item in items:
            key = _key(item)
            if (fresh_records or not item.checked) and key not in memory.recent_records:
                records.add(key)
                if item.command.request_id:
                    legacy_ids.append(item.request_id)
        hinted = writes.hints([item.command for item in items], memory, bulk_reads)
        for record_id in records:
            writes.known_records[record_id] = None
        if (
            not fresh_records
            and memory.log_head is not None
            and all(map(memory.is_current, hinted))
            and memory.legacy.none_of(legacy_ids, memory.log_head, self.app.recorder)
        ):
            # Single-writer fast path: nothing of the batch's needs reading, as far as the writer knows. Its save
            # checks, under the table lock, that the log's head is still the one after the writer's last commit
            # (no other writer committed since) and fails with LogMoved otherwise: the batch is then decided again,
            # reading ahead. A request record read as absent here, but stored long ago, makes the save fail on
            # its unique key, with the same outcome. A legacy record cannot do that (it has another id): the index
            # of legacy records covers the head (LegacyRecords.none_of), so the batch's are known absent.
            for aggregate_id in hinted:
                writes.preload(aggregate_id, memory.aggregates.get(aggregate_id))
            writes.assumed_new.update(records)
            writes.expected_head = memory.log_head
            self.read_aheads_skipped += 1
            return
        legacy = {legacy_request_id(request_id) for request_id in legacy_ids}
        for record_id in legacy:
            writes.known_records[record_id] = None
        writes.legacy_read = True
        wanted = hinted | records | legacy
        if wanted:
            loaded = bulk_reads.load(wanted, cached=memory.aggregates, never_snapshotted=records | legacy)
            for aggregate_id, aggregate in loaded.items():
                writes.preload(aggregate_id, aggregate)

    def _checking_head(self, expected: int | None) -> Any:
        """The save's head check on PostgreSQL (see LeewayPostgresRecorder.checking_head); elsewhere, where the
        save's events went (HashChainedStorage.reporting_positions: SQLite), for the index of legacy records."""
        checking = getattr(self.app.recorder, "checking_head", None)
        if checking is not None:
            return checking(expected)
        reporting = getattr(self.app, "reporting_positions", None)
        return reporting() if reporting is not None else nullcontext(None)

    def _confirm_head(self, expected: int) -> None:
        """A batch decided without reading ahead that saves nothing (refusals, replays): its outcomes stand only if
        no other writer committed since the writer's last commit."""
        if self.app.recorder.max_notification_id() != expected:  # type: ignore[attr-defined]
            raise LogMoved("the event log moved since the writer's last commit")


def _key(item: Pending) -> UUID:
    """The request's key: its caller, its method and its request_id (a generated request_id is unique anyway)."""
    return request_key(item.actor, item.command.method, item.request_id)


def _unavailable(error: BaseException) -> BaseException:
    return error if isinstance(error, LeewayError) else Unavailable("the write failed; retry with the same request_id")
