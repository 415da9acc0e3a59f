"""The Leeway application: owns every command and query. gRPC servicers only translate to and from it."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
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
    Unavailable,
)
from ..domain.indexes import CustomerLedger, Directory, RequestRecord, TeamRoster
from ..domain.limits import HoldBook, OrgLimits, TeamLedger
from ..domain.policy import ActionKind
from ..domain.tally import Cap, CapUsage
from ..domain.validation import check_id
from . import paging
from .audit import ChainedMapper, Verification, event_type, plain, records_from_notifications, verify
from .commands import Command, ExpireAction, RecordAction, fingerprint
from .trail import TrailEntry, action_entries, budget_trail
from .transcodings import MoneyAsDict, PolicyAsDict

log = structlog.get_logger("leeway.application")

T = TypeVar("T")
A = TypeVar("A", bound=Aggregate)

#: How many times a command is retried after losing an optimistic-concurrency race.
MAX_ATTEMPTS = 50
#: Events read per round trip while scanning a history for a filtered list.
SCAN_CHUNK = 500


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


class UnitOfWork:
    """The aggregates one command loads and changes; saved together in one transaction."""

    def __init__(self, app: LeewayApplication, request_id: str, actor: str = ""):
        self.app = app
        self.request_id = request_id
        #: The authenticated principal the command runs for (recorded in its events).
        self.actor = actor
        self._loaded: dict[UUID, Aggregate | None] = {}

    def get(self, aggregate_id: UUID) -> Any:
        if aggregate_id not in self._loaded:
            try:
                self._loaded[aggregate_id] = self.app.repository.get(aggregate_id)
            except AggregateNotFoundError:
                self._loaded[aggregate_id] = None
        return self._loaded[aggregate_id]

    def add(self, aggregate: Aggregate) -> None:
        self._loaded[aggregate.id] = aggregate

    def get_or_create(self, aggregate_id: UUID, create: Callable[[], A]) -> A:
        existing = self.get(aggregate_id)
        if existing is None:
            existing = create()
            assert existing.id == aggregate_id
            self.add(existing)
        return existing  # type: ignore[no-any-return]

    def changed(self) -> list[Aggregate]:
        return [a for a in self._loaded.values() if a is not None and a.pending_events]


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

    def __init__(self, env: dict[str, str] | None = None, *, clock: Callable[[], datetime] = utcnow):
        with self._store_errors():
            super().__init__(env)
        self.clock = clock
        self._employee_cache: dict[UUID, str] = {}
        self._teams: dict[str, str] = {}
        self._stripes = [threading.Lock() for _ in range(1024)]
        #: Called with (command, result) after each command that changed something (not for replays);
        #: used for metrics. A failing listener is logged and never fails the command.
        self.commit_listeners: list[Callable[[Command, dict[str, Any]], None]] = []

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
            recordings = super().save(*objs, **kwargs)
        except BaseException:
            mapper.discard()
            raise
        mapper.commit()
        return recordings

    def verify_integrity(self, employee_id: str = "") -> Verification:
        """Recomputes the hash chain of every stored event (or of one employee's budget)."""
        if employee_id:
            self._check_ids(employee_id=employee_id)
        with self._store_errors():
            if employee_id:
                # Only check that the budget exists: rebuilding it would fail on the very damage we look for.
                budget_id = budget_id_for(employee_id)
                if not self.recorder.select_events(budget_id, limit=1):
                    raise NotFound(
                        f"employee {employee_id} has no budget",
                        reason="BUDGET_NOT_FOUND",
                        resource_type="leeway.v1.Budget",
                        resource_name=f"budgets/{employee_id}",
                    )
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

    #: The most actions a customer's trail gathers (it is sorted by time as a whole).
    MAX_TRAIL_ACTIONS = 10_000

    def audit_trail(self, employee_id: str, customer_id: str, page_size: int, page_token: str) -> Page[TrailEntry]:
        """A budget's events, or everything done for a customer, oldest first, as sentences."""
        if bool(employee_id) == bool(customer_id):
            message = "give exactly one of employee_id and customer_id"
            raise InvalidArgument([FieldViolation("employee_id", message), FieldViolation("customer_id", message)])
        self._check_ids(employee_id=employee_id, customer_id=customer_id, required=False)
        size = paging.page_size(page_size)
        filters = {"employee_id": employee_id, "customer_id": customer_id}
        after = paging.decode_token(page_token, "trail", filters)
        views = _ViewCache(self, self.clock())
        with self._store_errors():
            if employee_id:
                budget_id = self._load_budget(employee_id).id
                entries: list[tuple[int, TrailEntry]] = []
                position = after
                while len(entries) <= size:
                    chunk = list(self.events.get(budget_id, gt=position, limit=SCAN_CHUNK))
                    for event in chunk:
                        for entry in budget_trail(
                            [event], employee_id, lambda v: self.event_at(budget_id, v), views.of
                        ):
                            entries.append((event.originator_version, entry))
                    if len(chunk) < SCAN_CHUNK:
                        break
                    position = chunk[-1].originator_version
            else:
                all_entries: list[TrailEntry] = []
                ledger_id = CustomerLedger.create_id(customer_id)
                noted = [e for e in self.events.get(ledger_id) if isinstance(e, CustomerLedger.ActionNoted)]
                for event in noted[: self.MAX_TRAIL_ACTIONS]:
                    all_entries += action_entries(views.by_id(event.action_id))
                all_entries.sort(key=lambda e: e.time)
                entries = [(index, entry) for index, entry in enumerate(all_entries, 1) if index > after]
        # Each budget event gives at most one entry, so its version is the entry's position.
        page = entries[:size]
        token = paging.encode_token("trail", filters, page[-1][0]) if len(entries) > size else ""
        return Page([entry for _, entry in page], token)

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
        which no further attempt is made (DEADLINE_EXCEEDED)."""
        problems = command.validate()
        if problems:
            raise InvalidArgument(problems)
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
            raise AlreadyExists(
                f"request_id {record.request_id!r} was already used for a different request ({record.method})",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": record.request_id, "original_method": record.method},
            )
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
                raise NotFound(
                    f"employee {employee_id} had no budget at {as_of.isoformat()}",
                    reason="BUDGET_NOT_FOUND",
                    resource_type="leeway.v1.Budget",
                    resource_name=f"budgets/{employee_id}",
                )
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
            raise NotFound(
                f"employee {employee_id} has no budget",
                reason="BUDGET_NOT_FOUND",
                resource_type="leeway.v1.Budget",
                resource_name=f"budgets/{employee_id}",
            ) from None
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
        except PersistenceError as error:
            log.warning("store.unavailable", error_type=type(error).__name__, error=str(error))
            raise Unavailable("the event store is unavailable; retry with the same request_id") from error

    def ping(self) -> None:
        """Raises Unavailable unless the event store answers a query."""
        with self._store_errors():
            self.recorder.max_notification_id()


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
