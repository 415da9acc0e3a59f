"""Bulk view changes (projections/bulk.py) and catch-ups that go on as a replay, on SQLite and PostgreSQL.

- a ``Bulk`` upsert adds its summed columns to stored rows (or leaves them, without summed columns), a ``Bulk`` delete
  removes exactly the keyed rows that meet its condition, a ``Bulk`` insert writes every value (None too), and
  ``ViewStore.apply`` joins the rows of consecutive changes of one ``Bulk`` while keeping the order of the rest;
- a catch-up (and a runner thread) found far behind after a full batch goes on as a replay, ends where a rebuild
  ends with the same rows, and a replay told to stop ends after the batch it is writing.
"""

from __future__ import annotations

import threading
from typing import Any

from leeway.projections.bulk import Bulk
from leeway.projections.runner import CatchUpRunner, Projections
from test_projections import _ann_and_bob, _writes, rebuilt, tables

GIFTS = Bulk.upsert(
    "leeway_view_kpi_gifts",
    [("team_id", "text"), ("employee_id", "text"), ("customer_id", "text"), ("day", "int"), ("gifts", "int")],
    ["team_id", "employee_id", "customer_id", "day"], ["gifts"],
)
GIFTS_EMPTY = Bulk.delete(
    "leeway_view_kpi_gifts", [("team_id", "text"), ("employee_id", "text"), ("customer_id", "text"), ("day", "int")],
    "gifts <= 0",
)
CASED = Bulk.upsert("leeway_view_kpi_cased", [("customer_id", "text")], ["customer_id"])
TRAIL = Bulk.insert("leeway_view_trail", (
    "position", "employee_id", "customer_id", "action_id", "time_us", "actor", "event_type", "policy_version", "amount",
    "currency", "reason", "summary",
))


def rows(store: Any, table: str) -> list[tuple]:
    with store.transaction(commit=False) as tx:
        found = tx.execute(f"SELECT * FROM {{{table}}}").fetchall()
    return sorted(tuple(row[k] for k in row.keys()) for row in found)


def test_bulk_upserts_add_up_deletes_keep_the_rest_and_inserts_write_every_value(app_factory) -> None:
    projections = Projections(app_factory(), names=("insights",))
    store = projections.store
    big = 3_000_000_000  # wider than 32 bits: the arrays are bigint
    store.apply("bulk-test", 0, 1, [
        (GIFTS, [("t", "*", "c-1", 20_000, 2), ("t", "e", "c-1", 20_000, 1), ("*", "*", "Ö-2", big, 5)]),
        (CASED, [("A",), ("B",)]),
    ])
    assert rows(store, "leeway_view_kpi_gifts") == [
        ("*", "*", "Ö-2", big, 5), ("t", "*", "c-1", 20_000, 2), ("t", "e", "c-1", 20_000, 1),
    ]
    # Stored keys add up, new keys are inserted; then the delete takes the keys listed that fell to nothing (and
    # neither a listed key still above zero nor a key at zero that is not listed).
    store.apply("bulk-test", 1, 2, [
        (GIFTS, [("t", "*", "c-1", 20_000, -2), ("t", "e", "c-1", 20_000, 3), ("*", "*", "Ö-2", big, -5),
                 ("u", "*", "c-3", 1, 0)]),
        (GIFTS_EMPTY, [("t", "*", "c-1", 20_000), ("t", "e", "c-1", 20_000), ("*", "*", "nobody", big)]),
        (CASED, [("A",), ("C",)]),  # no summed columns: a key that is there stays as it is
    ])
    assert rows(store, "leeway_view_kpi_gifts") == [
        ("*", "*", "Ö-2", big, 0), ("t", "e", "c-1", 20_000, 4), ("u", "*", "c-3", 1, 0),
    ]
    assert rows(store, "leeway_view_kpi_cased") == [("A",), ("B",), ("C",)]
    # Consecutive changes of one Bulk insert are joined (one COPY on PostgreSQL); a dict change between them keeps
    # its place: it sees the rows inserted before it, and not those after it.
    entry = (7, "ann", "c-1", "act_1", 123, "ann", "Budget.ActionRecorded", 1, None, "", "why", "it")
    store.apply("bulk-test", 2, 3, [
        (TRAIL, [entry]),
        (TRAIL, [(8, *entry[1:8], "1.5", "EUR", "r", "s")]),
        ("UPDATE {leeway_view_trail} SET summary = 'seen' WHERE position <= 8", {}),
        (TRAIL, [(9, *entry[1:])]),
    ])
    assert rows(store, "leeway_view_trail") == [
        (*entry[:-1], "seen"), (8, *entry[1:8], "1.5", "EUR", "r", "seen"), (9, *entry[1:]),
    ]
    projections.close()


