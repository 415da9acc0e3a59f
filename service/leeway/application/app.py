"""The Leeway application: construction, the one write entry point (``execute``), and the jobs it is made of.

- ``HashChainedStorage`` (adapters/storage.py): how events are stored (hash chain, snapshots, transcodings).
- ``Writer`` (writer.py): the group-commit writer every command goes through.
- ``Queries`` (queries.py) and ``AuditLog`` (audit_log.py): the reads.

gRPC servicers only translate to and from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import structlog
from eventsourcing.postgres import PostgresAggregateRecorder

from ..adapters.bulk_reads import PostgresBulkReads
from ..adapters.keystore import MasterKeySource
from ..adapters.storage import HashChainedStorage
from ..adapters.storegate import check_idle_connections, table_creation_lock
from ..domain.approvals import HoldBook
from ..domain.budget import Budget
from ..domain.directory import Directory, TeamRoster
from ..domain.errors import InvalidArgument, LeewayError, Unavailable
from ..domain.ledgers import CustomerLedger, CustomerLedgerIds, OrgLimits, TeamLedger
from ..domain.personal import erased_identifier
from .audit_log import AuditLog
from .commands import Command, ExpireAction
from .conventions import Conventions
from .customers import scan_customer_spellings
from .queries import Queries
from .writer import DEFAULT_BATCH_MAX, SHUTTING_DOWN, Pending, Writer
from .writer_memory import DEFAULT_WRITE_CACHE_SIZE

log = structlog.get_logger("leeway.application")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class LeewayApplication(AuditLog, Queries, HashChainedStorage):
    """Budgets, actions and the indexes that find them, on SQLite or PostgreSQL."""

    name = "Leeway"
    # Long histories replay from a snapshot; the index aggregates hold only counters, so theirs are tiny. A budget
    # read replays half an interval on average (~0.04 ms of CPU per event): 25 keeps GetBudget's CPU at ~1.9 ms
    # where 100 cost ~3.4 ms, for one snapshot row per 25 actions of an employee.
    snapshotting_intervals = {
        Budget: 25,
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
        conventions: Conventions | None = None,
        master_key: MasterKeySource | None = None,
    ):
        with self.store_errors(), table_creation_lock(env):
            super().__init__(env, master_key=master_key)
        self.clock = clock
        if self.keystore is not None:
            self.keystore.clock = clock
        #: How this deployment reads requests (customer ids, occur_time's horizon).
        self.conventions = conventions or Conventions()
        keystore = self.keystore
        if keystore is not None:  # erased ids read as their pseudonym: what was counted under them still counts;
            # customers' new ledgers get keyed ids (README: Personal data)
            self.conventions = replace(
                self.conventions,
                erased_spelling=lambda kind, value: erased_identifier(keystore.pseudonym(kind, value)),
                customer_ledgers=CustomerLedgerIds(keystore.customer_ledger_id),
            )
        self.employee_cache = {}
        #: Called with (command, result) after each command that changed something (not for replays);
        #: used for metrics. A failing listener is logged and never fails the command.
        self.commit_listeners: list[Callable[[Command, Any], None]] = []
        self.bulk_reads: PostgresBulkReads | None = None
        if isinstance(self.recorder, PostgresAggregateRecorder):
            self.bulk_reads = PostgresBulkReads(self.events, self.snapshots)
            recorders = (self.recorder, getattr(self.snapshots, "recorder", None))
            for datastore in {id(r.datastore): r.datastore for r in recorders if r}.values():
                check_idle_connections(datastore)
        self.writer = Writer(
            self,
            batch_max=batch_max if batch_max is not None else int(self.env.get("BATCH_MAX") or DEFAULT_BATCH_MAX),
            cache_size=(
                write_cache_size
                if write_cache_size is not None
                else int(self.env.get("WRITE_CACHE_SIZE") or DEFAULT_WRITE_CACHE_SIZE)
            ),
        )

    # ------------------------------------------------------------------ the one write entry point

    def execute(self, command: Command, *, actor: str = "", deadline: float = float("inf")) -> Any:
        """Validates, decides and saves a command exactly once per request_id; returns its response.

        ``actor`` is the authenticated principal (recorded in the events); ``deadline`` a time.monotonic() after
        which no further attempt is made (DEADLINE_EXCEEDED). The command is queued for the writer thread, which
        decides all pending commands against one shared set of aggregates and saves them in one transaction."""
        return self.writer.submit(self._admit(command), actor, deadline)

    async def execute_async(
        self, command: Command, *, actor: str = "", deadline: float = float("inf"), answer_in: Any
    ) -> Any:
        """``execute`` for an asyncio caller (the gRPC front): the caller's task awaits a future that the writer
        thread completes; no thread waits. ``answer_in(function, *args)`` runs a blocking read (the answer to a
        replayed request) off the event loop."""
        return await self.writer.submit_async(self._admit(command), actor, deadline, answer_in=answer_in)

    def _admit(self, command: Command) -> Command:
        """The command as this deployment reads it (``Command.admitted``), if its shape is valid."""
        command = command.admitted(self.conventions)
        problems = command.validate()
        if problems:
            raise InvalidArgument(problems)
        if self.writer.closed:
            raise Unavailable(SHUTTING_DOWN)
        return command

    def execute_batch(self, commands: list[Command], *, actor: str = "", respond: bool = True) -> list[Any]:
        """Runs ``commands`` as ONE batch (one transaction), in order, in the calling thread; returns each one's
        response or the exception it failed with. The writer thread does the same with what it dequeues; tests
        use this to put chosen commands into one batch. ``respond=False``: each one's result instead of its
        response (nothing is rendered: a bulk load such as ``make bench-scale``'s, which needs no views)."""
        outcomes: list[Any] = []
        for command in commands:
            command = command.admitted(self.conventions)
            problems = command.validate()
            outcomes.append(InvalidArgument(problems) if problems else Pending(command, actor, float("inf"), respond=respond))
        self.writer.run_now([outcome for outcome in outcomes if isinstance(outcome, Pending)])
        answers = []
        for outcome in outcomes:
            if isinstance(outcome, Pending):
                try:
                    answers.append(self.writer.answer(outcome))
                except Exception as error:  # noqa: BLE001 - handed back to the test
                    answers.append(error)
            else:
                answers.append(outcome)
        return answers

    def tell_commit_listeners(self, command: Command, result: Any) -> None:
        for listener in self.commit_listeners:
            try:
                listener(command, result)
            except Exception:  # noqa: BLE001 - observers must never fail a committed command
                log.exception("commit_listener.failed", method=command.method)

    def expire_due(self, limit: int = 100) -> int:
        """Expires pending actions whose approval timeout has passed; returns how many. Safe on many replicas:
        each expiry is a command with the request_id ``expire:<action_id>``."""
        with self.store_errors():
            book = self.get_or_none(HoldBook.the_id())
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

    def scan_customer_spellings(self) -> int:
        """Notes customer ids stored under older spellings than their keys (``customers.py``); returns how many keys
        got new ones."""
        return scan_customer_spellings(self)

    def close(self) -> None:
        """Stops the writer after it has written what is queued, then closes the store."""
        self.writer.close()
        super().close()
