"""What a batch of commands loads and changes (``WriteSet``), and what one command of it sees (``UnitOfWork``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import EventStore

from .idempotency import RequestRecord

A = TypeVar("A", bound=Aggregate)


class AggregateSource(Protocol):
    """Where a write set reads aggregates from (the group-commit writer: its cache, then the store)."""

    events: EventStore  # type: ignore[type-arg]

    def get_or_none(self, aggregate_id: UUID) -> Any: ...

    def load_for_write(self, aggregate_id: UUID) -> Any: ...

    def forget_cached(self, aggregate_id: UUID) -> None: ...

    def request_record(self, record_id: UUID) -> RequestRecord | None: ...


class StaleBatch(Exception):
    """An aggregate of the batch changed in the store while the batch was being decided (decide it again)."""


class WriteSet:
    """The aggregates a batch of commands loads and changes, saved together in one transaction.

    Every aggregate is loaded once per batch and shared by the batch's commands in order, so two commands on one
    budget see each other. ``checkpoint`` marks the events triggered so far as accepted; ``undo`` puts every
    aggregate a failed command touched back to its loaded state plus the accepted events (rebuilt from the store,
    never from the dirty object), so a refused command leaves nothing behind for its neighbours."""

    def __init__(self, source: AggregateSource, *, cached: bool = False):
        self.source = source
        self.cached = cached
        self.loaded: dict[UUID, Aggregate | None] = {}
        #: Version of each aggregate as loaded from the store (0: it did not exist).
        self.base_version: dict[UUID, int] = {}
        #: How many of each aggregate's pending events belong to commands that succeeded.
        self.accepted: dict[UUID, int] = {}
        self.records: list[RequestRecord] = []
        #: Request records read ahead for the batch (None: there is none).
        self.known_records: dict[UUID, RequestRecord | None] = {}
        #: Stored events read ahead for the batch, or read once by ``event_at``, by (aggregate id, version): a stored
        #: event never changes, so the batch's commands (and their responses) share one read of it.
        self.known_events: dict[tuple[UUID, int], Any] = {}
        #: Request records taken as absent without reading (see Writer.prefetch).
        self.assumed_new: set[UUID] = set()
        #: The legacy request records the batch may need were read ahead (in known_records): PostgreSQL's read-ahead.
        self.legacy_read = False
        #: Aggregate ids in the order commands first used them (the order their events are saved in).
        self.order: dict[UUID, None] = {}
        #: The log head the batch was decided at without reading ahead (see Writer.prefetch): its save is checked
        #: against it. None: the batch read what it uses from the store.
        self.expected_head: int | None = None

    def preload(self, aggregate_id: UUID, aggregate: Aggregate | None) -> None:
        """An aggregate read ahead for the whole batch."""
        if isinstance(aggregate, RequestRecord) or aggregate_id in self.known_records:
            self.known_records[aggregate_id] = aggregate  # type: ignore[assignment]
        elif aggregate_id not in self.loaded:
            self._load(aggregate_id, aggregate)

    def _load(self, aggregate_id: UUID, aggregate: Aggregate | None) -> None:
        self.loaded[aggregate_id] = aggregate
        self.base_version[aggregate_id] = aggregate.version if aggregate is not None else 0
        self.accepted[aggregate_id] = 0

    def hints(self, commands: list[Any], teams: Any, bulk_reads: Any) -> set[UUID]:
        """The aggregates the commands will load (``Command.prefetch``), after reading ahead, in one query, the
        stored events they will read (the actions that decisions, reversals and wins name) and adding the
        aggregates those name (``Command.prefetch_named``: the action's team and customer ledgers)."""
        wanted = {pair for command in commands for pair in command.prefetch_events()}
        if wanted:
            self.known_events.update(bulk_reads.load_events(wanted))
        hinted: set[UUID] = set()
        for command in commands:
            hinted.update(command.prefetch(teams))
            if wanted:
                hinted.update(command.prefetch_named(self.known_events))
        return hinted

    def request_record(self, record_id: UUID) -> RequestRecord | None:
        if record_id in self.known_records:
            return self.known_records[record_id]
        return self.source.request_record(record_id)

    def get(self, aggregate_id: UUID) -> Any:
        self.order.setdefault(aggregate_id)
        if aggregate_id not in self.loaded:
            source = self.source
            self._load(
                aggregate_id, source.load_for_write(aggregate_id) if self.cached else source.get_or_none(aggregate_id)
            )
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

    @staticmethod
    def committed_version(aggregate: Aggregate) -> int:
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
            self.source.forget_cached(aggregate_id)
            rebuilt: Any = None
            if base:
                rebuilt = self.source.get_or_none(aggregate_id)
                if rebuilt is None or rebuilt.version != base:
                    # Another writer changed it since the batch loaded it: the save would conflict anyway.
                    raise StaleBatch()
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
        key = (aggregate_id, version)
        if key not in self.known_events:
            self.known_events[key] = next(iter(self.source.events.get(aggregate_id, gt=version - 1, lte=version)), None)
        return self.known_events[key]

    def history(self, aggregate: Aggregate) -> list[Any]:
        """Every event of an aggregate: the stored ones and those pending in this batch."""
        stored = list(self.source.events.get(aggregate.id, lte=self.committed_version(aggregate)))
        return stored + list(aggregate.pending_events)

    def aggregates(self) -> list[Aggregate]:
        return [a for a in self.loaded.values() if a is not None]


class UnitOfWork:
    """What one command sees: the aggregates of its write set (shared with the other commands of its batch)."""

    def __init__(self, writes: WriteSet, request_id: str, actor: str = ""):
        self.writes = writes
        self.request_id = request_id
        #: The authenticated principal the command runs for (recorded in its events).
        self.actor = actor
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

    def event_at(self, aggregate_id: UUID, version: int) -> Any:
        return self.writes.event_at(aggregate_id, version)

    def history(self, aggregate: Aggregate) -> list[Any]:
        return self.writes.history(aggregate)
