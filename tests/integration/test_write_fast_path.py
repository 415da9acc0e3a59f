"""The group-commit writer's fast path on PostgreSQL (Writer.prefetch): a batch whose aggregates the
writer knows to be current is decided from its cache without reading the store first, and its save checks under
the table lock that no other writer committed since the writer's last commit (the checked insert of
application/pgrecorder.py). These tests check that the fast path is taken when it should be, and that whatever
another replica (or anyone else) stored in between is never missed: not for an aggregate the batch writes, not for
one it only reads (the customer cap), not for a batch that saves nothing, not for a request record older than the
writer's memory, and not when the checked function is missing."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from leeway.application import LeewayApplication
from leeway.application.commands import SetCustomerCap, UpdatePolicy
from leeway.adapters.pgrecorder import LeewayPostgresRecorder, LogMoved
from leeway.domain.errors import PreconditionFailed
from leeway.domain.ids import budget_id_for
from leeway.domain.ledgers import CustomerLedger, TeamLedger
from leeway.domain.periods import PeriodKind
from leeway.domain.tally import Cap
from leeway.settings import Settings
from pgschema import PostgresSchema
from structlog.testing import capture_logs
from test_group_commit import open_cmd, policy, recorded, spend, usd

pytestmark = pytest.mark.postgres


@pytest.fixture
def schema():
    made = PostgresSchema("fast")
    try:
        yield made
    finally:
        made.drop()


@pytest.fixture
def apps(schema, clock):
    made: list[LeewayApplication] = []

    def make() -> LeewayApplication:
        app = LeewayApplication(env=Settings(database_url=schema.url).eventsourcing_env(), clock=clock)
        made.append(app)
        return app

    yield make
    for app in reversed(made):
        app.close()


def warm(app: LeewayApplication, *employees: str, customer: str = "cust-1") -> None:
    """Opens the budgets and spends once on each, twice over: the writer then knows every aggregate a spend of
    these employees for this customer uses (the first batch after a start cannot know the log's head)."""
    for employee in employees:
        app.execute(open_cmd(employee, allowance=100))
    for _ in range(2):
        for employee in employees:
            app.execute(spend(employee, 1, customer=customer))


def skipped(app: LeewayApplication, call: Any) -> tuple[Any, int]:
    before = app.writer.read_aheads_skipped
    result = call()
    return result, app.writer.read_aheads_skipped - before


def test_a_writer_alone_skips_reading_ahead_and_stays_correct(apps) -> None:
    app = apps()
    warm(app, "ann", "bob")
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 10), spend("bob", 20), spend("ann", 5)]))
    assert fast == 1
    assert [budget.spent.amount for _, budget in answers] == [12, 22, 17]
    assert app.get_budget("ann").spent.amount == 17 and app.get_budget("bob").spent.amount == 22
    # A refusal on the fast path: saved nothing of its own, its neighbours are saved.
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 500), spend("bob", 1)]))
    assert fast == 1
    assert isinstance(answers[0], PreconditionFailed) and answers[1][1].spent.amount == 23
    assert app.writer.batch_conflicts == 0
    assert app.verify_integrity().ok


def test_a_spend_by_another_replica_is_never_missed(apps) -> None:
    app, other = apps(), apps()
    warm(app, "ann")  # ann has spent 2 of 100; app's writer knows her budget as current
    other.execute(spend("ann", 90, request_id="other"))
    # app's cache still says 2: the batch is decided on it, its save finds the log moved, and it is decided again.
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 20), spend("ann", 8)]))
    assert fast == 1 and app.writer.batch_conflicts == 1
    assert isinstance(answers[0], PreconditionFailed) and answers[0].reason == "BUDGET_EXHAUSTED"
    assert answers[1][1].spent.amount == 100
    assert app.get_budget("ann").spent.amount == 100
    assert Counter(e.request_id for e in recorded(app, "ann"))["other"] == 1
    assert app.verify_integrity().ok


def test_a_customer_cap_set_by_another_replica_is_seen(apps) -> None:
    """The cap lives on an aggregate the spend only reads (OrgLimits): a version conflict would not catch it."""
    app, other = apps(), apps()
    warm(app, "ann", customer="cust-9")
    other.execute(SetCustomerCap(request_id="cap", cap=Cap(usd(5), PeriodKind.MONTH)))
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 4, customer="cust-9")]))
    assert fast == 1 and app.writer.batch_conflicts == 1
    assert isinstance(answers[0], PreconditionFailed), answers
    assert app.get_budget("ann").spent.amount == 2


