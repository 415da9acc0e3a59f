"""How Leeway stores events through the eventsourcing library: a hash chain per aggregate, snapshots kept out of
the audited log and stored after the callers have their answers, Leeway's transcodings, and store failures turned
into a retryable UNAVAILABLE. ``HashChainedStorage`` is mixed into ``LeewayApplication`` (an eventsourcing
``Application``)."""

from __future__ import annotations

import inspect
import threading
from operator import itemgetter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.utils import Environment
from eventsourcing.application import Application, ProcessingEvent, Repository
from eventsourcing.domain import (
    Aggregate, CanMutateAggregate, DecoratedFuncCaller, OriginatorIDError, OriginatorVersionError, decorated_funcs,
)
from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    EventStore,
    InfrastructureFactory,
    IntegrityError,
    JSONTranscoder,
    Mapper,
    PersistenceError,
    StoredEvent,
)

from ..domain.errors import Unavailable
from .hash_chain import ChainedMapper, parse_state
from .keystore import KeyStore, MasterKeySource, key_store_in_use
from .pii import Sealer
from .snapshot_seal import SealedSnapshotStore, SnapshotCipher
from .storegate import tune_factory
from .transcodings import MoneyAsDict, PolicyAsDict

log = structlog.get_logger("leeway.storage")


@contextmanager
def store_errors() -> Iterator[None]:
    """Turns event-store failures (other than version conflicts) into a retryable Unavailable."""
    try:
        yield
    except IntegrityError:
        raise
    except (PersistenceError, ConnectionPoolClosedError) as error:
        log.warning("store.unavailable", error_type=type(error).__name__, error=str(error))
        raise Unavailable("the event store is unavailable; retry with the same request_id") from error


def project_events(aggregate: Any, domain_events: Any) -> Any:
    """The library's ``project_aggregate`` without its per-event ``isinstance(event, CanMutateProtocol)``
    assertion: a runtime-checkable Protocol check walks the protocol's attributes every time, which was a quarter
    of a budget read's CPU (measured with cProfile on a read replaying 50 events). Every stored event is one of
    the library's domain events, which all have ``mutate``."""
    for domain_event in domain_events:
        aggregate = advance(domain_event, aggregate)
    return aggregate


#: Per event class: the method its ``@event`` decorated, that method's parameters after the aggregate, and a getter
#: of their values from an event's attributes (None if a parameter can only be passed by keyword); or None where
#: the library's own ``mutate`` must run (a created event, or a class that overrides ``mutate``/``apply``).
_APPLIERS: dict[type, tuple[Callable[..., Any], tuple[str, ...], Callable[[dict[str, Any]], Any] | None] | None] = {}


def _applier(cls: type) -> tuple[Callable[..., Any], tuple[str, ...], Callable[[dict[str, Any]], Any] | None] | None:
    applier = None
    func = decorated_funcs.get(cls)
    if (
        func is not None
        and cls.mutate is CanMutateAggregate.mutate  # type: ignore[attr-defined]
        and cls.apply is DecoratedFuncCaller.apply  # type: ignore[attr-defined]
        and cls._as_dict is CanMutateAggregate._as_dict  # type: ignore[attr-defined]
        and _next_apply(cls) is CanMutateAggregate.apply
    ):
        parameters = list(inspect.signature(func).parameters.values())[1:]  # after the aggregate's own
        names = tuple(p.name for p in parameters)
        positional = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)
        getter = None
        if positional and len(names) > 1:
            getter = itemgetter(*names)
        elif positional and len(names) == 1:
            getter = (lambda state, name=names[0]: (state[name],))
        elif positional:
            getter = (lambda state: ())
        applier = (func, names, getter)
    _APPLIERS[cls] = applier
    return applier


def _next_apply(cls: type) -> Any:
    """The ``apply`` that ``DecoratedFuncCaller.apply``'s ``super().apply(aggregate)`` calls for ``cls``."""
    mro = cls.__mro__
    for klass in mro[mro.index(DecoratedFuncCaller) + 1:]:
        if "apply" in vars(klass):
            return vars(klass)["apply"]
    return None


def advance(event: Any, aggregate: Any) -> Any:
    """``event.mutate(aggregate)``: the same steps without the library's per-event overhead (its ``apply`` copies
    the event's attributes and filters them by the decorated method's parameters with a comprehension over every
    attribute: a third of advancing a budget in a projection rebuild). Here the method gets the same arguments,
    those of its parameters the event has, by position when it has them all. Events whose class does anything else
    (a created event, an overridden ``mutate`` or ``apply``) go through ``mutate`` itself."""
    cls = type(event)
    applier = _APPLIERS[cls] if cls in _APPLIERS else _applier(cls)
    if applier is None or aggregate is None:
        return event.mutate(aggregate)
    state = event.__dict__
    if state["originator_id"] != aggregate.id:
        raise OriginatorIDError(state["originator_id"], aggregate.id)
    version = state["originator_version"]
    next_version = aggregate.version + 1
    if version != next_version:
        raise OriginatorVersionError(version, next_version)
    func, names, getter = applier
    try:
        values = getter(state) if getter is not None else None
    except KeyError:  # an older event without a newer parameter: the method's default, as the library does
        values = None
    if values is not None:
        func(aggregate, *values)
    else:
        func(aggregate, **{name: state[name] for name in names if name in state})
    aggregate.version = version
    aggregate.modified_on = state["timestamp"]
    return aggregate


