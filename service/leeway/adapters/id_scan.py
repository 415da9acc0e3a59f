"""One read of the log for the group-commit writer's index of legacy request records: the ids of the aggregates
whose events of one topic were stored after a position and whose ids have one UUID version, and the log's head,
in **one statement** (one snapshot). Inserts commit in notification-id order (the EXCLUSIVE table lock of both
recorders; SQLite has one writer at a time), so every event up to the head read is visible in it: whatever is
stored later is numbered after it. Rows are handed over in chunks, so a first scan of a long log never holds
more than a chunk of them as Python objects."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder

CHUNK = 10_000


def scan_ids(
    recorder: Any, *, after: int, topic: str, uuid_version: int, found: Callable[[list[UUID]], None]
) -> int:
    """Calls ``found`` with the ids of the aggregates with an event of ``topic`` at a notification id above
    ``after`` whose id has UUID version ``uuid_version`` (in chunks); returns the log's head (its highest
    notification id, 0 if empty) as of the same snapshot."""
    head = after
    if isinstance(recorder, PostgresAggregateRecorder):
        rows: Iterable[list[tuple[Any, Any]]] = _postgres(recorder, after, topic, uuid_version)
    elif isinstance(recorder, SQLiteAggregateRecorder):
        rows = _sqlite(recorder, after, topic, uuid_version)
    else:  # the library's in-memory recorder: two calls, but nothing else writes in between
        last = recorder.max_notification_id() or 0
        notifications = recorder.select_notifications(
            after, limit=max(last - after, 1), stop=last, topics=[topic], inclusive_of_start=False
        )
        rows = [[(n.id, n.originator_id) for n in notifications] + [(last, None)]]
    for chunk in rows:
        ids: list[UUID] = []
        for position, originator_id in chunk:
            if originator_id is None:
                head = int(position or 0)
                continue
            found_id = originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))
            if found_id.version == uuid_version:  # the statement's filter, made exact
                ids.append(found_id)
        if ids:
            found(ids)
    return head


def _postgres(recorder: Any, after: int, topic: str, uuid_version: int) -> Iterator[list[tuple[Any, Any]]]:
    from psycopg.rows import tuple_row
    from psycopg.sql import SQL, Identifier

    statement = SQL(
        "SELECT notification_id, originator_id FROM {schema}.{table} "
        "WHERE notification_id > %s AND topic = %s AND substr(originator_id::text, 15, 1) = %s "
        "UNION ALL SELECT coalesce(max(notification_id), 0), NULL FROM {schema}.{table}"
    ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name))
    with recorder.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
        cursor.execute(statement, [after, topic, f"{uuid_version:x}"])
        while chunk := cursor.fetchmany(CHUNK):
            yield chunk


def _sqlite(recorder: Any, after: int, topic: str, uuid_version: int) -> Iterator[list[tuple[Any, Any]]]:
    # The library stores ids as 32 hex digits (the version is the 13th); text with hyphens is matched too.
    table = recorder.events_table_name
    statement = (
        f"SELECT rowid, originator_id FROM {table} WHERE rowid > ? AND topic = ? "
        "AND (substr(originator_id, 13, 1) = ? OR substr(originator_id, 15, 1) = ?) "
        f"UNION ALL SELECT coalesce(max(rowid), 0), NULL FROM {table}"
    )
    version = f"{uuid_version:x}"
    with recorder.datastore.transaction(commit=False) as wrapped:
        cursor = wrapped.sqlite_cursor  # the library's wrapper has no fetchmany
        cursor.execute(statement, (after, topic, version, version))
        while chunk := cursor.fetchmany(CHUNK):
            yield [(row[0], row[1]) for row in chunk]
