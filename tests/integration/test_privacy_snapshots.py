"""Snapshots sealed (issue 22), on SQLite and PostgreSQL: with a key store a snapshot is stored encrypted (no
personal text in the snapshots table), read back by any replica with the master key; a snapshot stored in clear
before stays readable; after an erasure the snapshots' key is shredded with the subject's, and a snapshot sealed
with it (one another replica wrote a moment after) is a cache miss: the aggregate replays from its events."""

from __future__ import annotations


import pytest
from builders import make_policy, open_cmd
from integration.test_privacy import SECRET, gift
from leeway.adapters.snapshot_seal import PREFIX, SUBJECT
from leeway.application import LeewayApplication
from leeway.application.privacy import Privacy
from leeway.domain.ids import budget_id_for


@pytest.fixture
def make(make_keyed):
    return make_keyed


def snapshot_rows(app: LeewayApplication, employee: str) -> list[bytes]:
    return [bytes(s.state) for s in app.snapshots.recorder.select_events(budget_id_for(employee))]


def fill(app: LeewayApplication, employee: str, count: int, customer: str = "jane-s") -> None:
    app.execute(open_cmd(employee, display_name="Ann Snapshot", policy=make_policy(allowance=100000, limit=100)))
    for n in range(count):
        app.execute(gift(employee, customer, 1, request_id=f"{employee}-{n}"))


def test_snapshots_are_sealed_and_read_back(make) -> None:
    app = make()
    fill(app, "ann", 105)  # a budget snapshot every 100 events
    rows = snapshot_rows(app, "ann")
    assert rows and all(r.startswith(PREFIX) for r in rows)
    assert not any(SECRET.encode() in r or b"jane-s" in r or b"Ann Snapshot" in r for r in rows)
    fresh = make()  # another replica: reads the sealed snapshot with the same master key
    budget = fresh.get_budget("ann")
    assert (budget.display_name, budget.period_action_count) == ("Ann Snapshot", 105)
    fresh.execute(gift("ann", "jane-s", 1))  # the writer's reads (PostgreSQL: bulk reads) open it too
    assert fresh.get_budget("ann").period_action_count == 106


def test_a_clear_snapshot_from_before_stays_readable(make) -> None:
    old = make(None)
    fill(old, "bob", 100)
    assert snapshot_rows(old, "bob")[0].startswith(b"{")  # written in clear, as before this feature
    old.close()
    app = make()
    budget = app.get_budget("bob")
    assert (budget.display_name, budget.period_action_count) == ("Ann Snapshot", 100)


def test_an_erasure_makes_every_earlier_snapshot_unreadable(make) -> None:
    app = make()
    fill(app, "cid", 100)
    other = make()  # a replica that took (or will take) a snapshot with the key as it was
    sealed = snapshot_rows(app, "cid")
    topic = app.snapshots.recorder.select_events(budget_id_for("cid"))[0].topic
    assert sealed
    Privacy(app).erase_customer("erase-s", "jane-s", "art. 17")
    assert snapshot_rows(app, "cid") == []  # deleted, as before
    assert app.keystore is not None and app.keystore.is_erased(SUBJECT)
    # Put the old snapshot back (as a lagging replica could have written it): it can no longer be opened, so the
    # budget replays from its events, erased as it now reads.
    from eventsourcing.persistence import StoredEvent

    app.snapshots.recorder.insert_events([StoredEvent(budget_id_for("cid"), 100, topic, sealed[-1])])
    assert snapshot_rows(app, "cid") == sealed[-1:] and list(app.snapshots.get(budget_id_for("cid"))) == []
    for replica in (make(), other):
        budget = replica.get_budget("cid")
        assert budget.period_action_count == 100
        assert all(a.customer_id.startswith("[erased:") for a in replica.list_actions("cid", "", None, 5, "").items)
    other.execute(gift("cid", "someone", 1))  # the writer's reads (PostgreSQL: bulk reads) skip it too
    assert other.get_budget("cid").period_action_count == 101

