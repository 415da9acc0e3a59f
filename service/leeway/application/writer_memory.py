"""What the group-commit writer remembers between batches: saved aggregates, recent request records, employees'
teams, the index of legacy request records, and (PostgreSQL) which aggregates are current as of the log head after
its last commit."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import EventStore

from ..adapters.storage import SavedPositions
from ..domain.budget import Budget
from .idempotency import LegacyRecords, RequestRecord
from .unit_of_work import WriteSet

#: Aggregates the writer keeps in memory between batches (LEEWAY_WRITE_CACHE_SIZE; 0 turns it off).
DEFAULT_WRITE_CACHE_SIZE = 2_000
#: Request records the writer remembers after saving them (duplicates in flight are answered without a query).
RECENT_REQUESTS = 10_000
#: Employees whose team the writer remembers (a hint for reading ahead: MoveEmployee changes it, and the command
#: itself reads the budget's team).
KNOWN_TEAMS = 100_000


class WriterMemory:
    """The writer's cache. It only ever holds saved state: a failed batch forgets every aggregate it touched."""

    def __init__(self, events: EventStore, load: Any, cache_size: int):  # type: ignore[type-arg]
        self.events = events
        #: Reads one aggregate from the store (None if it does not exist).
        self.load = load
        self.cache_size = cache_size
        self.aggregates: OrderedDict[UUID, Aggregate] = OrderedDict()
        #: Request records saved by this writer, by their request's key (``request_key``).
        self.recent_records: OrderedDict[UUID, RequestRecord] = OrderedDict()
        #: Which legacy request records (saved before request ids were scoped) exist (see Writer.prefetch).
        self.legacy = LegacyRecords()
        self.teams: dict[str, str] = {}
        # PostgreSQL (see Writer.prefetch): the log's head right after the writer's last commit, and which cached
        # aggregates (and which ids of aggregates that did not exist) are current as of it.
        self.log_head: int | None = None
        self.current: set[UUID] = set()
        self.absent: set[UUID] = set()

    def team_of(self, employee_id: str) -> str | None:
        """The team of an employee the writer has seen (None: not known here; the command loads the budget)."""
        return self.teams.get(employee_id)

    def is_current(self, aggregate_id: UUID) -> bool:
        """True if the writer knows this aggregate as it is at ``log_head``: cached, or known not to exist."""
        return aggregate_id in self.absent or (aggregate_id in self.current and aggregate_id in self.aggregates)

    def load_for_write(self, aggregate_id: UUID) -> Any:
        """An aggregate for the writer: from its cache, brought up to date with any events other replicas stored
        since (one query, usually empty), or from the store."""
        cached = self.aggregates.get(aggregate_id)
        if cached is None:
            return self.load(aggregate_id)
        self.aggregates.move_to_end(aggregate_id)
        for event in self.events.get(aggregate_id, gt=cached.version):
            event.mutate(cached)
        return cached

    def forget(self, aggregate_id: UUID) -> None:
        self.aggregates.pop(aggregate_id, None)
        self.current.discard(aggregate_id)

    def forget_all(self, writes: WriteSet) -> None:
        """After a failed batch: nothing it loaded is trusted, nor what the writer knew of the log."""
        for aggregate_id in writes.loaded:
            self.aggregates.pop(aggregate_id, None)
        self.forget_log_head()

    def forget_log_head(self) -> None:
        self.log_head = None
        self.current.clear()
        self.absent.clear()

    def remember(self, writes: WriteSet) -> None:
        """After a committed batch: its aggregates (as saved) and its request records."""
        for aggregate in writes.aggregates():
            if isinstance(aggregate, Budget):
                if len(self.teams) > KNOWN_TEAMS:
                    self.teams.clear()
                self.teams[aggregate.employee_id] = aggregate.team_id
        if self.cache_size > 0:
            for aggregate in writes.aggregates():
                if isinstance(aggregate, RequestRecord):
                    continue
                self.aggregates[aggregate.id] = aggregate
                self.aggregates.move_to_end(aggregate.id)
            while len(self.aggregates) > self.cache_size:
                evicted, _ = self.aggregates.popitem(last=False)
                self.current.discard(evicted)
        for record in writes.records:
            self.recent_records[record.id] = record
        while len(self.recent_records) > RECENT_REQUESTS:
            self.recent_records.popitem(last=False)

    def learn_head(self, writes: WriteSet, check: Any) -> None:
        """After a committed batch: the log's new head, and what the writer now knows to be current as of it.
        Everything the batch loaded is current if the head right before its insert was the head after the
        writer's previous commit (nobody else committed in between: checked by the insert itself when the batch
        skipped reading ahead). Otherwise the writer forgets what it knew and starts again from this head."""
        if check is None or check.head_after is None:
            return
        legacy = self.legacy
        if check.head_before is not None and legacy.covered >= check.head_before:
            # Everything up to the batch's own events was indexed, and they hold no legacy record.
            legacy.covered = check.head_after
        legacy.seen = max(legacy.seen, check.head_after)
        if isinstance(check, SavedPositions):
            return  # SQLite: no head check, no fast path
        certain = check.head_before is not None and check.head_before == self.log_head
        if not certain:
            self.current.clear()
            self.absent.clear()
        self.log_head = check.head_after
        if certain:
            for aggregate_id, aggregate in writes.loaded.items():
                if aggregate is None:
                    self.absent.add(aggregate_id)
                elif not isinstance(aggregate, RequestRecord):
                    self.current.add(aggregate_id)
                    self.absent.discard(aggregate_id)
            if len(self.absent) > self.cache_size:
                self.absent.clear()
