"""The PostgreSQL recorder's one-statement insert (application/pgrecorder.py): a PL/pgSQL function that takes the
library's EXCLUSIVE table lock, notifies and inserts the batch, called as one autocommit statement.

What the lock is for, and what these tests check on the real server: transactions that insert events are
serialized and commit in notification-id order, so a reader tailing the log never passes over a position that a
slower transaction fills in later. Also: a save still numbers its events in order (test_audit.py), a duplicate
version is still an IntegrityError (the group-commit writer's conflict signal), and a database whose tables
predate the function falls back to the library's pipelined transaction.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from leeway.application import LeewayApplication
from leeway.adapters.pgrecorder import LeewayPostgresRecorder
from leeway.projections.store import open_view_store
from leeway.settings import Settings
from pgschema import PostgresSchema
from structlog.testing import capture_logs

pytestmark = pytest.mark.postgres

TOPIC = "leeway.domain.budget:Budget.ActionRecorded"


@pytest.fixture
def schema() -> Iterator[PostgresSchema]:
    made = PostgresSchema("rec")
    try:
        yield made
    finally:
        made.drop()


def open_app(schema: PostgresSchema) -> LeewayApplication:
    return LeewayApplication(env=Settings(database_url=schema.url).eventsourcing_env())


def events(originator: uuid.UUID, versions: range) -> list[StoredEvent]:
    return [StoredEvent(originator_id=originator, originator_version=v, topic=TOPIC, state=b"{}") for v in versions]


def connect(schema: PostgresSchema) -> psycopg.Connection:
    connection = psycopg.connect(schema.base, autocommit=True)
    connection.execute(f'SET search_path TO "{schema.name}"')
    return connection


def test_inserts_go_through_the_function_in_one_statement(schema) -> None:
    app = open_app(schema)
    try:
        recorder = app.recorder
        assert isinstance(recorder, LeewayPostgresRecorder)
        with connect(schema) as connection:
            found = connection.execute(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = %s AND p.proname = %s",
                (schema.name, recorder.insert_function_name),
            ).fetchone()
            assert found == (1,)
        one, two = uuid.uuid4(), uuid.uuid4()
        ids = recorder.insert_events([*events(one, range(1, 4)), *events(two, range(1, 3))])
        assert recorder.insert_function_available  # not the fallback
        assert ids is not None and len(ids) == 5 and ids == sorted(ids)
        stored = [(n.originator_id, n.originator_version) for n in recorder.select_notifications(ids[0], 10)]
        assert stored == [(one, 1), (one, 2), (one, 3), (two, 1), (two, 2)]
        # A version that exists already: the whole statement fails (nothing inserted), as IntegrityError.
        with pytest.raises(IntegrityError):
            recorder.insert_events([*events(two, range(3, 4)), *events(one, range(3, 4))])
        assert recorder.max_notification_id() == ids[-1]
    finally:
        app.close()


def test_an_insert_waits_for_a_slower_one_and_is_numbered_after_it(schema) -> None:
    """A transaction that took its positions first but has not committed holds the EXCLUSIVE lock: a second
    insert waits for its commit and gets later positions. (With only the ROW EXCLUSIVE lock of a plain INSERT,
    the second would commit first, with higher positions, and a tailing reader could pass the first one's.)"""
    app = open_app(schema)
    try:
        recorder = app.recorder
        assert isinstance(recorder, LeewayPostgresRecorder)
        slow, fast = uuid.uuid4(), uuid.uuid4()
        done: dict[str, object] = {}
        with connect(schema) as connection:
            with connection.transaction():
                slow_ids = [
                    row[0]
                    for row in connection.execute(
                        recorder.call_insert_function_statement,
                        (*recorder._columns(events(slow, range(1, 3))), None),
                        binary=True,
                    ).fetchall()
                ]

                def second() -> None:
                    done["ids"] = recorder.insert_events(events(fast, range(1, 3)))
                    done["at"] = time.monotonic()

                thread = threading.Thread(target=second)
                thread.start()
                time.sleep(1.0)
                assert "ids" not in done  # blocked on the lock held by the uncommitted transaction
                committed_at = time.monotonic()
            thread.join(10)
        assert done["at"] >= committed_at  # type: ignore[operator]
        fast_ids = done["ids"]
        assert min(fast_ids) > max(slow_ids)  # type: ignore[call-overload]
        order = [n.originator_id for n in recorder.select_notifications(1, 10)]
        assert order == [slow, slow, fast, fast]
    finally:
        app.close()


def test_tables_without_the_function_fall_back_to_the_pipelined_insert(schema) -> None:
    app = open_app(schema)
    recorder = app.recorder
    assert isinstance(recorder, LeewayPostgresRecorder)
    with connect(schema) as connection:
        connection.execute(f"DROP FUNCTION {recorder.insert_function_name}")
    try:
        one = uuid.uuid4()
        with capture_logs() as logs:
            first = recorder.insert_events(events(one, range(1, 3)))
            second = recorder.insert_events(events(one, range(3, 5)))
        assert not recorder.insert_function_available
        assert [entry["event"] for entry in logs].count("recorder.insert_function_missing") == 1
        assert first is not None and second is not None and [*first, *second] == sorted([*first, *second])
        assert [n.originator_version for n in recorder.select_notifications(1, 10)] == [1, 2, 3, 4]
        with pytest.raises(IntegrityError):
            recorder.insert_events(events(one, range(4, 5)))
    finally:
        app.close()
    # Creating the tables again (`leeway migrate`, or a start with LEEWAY_CREATE_TABLES=true) brings it back.
    again = open_app(schema)
    try:
        assert again.recorder.insert_events(events(uuid.uuid4(), range(1, 2)))
        assert again.recorder.insert_function_available
    finally:
        again.close()


def _at_once(count: int, start: Any) -> list[Any]:
    """Runs ``start`` in ``count`` threads released together; returns what they made (fails on any error)."""
    made: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def run() -> None:
        barrier.wait()
        try:
            result = start()
        except BaseException as error:  # noqa: BLE001 - reported below
            with lock:
                errors.append(error)
        else:
            with lock:
                made.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(made) == count
    return made


def test_replicas_starting_at_once_on_an_empty_schema_all_start() -> None:
    """Each start creates the composite type, the tables and the insert function; run concurrently on an empty
    schema, one of them failed with "tuple concurrently updated" (seen in CI) or a duplicate pg_type key. Starts
    take an advisory lock for it (storegate.table_creation_lock), and so do the projections' view stores."""
    for _ in range(3):
        fresh = PostgresSchema("race")
        try:
            apps = _at_once(4, lambda: open_app(fresh))
            try:
                assert apps[0].recorder.insert_events(events(uuid.uuid4(), range(1, 2)))
            finally:
                for made in apps:
                    made.close()
            stores = _at_once(4, lambda: open_view_store(Settings(database_url=fresh.url).eventsourcing_env()))
            for store in stores:
                store.datastore.close()
        finally:
            fresh.drop()
