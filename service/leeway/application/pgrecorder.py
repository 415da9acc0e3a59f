"""The PostgreSQL event recorder, with a cheaper insert.

The library's recorder inserts a batch in a pipelined transaction of five statements (``SET LOCAL lock_timeout``,
``LOCK TABLE ... IN EXCLUSIVE MODE``, ``NOTIFY``, the insert, ``COMMIT``), and sends the events as one array of a
composite type, which psycopg dumps in text format in pure Python (about 45 µs of CPU per event, the largest
single cost of a group-commit save). Driving that pipeline from Python was the next largest.

This recorder does the same work in **one statement**: a PL/pgSQL function (created with the tables, see
``sql_create_statements``) that sets the lock timeout, takes the same EXCLUSIVE table lock, notifies the same
channel and inserts four parallel arrays (sent in binary format: about 3 µs per event) with ``unnest`` in array
order, returning the notification ids. Called in autocommit mode, the statement is its own transaction, so the
lock is held until the commit exactly as before: transactions that insert events are serialized and commit in
notification-id order, and readers tailing the log never pass over a gap that a slower transaction fills later
(the reason the library takes the lock; it is **not** the library's ``POSTGRES_ENABLE_DB_FUNCTIONS`` function,
which takes no lock).

A database whose tables were created by an older release (``LEEWAY_CREATE_TABLES=false`` and no ``leeway
migrate`` since) has no such function: the first insert notices, logs ``recorder.insert_function_missing`` once,
and every insert takes the library's pipelined transaction (with the binary arrays) from then on.

Selected through the library's ``APPLICATION_RECORDER_TOPIC`` setting (see settings.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg.errors
import structlog
from eventsourcing.persistence import InterfaceError, OperationalError, ProgrammingError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

log = structlog.get_logger("leeway.application")


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

        self.insert_function_name = f"{self.events_table_name}_insert_locked"
        self.check_identifier_length(self.insert_function_name)
        function = Identifier(self.insert_function_name)
        self.create_insert_function_statement = SQL(
            "CREATE OR REPLACE FUNCTION {schema}.{function}("
            "ids {id_type}[], versions bigint[], topics text[], states bytea[]) "
            "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ "
            "BEGIN "
            "SET LOCAL lock_timeout = '{lock_timeout}s'; "
            "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
            "NOTIFY {channel}; "
            "RETURN QUERY "
            "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state) "
            "SELECT e.i, e.v, e.t, e.s FROM unnest(ids, versions, topics, states) AS e(i, v, t, s) "
            "RETURNING t.notification_id; "
            "END; $BODY$"
        ).format(
            schema=schema,
            function=function,
            id_type=id_type,
            table=table,
            lock_timeout=self.datastore.lock_timeout,
            channel=Identifier(self.channel_name),
        )
        self.sql_create_statements.append(self.create_insert_function_statement)
        self.call_insert_function_statement = SQL(
            "SELECT n FROM {schema}.{function}(%b, %b, %b, %b) AS r(n)"
        ).format(schema=schema, function=function)
        #: False once an insert found no function (tables from an older release): the pipelined path from then on.
        self.insert_function_available = True

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if stored_events and self.insert_function_available:
            try:
                return self._insert_in_one_statement(stored_events)
            except ProgrammingError as error:
                if not isinstance(error.__cause__, psycopg.errors.UndefinedFunction):
                    raise
                self.insert_function_available = False
                log.warning(
                    "recorder.insert_function_missing",
                    function=f"{self.datastore.schema}.{self.insert_function_name}",
                    message="the event store's tables predate this release: run `leeway migrate` (or start once "
                    "with LEEWAY_CREATE_TABLES=true); inserting through the library's pipelined transaction",
                )
        return super().insert_events(stored_events, **kwargs)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _insert_in_one_statement(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        columns = self._columns(stored_events)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            assert conn.autocommit  # the statement is its own transaction: the lock lasts until its commit
            curs.execute(self.call_insert_function_statement, columns, binary=True, prepare=True)
            return [row["n"] for row in curs.fetchall()]

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
