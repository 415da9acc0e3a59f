"""Bulk reads for the group-commit writer on PostgreSQL: many aggregates in two queries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from eventsourcing.persistence import EventStore, MapperDeserialisationError, StoredEvent

from .snapshot_seal import unreadable


class PostgresBulkReads:
    """Loads many aggregates in two queries: their latest snapshots, then every event after each one's snapshot
    (or after the version of the copy the caller already holds, which it brings up to date)."""

    def __init__(self, events: EventStore, snapshots: EventStore | None):  # type: ignore[type-arg]
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL, Identifier

        self.tuple_row = tuple_row
        self.events = events
        self.snapshots = snapshots
        recorder: Any = events.recorder
        self.datastore = recorder.datastore
        schema = Identifier(recorder.datastore.schema)
        # The id and version arrays are sent in binary format (%b): psycopg dumps a text array element by element in
        # Python (str() of every UUID), a measurable share of a large batch's read-ahead.
        # One index range scan per aggregate (a LATERAL subquery the planner cannot flatten: LIMIT / OFFSET 0).
        # As a plain join, one aggregate with a long history skews the statistics and the planner picks a
        # sequential scan of the whole log for every batch (measured: 47 ms instead of 0.2 ms at 100,000 events).
        self.select_snapshots = (
            SQL(
                "SELECT s.originator_id, s.originator_version, s.topic, s.state FROM unnest(%b::uuid[]) AS v(id) "
                "CROSS JOIN LATERAL (SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
                "WHERE originator_id = v.id ORDER BY originator_version DESC LIMIT 1) s"
            ).format(schema=schema, table=Identifier(snapshots.recorder.events_table_name))  # type: ignore[attr-defined]
            if snapshots is not None
            else None
        )
        self.select_events = SQL(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state "
            "FROM unnest(%b::uuid[], %b::bigint[]) AS v(id, after) "
            "CROSS JOIN LATERAL (SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = v.id AND originator_version > v.after OFFSET 0) e "
            "ORDER BY e.originator_id, e.originator_version"
        ).format(schema=schema, table=Identifier(recorder.events_table_name))
        self.select_versions = SQL(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state "
            "FROM unnest(%b::uuid[], %b::bigint[]) AS v(id, version) "
            "CROSS JOIN LATERAL (SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = v.id AND originator_version = v.version OFFSET 0) e"
        ).format(schema=schema, table=Identifier(recorder.events_table_name))

    def load_events(self, wanted: set[tuple[UUID, int]]) -> dict[tuple[UUID, int], Any]:
        """The stored events at these (aggregate id, version) pairs, in one query (None: there is none)."""
        pairs = list(wanted)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=self.tuple_row) as cursor:
            cursor.execute(self.select_versions, [[i for i, _ in pairs], [v for _, v in pairs]], prepare=True)
            rows = cursor.fetchall()
        found: dict[tuple[UUID, int], Any] = dict.fromkeys(pairs)
        for row in rows:
            event = self.events.mapper.to_domain_event(_stored(row))
            found[(event.originator_id, event.originator_version)] = event
        return found

    def load(
        self,
        ids: set[UUID],
        *,
        cached: Mapping[UUID, Any],
        never_snapshotted: set[UUID] | frozenset[UUID] = frozenset(),
        learn_hashes: bool = True,
    ) -> dict[UUID, Any]:
        """Every id's aggregate as stored (None: it does not exist). ``cached``: copies the caller holds (brought
        up to date in place); ``never_snapshotted``: ids known to have no snapshots (request records), left out of
        the first query (which is skipped when nothing else needs it); ``learn_hashes``: hand the hash chain each
        aggregate's last stored hash (the writer, which saves next; not a read)."""
        found: dict[UUID, Any] = {i: cached[i] for i in ids if i in cached}
        rest = [i for i in ids if i not in found]
        after = {i: a.version for i, a in found.items()}
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=self.tuple_row) as cursor:
            may_have_snapshots = [i for i in rest if i not in never_snapshotted]
            if may_have_snapshots and self.select_snapshots is not None:
                assert self.snapshots is not None
                cursor.execute(self.select_snapshots, [may_have_snapshots], prepare=True)
                for row in cursor.fetchall():
                    try:
                        snapshot = self.snapshots.mapper.to_domain_event(_stored(row))
                    except MapperDeserialisationError as error:
                        if not unreadable(error):
                            raise
                        continue  # sealed with a shredded key: a cache miss, replayed from the events
                    found[snapshot.originator_id] = snapshot.mutate(None)  # type: ignore[attr-defined]
                    after[snapshot.originator_id] = snapshot.originator_version
            for i in rest:
                after.setdefault(i, 0)
            ordered = list(after)
            cursor.execute(self.select_events, [ordered, [after[i] for i in ordered]], prepare=True)
            rows = cursor.fetchall()
        mapper: Any = self.events.mapper
        noting = getattr(mapper, "to_domain_event_and_chain", None) if learn_hashes else None
        #: The stored hash of each aggregate's last event read: the hash chain's next link (ChainedMapper), which
        #: the save would otherwise read again, one query per aggregate, for an aggregate the writer had not saved.
        last_hashes: dict[UUID, tuple[int, str]] = {}
        for row in rows:
            if noting is not None:
                event, _, this = noting(_stored(row))
                last_hashes[event.originator_id] = (event.originator_version, this)
            else:
                event = mapper.to_domain_event(_stored(row))
            found[event.originator_id] = event.mutate(found.get(event.originator_id))  # type: ignore[attr-defined]
        if last_hashes:
            mapper.learn_hashes({(str(i), version): this for i, (version, this) in last_hashes.items()})
        for i in ids:
            found.setdefault(i, None)
        return found


def _stored(row: tuple[Any, ...]) -> StoredEvent:
    """A row of the queries above (originator_id, originator_version, topic, state: plain tuples, cheaper than the
    pool's dict rows) as the library's StoredEvent."""
    originator_id, originator_version, topic, state = row
    return StoredEvent(
        originator_id=originator_id, originator_version=originator_version, topic=topic, state=bytes(state)
    )