def test_a_batch_that_saves_nothing_confirms_the_head(apps) -> None:
    """Only refusals: no insert to check. The writer asks for the head; another replica raised the allowance."""
    app, other = apps(), apps()
    warm(app, "ann")
    other.execute(UpdatePolicy(request_id="raise", employee_id="ann", policy=policy(1_000)))
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 500)]))
    assert fast == 1 and app.writer.batch_conflicts == 1
    assert answers[0][1].spent.amount == 502  # allowed by the new allowance, not refused on the cached one
    # And when nothing moved, a refusal stands without a second round (once the writer knows the log again: after
    # a conflict it reads ahead for one batch).
    app.execute(spend("ann", 1))
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 5_000)]))
    assert fast == 1 and isinstance(answers[0], PreconditionFailed) and app.writer.batch_conflicts == 1


def test_a_request_older_than_the_writers_memory_is_replayed_not_recorded_twice(apps) -> None:
    app = apps()
    warm(app, "ann")
    first = app.execute(spend("ann", 10, request_id="old-request"))
    app.writer.memory.recent_records.clear()  # as if 10,000 other requests had come since
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 10, request_id="old-request"), spend("ann", 3)]))
    assert fast == 1 and app.writer.batch_conflicts == 1  # the record's unique key stopped the save; decided again
    assert answers[0] == first
    assert answers[1][1].spent.amount == 15
    assert Counter(e.request_id for e in recorded(app, "ann"))["old-request"] == 1


def test_an_old_request_that_would_now_be_refused_is_replayed(apps) -> None:
    """Decided again, the retry is refused (the budget is spent by the original): nothing to save, so no unique
    key stops it. The writer looks for the record before refusing."""
    app = apps()
    warm(app, "ann")
    first = app.execute(spend("ann", 98, request_id="all-of-it"))
    app.writer.memory.recent_records.clear()
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 98, request_id="all-of-it")]))
    assert fast == 1 and answers[0] == first
    assert app.get_budget("ann").spent.amount == 100


def test_events_stored_by_anyone_else_stop_the_fast_path(apps, schema) -> None:
    """Not only replicas: any insert into the log (here a raw one through the library) moves the head."""
    app = apps()
    warm(app, "ann")
    stranger = uuid.uuid4()
    app.recorder.insert_events([StoredEvent(originator_id=stranger, originator_version=1, topic="x:Y", state=b"{}")])
    answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 1)]))
    assert fast == 1 and app.writer.batch_conflicts == 1 and answers[0][1].spent.amount == 3
    # The writer starts again from the new head: the next batch reads ahead once, then the fast path is back.
    _, fast = skipped(app, lambda: app.execute_batch([spend("ann", 1)]))
    assert fast == 0
    _, fast = skipped(app, lambda: app.execute_batch([spend("ann", 1)]))
    assert fast == 1
    assert app.get_budget("ann").spent.amount == 5


def test_checked_insert_reports_the_head_and_refuses_a_moved_log(apps, schema) -> None:
    app = apps()
    recorder = app.recorder
    assert isinstance(recorder, LeewayPostgresRecorder)
    first, second = uuid.uuid4(), uuid.uuid4()

    def event(originator: uuid.UUID, version: int) -> StoredEvent:
        return StoredEvent(originator_id=originator, originator_version=version, topic="x:Y", state=b"{}")

    with recorder.checking_head(None) as check:
        ids = recorder.insert_events([event(first, 1), event(first, 2)])
    assert check.head_before == 0 and check.head_after == ids[-1] and ids == sorted(ids)
    with recorder.checking_head(ids[-1]) as check:
        more = recorder.insert_events([event(first, 3)])
    assert check.head_before == ids[-1] and check.head_after == more[-1]
    with pytest.raises(LogMoved), recorder.checking_head(ids[-1]):  # stale: the head is more[-1] now
        recorder.insert_events([event(second, 1)])
    assert recorder.select_events(second) == []  # nothing inserted
    assert recorder.max_notification_id() == more[-1]


