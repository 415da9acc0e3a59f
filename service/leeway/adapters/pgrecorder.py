"""The PostgreSQL event recorder, with a cheaper insert.

The library's recorder inserts a batch in a pipelined transaction of five statements (``SET LOCAL lock_timeout``,
``LOCK TABLE ... IN EXCLUSIVE MODE``, ``NOTIFY``, the insert, ``COMMIT``), and sends the events as one array of a
composite type, which psycopg dumps in text format in pure Python (about 45 µs of CPU per event, the largest
single cost of a group-commit save). Driving that pipeline from Python was the next largest.

This recorder does the same work in **one statement**: a PL/pgSQL function, ``<events table>_insert_checked``
(created with the tables, see ``sql_create_statements``), that sets the lock timeout, takes the same EXCLUSIVE
table lock, notifies the same channel and inserts four parallel arrays (sent in binary format: about 3 µs per
event) with ``unnest`` in array order, returning the notification ids. Called in autocommit mode, the statement
is its own transaction, so the lock is held until the commit exactly as before: transactions that insert events
are serialized and commit in notification-id order, and readers tailing the log never pass over a gap that a
slower transaction fills later (the reason the library takes the lock; it is **not** the library's
``POSTGRES_ENABLE_DB_FUNCTIONS`` function, which takes no lock).

**The head check (the group-commit writer).** Under the lock, before inserting, the function also reads the
log's head (its highest notification id) and returns it with the new ids; if the caller named the head it
expected and the log has moved past it (another writer committed since), it inserts nothing and fails (SQLSTATE
``LW409``, raised here as ``LogMoved``, a kind of ``IntegrityError``). The writer uses it to know when its cache
of aggregates is current without reading the store first (see ``Writer.prefetch`` in application/writer.py);
``checking_head`` names the expected head for the calling thread's inserts. (Releases before this one created a
function without the check, ``<events table>_insert_locked``; it is left alone and no longer used.)

A database whose tables were created by an older release (``LEEWAY_CREATE_TABLES=false`` and no ``leeway
migrate`` since) has no such function: the first insert notices, logs ``recorder.insert_function_missing`` once,
and every insert takes the library's pipelined transaction (with the binary arrays) from then on.

Selected through the library's ``APPLICATION_RECORDER_TOPIC`` setting (see settings.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg.errors
import structlog
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, ProgrammingError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Identifier

log = structlog.get_logger("leeway.application")

#: The SQLSTATE the checked insert fails with when the log moved past the head its caller expected.
LOG_MOVED_SQLSTATE = "LW409"


class LogMoved(IntegrityError):
    """A checked insert found that other events were stored since the head its caller expected: what the caller
    decided may rest on stale state. Nothing was inserted."""


@dataclass
class HeadCheck:
    """One ``checking_head`` block: what the caller expects, and what the checked insert found."""

    #: The head the caller holds as current (None: no check, only report the head).
    expected: int | None
    #: The log's head right before the insert, read under the table lock (0: the log was empty).
    head_before: int | None = None
    #: The last notification id inserted: the head right after the commit.
    head_after: int | None = None
    #: Checked inserts made in the block (the writer makes one per save).
    inserts: int = 0


class LeewayPostgresRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        schema = Identifier(self.datastore.schema)
        table = Identifier(self.events_table_name)
        id_type = Identifier(self.datastore.originator_id_type)
        self.insert_arrays_statement = SQL(
            "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version, topic, state "
            "FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[]) "
            "AS e(originator_id, originator_version, topic, state) "
            "RETURNING notification_id"
        ).format(schema=schema, table=table, id_type=id_type)

        self.insert_function_name = f"{self.events_table_name}_insert_checked"
        self.check_identifier_length(self.insert_function_name)
        function = Identifier(self.insert_function_name)
        self.create_insert_function_statement = SQL(
            "CREATE OR REPLACE FUNCTION {schema}.{function}("
            "ids {id_type}[], versions bigint[], topics text[], states bytea[], expected bigint) "
            "RETURNS TABLE(n bigint, h bigint) LANGUAGE plpgsql AS $BODY$ "
            "DECLARE head bigint; "
            "BEGIN "
            "SET LOCAL lock_timeout = '{lock_timeout}s'; "
            "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
            "SELECT coalesce(max(x.notification_id), 0) INTO head FROM {schema}.{table} AS x; "
            "IF expected IS NOT NULL AND head <> expected THEN "
            "RAISE EXCEPTION 'the event log moved: its head is %, the writer expected %', head, expected "
            "USING ERRCODE = '{sqlstate}'; "
            "END IF; "
            "NOTIFY {channel}; "
            "RETURN QUERY WITH inserted AS ("
            "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state) "
            "SELECT e.i, e.v, e.t, e.s FROM unnest(ids, versions, topics, states) AS e(i, v, t, s) "
            "RETURNING t.notification_id) "
            "SELECT inserted.notification_id, head FROM inserted ORDER BY 1; "
            "END; $BODY$"
        ).format(
            schema=schema,
            function=function,
            id_type=id_type,
            table=table,
            lock_timeout=self.datastore.lock_timeout,
            sqlstate=SQL(LOG_MOVED_SQLSTATE),
            channel=Identifier(self.channel_name),
        )
        self.sql_create_statements.append(self.create_insert_function_statement)
        self.call_insert_function_statement = SQL(
            "SELECT n, h FROM {schema}.{function}(%b, %b, %b, %b, %b::bigint) AS r(n, h)"
        ).format(schema=schema, function=function)
        #: False once an insert found no function (tables from an older release): the pipelined path from then on.
        self.insert_function_available = True
        self._local = threading.local()

    @contextmanager
    def checking_head(self, expected: int | None) -> Iterator[HeadCheck]:
        """Inserts by the calling thread inside the block report the log's head before and after them in the
        yielded HeadCheck; with ``expected``, they fail with LogMoved (inserting nothing) unless the head is still
        ``expected``. Without the function (tables from an older release) nothing is reported, and an insert
        with ``expected`` fails with LogMoved: a check that cannot be made is never skipped silently."""
        check = HeadCheck(expected)
        self._local.check = check
        try:
            yield check
        finally:
            self._local.check = None

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        check: HeadCheck | None = getattr(self._local, "check", None)
        if stored_events and self.insert_function_available:
            try:
                return self._insert_in_one_statement(stored_events, check if check is not None else HeadCheck(None))
            except ProgrammingError as error:
                if not isinstance(error.__cause__, psycopg.errors.UndefinedFunction):
                    raise
                self.insert_function_available = False
                log.warning(
                    "recorder.insert_function_missing",
                    function=f"{self.datastore.schema}.{self.insert_function_name}",
                    message="the event store's tables predate this release: run `leeway migrate` (or start once "
                    "with LEEWAY_CREATE_TABLES=true); inserting through the library's pipelined transaction, and "
                    "the group-commit writer reads ahead before every batch",
                )
        if stored_events and check is not None and check.expected is not None:
            raise LogMoved("the log's head cannot be checked without the insert function")
        return super().insert_events(stored_events, **kwargs)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _insert_in_one_statement(self, stored_events: Sequence[StoredEvent], check: HeadCheck) -> list[int]:
        columns = self._columns(stored_events)
        # Rows as plain tuples (n, h): one per inserted event, the pool's dict rows were a measurable cost.
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            assert conn.autocommit  # the statement is its own transaction: the lock lasts until its commit
            try:
                curs.execute(self.call_insert_function_statement, (*columns, check.expected), binary=True, prepare=True)
            except psycopg.DatabaseError as error:
                if error.sqlstate == LOG_MOVED_SQLSTATE:
                    raise LogMoved(str(error).splitlines()[0]) from error
                raise
            rows = curs.fetchall()
        ids = [row[0] for row in rows]
        check.inserts += 1
        if check.inserts == 1:
            check.head_before = rows[0][1] if rows else None
        elif rows and rows[0][1] != check.head_after:
            check.head_before = None  # another writer came in between two inserts of the block: nothing to tell
        if ids:
            check.head_after = ids[-1]
            if check.expected is not None:
                check.expected = ids[-1]  # a further insert in the block expects this one's head
        return ids

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        """The pipelined path (no insert function yet): the library's lock and NOTIFY, then the binary arrays."""
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(self.insert_arrays_statement, self._columns(stored_events), binary=True)

    @staticmethod
    def _columns(stored_events: Sequence[StoredEvent]) -> tuple[list[Any], list[int], list[str], list[bytes]]:
        ids: list[Any] = []
        versions: list[int] = []
        topics: list[str] = []
        states: list[bytes] = []
        for stored in stored_events:
            ids.append(stored.originator_id)
            versions.append(stored.originator_version)
            topics.append(stored.topic)
            states.append(stored.state)
        return ids, versions, topics, states
