"""The group-commit writer's read-ahead queries (PostgreSQL) stay index scans when one aggregate has a long
history.

A plain ``JOIN unnest(ids)`` let the planner pick a sequential scan of the whole event table for every batch
once one budget had 100,000 events (47 ms per batch instead of 0.2 ms: RecordAction at 8 in flight fell from
~240/s to ~100/s in `make bench`). The queries are now LATERAL subqueries the planner cannot flatten. This test
checks the plans (not timings): a long history is inserted directly, then both read-ahead statements are
EXPLAINed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from leeway.application import LeewayApplication
from leeway.settings import Settings
from pgschema import PostgresSchema

pytestmark = pytest.mark.postgres


@pytest.fixture
def app_and_schema() -> Iterator[tuple[LeewayApplication, PostgresSchema]]:
    schema = PostgresSchema("bulk")
    made = LeewayApplication(env=Settings(database_url=schema.url).eventsourcing_env())
    try:
        yield made, schema
    finally:
        made.close()
        schema.drop()


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def test_read_ahead_uses_the_index_beside_a_long_history(app_and_schema) -> None:
    app, schema = app_and_schema
    reads = app.bulk_reads
    assert reads is not None
    events = app.recorder.events_table_name
    snapshots = app.snapshots.recorder.events_table_name
    long_one = uuid.uuid4()
    with psycopg.connect(schema.base, autocommit=True) as connection:
        connection.execute(f'SET search_path TO "{schema.name}"')
        for table, count in ((events, 200_000), (snapshots, 2_000)):
            connection.execute(
                f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
                "SELECT %s, n, 'leeway.domain.budget:Budget.ActionRecorded', convert_to(repeat('x', 300), 'UTF8') "
                "FROM generate_series(1, %s) AS n",
                (long_one, count),
            )
        ids = [uuid.uuid4() for _ in range(7)] + [long_one]
        for statement, params, table in (
            (reads.select_events, [ids, [0] * 7 + [199_990]], events),
            (reads.select_snapshots, [ids], snapshots),
        ):
            assert statement is not None
            explained = connection.execute(
                psycopg.sql.SQL("EXPLAIN (FORMAT JSON) ") + statement, params
            ).fetchone()[0]
            plan = (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]
            scans = [(n["Node Type"], n.get("Relation Name")) for n in nodes(plan) if n.get("Relation Name") == table]
            assert scans, plan
            assert all(kind != "Seq Scan" and not kind.startswith("Parallel Seq") for kind, _ in scans), scans