class FastRepository(Repository[UUID]):
    """The library's repository, replaying with ``project_events``."""

    def get(self, aggregate_id: UUID, *, version: int | None = None, projector_func: Any = project_events,
            fastforward_skipping: bool = False, deepcopy_from_cache: bool = True) -> Any:
        return super().get(aggregate_id, version=version, projector_func=projector_func,
                           fastforward_skipping=fastforward_skipping, deepcopy_from_cache=deepcopy_from_cache)


@dataclass
class SavedPositions:
    """Where the saves of one ``reporting_positions`` block went in the log: the head right before their first
    event and their last event's notification id. (SQLite numbers a save's events consecutively after the head,
    under its write lock, so the first one's id tells the head before it.)"""

    head_before: int | None = None
    head_after: int | None = None


class HashChainedStorage(Application[UUID]):
    """The storage half of LeewayApplication."""

    #: Called after every save that stored events (once per group-commit batch): wakes the projections.
    save_listeners: list[Callable[[], None]]

    #: The data keys of crypto-shredding (issue 22); None: personal fields are stored as sent (the format of logs
    #: written before the feature, which tests/integration/test_golden_log.py pins).
    keystore: KeyStore | None = None

    def __init__(self, env: dict[str, str] | None = None, *, master_key: MasterKeySource | None = None):
        self.save_listeners = []
        self._save_local = threading.local()
        self.sealer = Sealer(self._stored_state)
        super().__init__(env)
        if master_key is not None:
            datastore = getattr(self.recorder, "datastore", None)
            sqlite = type(self.recorder).__module__.startswith("eventsourcing.sqlite")
            self.keystore = KeyStore(datastore, master_key, sqlite=sqlite)
            self.sealer.keys = self.keystore

    store_errors = staticmethod(store_errors)

    def construct_factory(self, env: Environment) -> InfrastructureFactory:  # type: ignore[type-arg]
        return tune_factory(super().construct_factory(env), env)

    def key_store_found(self) -> bool:
        """Whether this database has a key store (used with a master key before), whether or not this application
        was given its master key."""
        datastore = getattr(self.recorder, "datastore", None)
        return key_store_in_use(datastore, sqlite=type(self.recorder).__module__.startswith("eventsourcing.sqlite"))

    def construct_mapper(self) -> Mapper:  # type: ignore[type-arg]
        return ChainedMapper(
            transcoder=self.construct_transcoder(), read_previous=self.stored_event, sealer=self.sealer
        )

    def _stored_state(self, aggregate_id: UUID, version: int) -> dict[str, Any] | None:
        stored = self.stored_event(aggregate_id, version)
        return None if stored is None else parse_state(stored.state)

    def construct_repository(self) -> Repository[UUID]:
        # No aggregate cache (the writer keeps its own; reads must see what other replicas committed).
        return FastRepository(event_store=self.events, snapshot_store=self.snapshots)

    def construct_snapshot_store(self) -> EventStore:  # type: ignore[type-arg]
        # Snapshots are a cache, not part of the audited log: stored without a chain; sealed whole with a key store
        # (``snapshot_seal.py``: ``self.keystore`` is read when a snapshot is written or read, it is set later).
        mapper = self.factory.mapper(transcoder=self.construct_transcoder())
        if mapper.cipher is None:
            mapper.cipher = SnapshotCipher(lambda: self.keystore)  # type: ignore[assignment]
        return SealedSnapshotStore(mapper=mapper, recorder=self.factory.aggregate_recorder(purpose="snapshots"))

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(PolicyAsDict())
        transcoder.register(MoneyAsDict())

    def stored_event(self, aggregate_id: UUID, version: int) -> StoredEvent | None:
        """One stored event as it is in the table (None if there is none)."""
        found = self.recorder.select_events(aggregate_id, gt=version - 1, lte=version)  # type: ignore[attr-defined]
        return found[0] if found else None

    def ping(self) -> None:
        """Raises Unavailable unless the event store answers a query."""
        with store_errors():
            self.recorder.max_notification_id()  # type: ignore[attr-defined]

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
            positions = getattr(self._save_local, "positions", None)
            if positions is not None:
                first, last = recordings[0].notification.id, recordings[-1].notification.id
                if positions.head_after is None:
                    positions.head_before = first - 1
                elif positions.head_after != first - 1:
                    positions.head_before = None  # something else was stored between two saves of the block
                positions.head_after = last
            self._after_save(self._tell_save_listeners)
        return recordings

    @contextmanager
    def reporting_positions(self) -> Iterator[SavedPositions]:
        """Saves by this thread inside the block report where their events went in the yielded SavedPositions
        (the group-commit writer on SQLite: its index of legacy request records moves past its own commits)."""
        positions = SavedPositions()
        self._save_local.positions = positions
        try:
            yield positions
        finally:
            self._save_local.positions = None

    def _tell_save_listeners(self) -> None:
        for listener in self.save_listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener never fails a save that committed
                log.exception("save_listener.failed")

    @contextmanager
    def deferring_after_save(self) -> Iterator[list[Callable[[], None]]]:
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