def test_without_the_checked_function_the_writer_always_reads_ahead(apps, schema) -> None:
    app = apps()
    with psycopg.connect(schema.base, autocommit=True) as connection:
        connection.execute(f'DROP FUNCTION "{schema.name}".{app.recorder.insert_function_name}')
    with capture_logs() as logs:
        warm(app, "ann")
        answers, fast = skipped(app, lambda: app.execute_batch([spend("ann", 10), spend("ann", 5)]))
    assert fast == 0 and answers[1][1].spent.amount == 17
    assert [entry["event"] for entry in logs].count("recorder.insert_function_missing") == 1
    # A check it cannot make is never skipped silently.
    with pytest.raises(LogMoved), app.recorder.checking_head(1):
        app.recorder.insert_events([StoredEvent(originator_id=uuid.uuid4(), originator_version=1, topic="x:Y", state=b"{}")])


def test_decisions_reversals_and_wins_read_their_actions_ahead_in_one_query(apps) -> None:
    """A batch of commands on actions recorded in earlier batches reads those actions (and the ledgers they name)
    with the batch's read-ahead: no read per command, on the fast path and after another writer's commit alike;
    ``respond=False`` answers with each command's result, rendering nothing."""
    from leeway.application.commands import DocumentWin, ReverseAction
    from leeway.application.commands.base import ActionResult, ReversalResult
    from leeway.domain.budget import Budget
    from leeway.domain.ids import budget_id_for

    app, other = apps(), apps()
    warm(app, "ann", "bob")
    first = app.execute_batch([spend("ann", 3), spend("bob", 4, customer="cust-2"), spend("ann", 5), spend("ann", 1)],
                              respond=False)
    ids = [result.action_id for result in first]
    reads: list[Any] = []
    get = app.events.get

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(args)
        return get(*args, **kwargs)

    app.events.get = counting  # type: ignore[method-assign]
    try:
        for moved in (False, True):
            if moved:  # another writer committed: the batch's fast path fails at its save and it reads ahead
                other.execute(spend("bob", 1, customer="cust-3"))
            reverse = ReverseAction(request_id=f"rv-{moved}", action_id=ids[0 if not moved else 1], reason="twice",
                                    actor_id="mgr")
            wins = [DocumentWin(request_id=f"w-{moved}", action_id=ids[3 if moved else 2], story="back")]
            answers, fast = skipped(app, lambda: app.execute_batch([reverse, *wins], respond=False))
            assert fast == 1  # moved: tried, failed on the moved head, decided again reading ahead
            assert isinstance(answers[0], ReversalResult) and isinstance(answers[1], ActionResult), answers
            assert reads == [], reads
    finally:
        app.events.get = get  # type: ignore[method-assign]
    assert app.get_budget("ann").spent.amount == 2 + 5 + 1 and app.get_budget("bob").spent.amount == 2 + 1
    assert sum(isinstance(e, Budget.WinDocumented) for e in app.events.get(budget_id_for("ann"))) == 2


def test_a_writer_that_read_an_aggregate_ahead_chains_to_it_without_reading_it_again(apps) -> None:
    """The read-ahead hands the hash chain the stored hash of each aggregate's last event (PostgresBulkReads.load):
    a writer that never saved these aggregates (after a restart, or another replica's) links its events to them
    without a query per aggregate for the previous event, and the chain verifies."""
    first = apps()
    warm(first, "ann", "bob")
    first.close()
    second = apps()
    reads: list[Any] = []
    read_previous = second.mapper.read_previous
    second.mapper.read_previous = lambda i, v: reads.append(i) or read_previous(i, v)
    answers = second.execute_batch([spend("ann", 10), spend("bob", 20)])
    assert [budget.spent.amount for _, budget in answers] == [12, 22]
    assert second.writer.read_aheads_skipped == 0  # it read ahead: it knew nothing yet
    read_ahead = {budget_id_for("ann"), budget_id_for("bob"), CustomerLedger.create_id("cust-1")}
    assert read_ahead.isdisjoint(reads)
    # (The team's ledger is not among them: a fresh writer learns the budgets' team from the budgets themselves,
    # so it loads the ledger on its own, and its previous event is read from the store, as before.)
    assert reads == [TeamLedger.create_id("team-a")]
    assert second.verify_integrity().ok