def replays_of(monkeypatch) -> list[str]:
    """The names of the projections whose runners go on as a replay from now on (``CatchUpRunner.replay``)."""
    replays: list[str] = []
    real_replay = CatchUpRunner.replay

    def replay(self: CatchUpRunner, *args: Any, **kwargs: Any) -> int:
        replays.append(self.name)
        return real_replay(self, *args, **kwargs)

    monkeypatch.setattr(CatchUpRunner, "replay", replay)
    return replays


def test_a_catch_up_far_behind_goes_on_as_a_replay_and_ends_as_a_rebuild(app_factory, clock, monkeypatch) -> None:
    app, h = _ann_and_bob(app_factory, clock)
    _writes(h, ["ann", "bob"], 6)
    projections = Projections(app)
    replays = replays_of(monkeypatch)
    head = projections.head()
    assert head > 30
    for name, runner in projections.runners.items():
        runner.batch, runner.rebuild_batch = 4, 9
        seen: list[int] = []
        assert runner.catch_up(progress=seen.append) == head
        assert sum(seen) == head and projections.store.position(name) == head
        # the first batch alone, then replay batches of 9 (the last one shorter)
        assert seen[0] == 4 and seen[1:-1] == [9] * (len(seen) - 2), seen
    assert replays == list(projections.runners)
    caught_up = tables(projections)
    assert rebuilt(projections) == caught_up
    # Nearly caught up (less than a replay's batch behind): small batches only.
    replays.clear()
    _writes(h, ["ann", "bob"], 2)
    for runner in projections.runners.values():
        runner.batch, runner.rebuild_batch = 1, 1000
        assert runner.catch_up() > 1
    assert replays == []
    projections.close()


def test_a_runner_thread_far_behind_catches_up_as_a_replay(app_factory, clock, monkeypatch) -> None:
    app, h = _ann_and_bob(app_factory, clock)
    replays = replays_of(monkeypatch)
    projections = Projections(app)
    for runner in projections.runners.values():
        runner.batch, runner.rebuild_batch = 3, 8
    projections.start(poll_seconds=0.01)
    head = projections.head()
    for name in projections.runners:
        assert projections.wait_for(name, head, 30), projections.status()
    projections.stop()
    assert sorted(set(replays)) == sorted(projections.runners)
    assert all(s.error == "" for s in projections.status())
    caught_up = tables(projections)
    assert rebuilt(projections) == caught_up
    projections.close()


def test_a_replay_told_to_stop_ends_after_the_batch_it_writes(app_factory, clock) -> None:
    app, _ = _ann_and_bob(app_factory, clock)
    projections = Projections(app)
    stop = threading.Event()
    for name, runner in projections.runners.items():
        runner.rebuild_batch = 5
        assert runner.replay(batch=5, stop=stop, progress=lambda n: stop.set()) == 5
        assert projections.store.position(name) == 5
        stop.clear()
        assert runner.replay(batch=5, stop=stop) == projections.head() - 5
        assert projections.store.position(name) == projections.head()
    projections.close()
