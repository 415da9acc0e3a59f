"""One aggregate's stored events with their positions (notification ids), read through the primary key
(originator_id, originator_version) on both engines: one index range scan, however long the log is. The library's
``select_events`` gives no positions and ``select_notifications`` walks the whole log; VerifyIntegrity of one
budget needs the positions of that budget's events only."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder


def aggregate_notifications(recorder: Any, originator_id: UUID) -> list[Notification]:
    """Every stored event of ``originator_id``, as notifications (position, id, version, topic, state as stored),
    in position order."""
    if isinstance(recorder, PostgresAggregateRecorder):
        from psycopg.sql import SQL, Identifier

        statement = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = %s ORDER BY notification_id"
        ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name))
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(statement, [originator_id], prepare=True)
            rows = cursor.fetchall()
        return [
            Notification(id=r["notification_id"], originator_id=r["originator_id"],
                         originator_version=r["originator_version"], topic=r["topic"], state=bytes(r["state"]))
            for r in rows
        ]
    if isinstance(recorder, SQLiteAggregateRecorder):
        statement = (
            f"SELECT rowid, originator_id, originator_version, topic, state FROM {recorder.events_table_name} "
            "WHERE originator_id = ? ORDER BY rowid"
        )
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, [originator_id.hex])
            rows = cursor.fetchall()
        return [
            Notification(id=r["rowid"], originator_id=recorder.convert_originator_id(r["originator_id"]),
                         originator_version=r["originator_version"], topic=r["topic"], state=r["state"])
            for r in rows
        ]
    # The library's in-memory recorder: its whole log is in memory anyway.
    last = recorder.max_notification_id() or 0
    return [
        n for n in recorder.select_notifications(start=1, limit=max(last, 1)) if n.originator_id == originator_id
    ]
