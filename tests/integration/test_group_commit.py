"""Group commit (LeewayApplication.execute with batch_max > 1) on SQLite and PostgreSQL: several commands decided
on one shared set of aggregates and saved in one transaction. A refused command never fails its neighbours and
leaves nothing behind; commands on one aggregate see each other; a store failure fails only its batch and leaks
nothing into the next one; idempotency holds inside and across batches; two replicas on one database never
overspend, lose or duplicate an action."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from leeway.application import LeewayApplication
from leeway.application.commands import (
    DecideAction,
    OpenBudget,
    RecordAction,
    SetCustomerCap,
    SetTeamCap,
    UpdatePolicy,
)
from leeway.domain.budget import Budget
from leeway.domain.ids import budget_id_for, format_action_id
from leeway.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from leeway.domain.ledgers import TeamLedger
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import ActionKind, Policy
from leeway.domain.tally import Cap
from eventsourcing.persistence import OperationalError
from structlog.testing import capture_logs

import builders
from builders import drain, action_cmd, make_policy, usd


def policy(
    allowance: int = 100, *, limit: int | None = None, period: PeriodKind = PeriodKind.MONTH, approvers: tuple[str, ...] = ()
) -> Policy:
    return make_policy(allowance, limit=limit, period=period, approvers=approvers, kinds=(ActionKind.REFUND, ActionKind.GIFT), rules=())


def open_cmd(employee: str, team: str = "team-a", allowance: int = 100, **kwargs: Any) -> OpenBudget:
    return builders.open_cmd(employee, team, policy(allowance, **kwargs), display_name=employee)


def spend(employee: str, amount: str | int, *, customer: str = "cust-1", request_id: str | None = None) -> RecordAction:
    return action_cmd(employee, amount, customer=customer, request_id=request_id or None)


def recorded(app: LeewayApplication, employee: str) -> list[Any]:
    return [e for e in app.events.get(budget_id_for(employee)) if isinstance(e, Budget.ActionRecorded)]


def all_request_ids_in_log(app: LeewayApplication) -> Counter[str]:
    """How often each request_id appears on an ActionRecorded event anywhere in the log."""
    found: Counter[str] = Counter()
    for n in app.all_notifications():
        if n.topic.endswith("Budget.ActionRecorded"):
            found[app.mapper.to_domain_event(n).request_id] += 1
    return found


@pytest.fixture
def app(app_factory) -> LeewayApplication:
    return app_factory()


# ============================================================================ one batch, many commands


def test_refused_commands_do_not_fail_their_neighbours(app) -> None:
    app.execute(open_cmd("ann", allowance=100, limit=50))
    app.execute(open_cmd("bob", allowance=100))
    before = app.recorder.max_notification_id()
    bad_time = dataclasses.replace(spend("ann", 5), occur_time=app.clock() + timedelta(hours=1))
    answers = app.execute_batch([
        spend("ann", 20),              # ok
        spend("ann", 60),              # over the per-action limit
        spend("nobody", 5),            # no budget
        spend("bob", 30),              # ok
        spend("ann", "0.001"),         # invalid (too many decimals): refused before the batch
        bad_time,                      # refused by decide (occur_time too far ahead)
        spend("ann", 25),              # ok, sees the first one
    ])
    assert isinstance(answers[1], PreconditionFailed) and answers[1].reason == "PER_ACTION_LIMIT_EXCEEDED"
    assert isinstance(answers[2], NotFound)
    assert isinstance(answers[4], InvalidArgument)
    assert isinstance(answers[5], InvalidArgument)
    first, _ = answers[0]
    last, last_budget = answers[6]
    assert last_budget.spent.amount == 45
    assert answers[3][1].spent.amount == 30
    # Consecutive versions: nothing the refused commands triggered was kept.
    assert int(last.budget_version) == int(first.budget_version) + 1
    assert app.get_budget("ann").spent.amount == 45
    assert app.get_budget("bob").spent.amount == 30
    assert [e.amount for e in recorded(app, "ann")] == [20, 25]
    # One transaction: the batch's events are consecutive in the log, and the chain verifies.
    assert app.verify_integrity().ok
    assert app.writer.batches_committed >= 1
    new = [app.mapper.to_domain_event(n) for n in app.all_notifications(after=before)]
    saved_requests = [e.request_id for e in new if type(e).__name__ == "Recorded"]
    assert saved_requests == [answers[0][0].request_id, answers[3][0].request_id, answers[6][0].request_id]


def test_a_refusal_after_some_events_is_undone(app) -> None:
    """TEAM_CAP_EXCEEDED is found after the budget has counted the action; CUSTOMER_CAP_EXCEEDED after the team
    ledger has: both must be taken back while the neighbours in the batch keep theirs."""
    app.execute(SetTeamCap(request_id="cap", team_id="team-a", cap=Cap(usd(100), PeriodKind.MONTH)))
    app.execute(SetCustomerCap(request_id="ccap", cap=Cap(usd(60), PeriodKind.MONTH)))
    app.execute(open_cmd("ann", allowance=1000))
    app.execute(open_cmd("bob", allowance=1000))
    answers = app.execute_batch([
        spend("ann", 40, customer="c1"),
        spend("bob", 70, customer="c2"),   # team: 40 + 70 > 100 -> refused after ann's budget... bob's budget counted
        spend("ann", 30, customer="c1"),   # team 70 ok; customer c1: 40 + 30 > 60 -> refused after the team counted
        spend("bob", 30, customer="c2"),   # team 70 + 30 = 100 ok, customer c2 30 ok
    ])
    assert isinstance(answers[1], PreconditionFailed) and answers[1].reason == "TEAM_CAP_EXCEEDED"
    assert isinstance(answers[2], PreconditionFailed) and answers[2].reason == "CUSTOMER_CAP_EXCEEDED"
    assert answers[3][1].spent.amount == 30
    assert app.get_team("team-a").usage.spent.amount == 70
    assert app.get_customer_usage("c1").usage.spent.amount == 40
    assert app.get_customer_usage("c2").usage.spent.amount == 30
    assert [e.amount for e in recorded(app, "ann")] == [40]
    assert [e.amount for e in recorded(app, "bob")] == [30]
    team = app.repository.get(TeamLedger.create_id("team-a"))
    assert [type(e).__name__ for e in app.events.get(team.id)][-2:] == ["ActionCounted", "ActionCounted"]
    assert app.verify_integrity().ok


def test_commands_on_one_budget_see_each_other(app) -> None:
    app.execute(open_cmd("ann", allowance=100))
    answers = app.execute_batch([spend("ann", 60), spend("ann", 60), spend("ann", 30), spend("ann", 11)])
    assert isinstance(answers[1], PreconditionFailed) and answers[1].reason == "BUDGET_EXHAUSTED"
    assert isinstance(answers[3], PreconditionFailed) and answers[3].reason == "BUDGET_EXHAUSTED"
    assert [a[1].spent.amount for a in (answers[0], answers[2])] == [60, 90]
    assert [a[1].remaining.amount for a in (answers[0], answers[2])] == [40, 10]
    assert app.get_budget("ann").spent.amount == 90
    # The responses rendered from memory are what the store gives back.
    for action, budget in (answers[0], answers[2]):
        assert app.get_action(action.action_id) == action
        assert app.budget_at(budget_id_for("ann"), budget.version) == budget
    assert app.verify_integrity().ok


def test_open_act_approve_and_change_policy_in_one_batch(app, clock) -> None:
    """Commands that read events of the batch that are not saved yet (an action to approve, a recount)."""
    budget_id = budget_id_for("ann")
    answers = app.execute_batch([
        open_cmd("ann", allowance=100, limit=50, approvers=("mgr",)),
        spend("ann", 30, customer="c1"),
        spend("ann", 80, customer="c1"),  # over the per-action limit: pending approval
        DecideAction(request_id="ok", action_id=format_action_id(budget_id, 3), approver_id="mgr", note="", approve=True),
        UpdatePolicy(request_id="weekly", employee_id="ann", policy=policy(100, limit=50, period=PeriodKind.WEEK,
                                                                           approvers=("mgr",))),
    ])
    for answer in answers:
        assert not isinstance(answer, Exception), answer
    assert answers[2][0].state == "PENDING_APPROVAL"
    action, budget = answers[3].action, answers[3].budget
    assert action.state == "APPROVED" and budget.spent.amount == 110
    # The week of 2025-03-14 contains the day of both actions: the recount keeps them for customer c1.
    final = app.repository.get(budget_id)
    assert final.customer_spent == {"c1": Decimal(110)}
    assert answers[4].spent.amount == 110
    assert app.verify_integrity().ok


def test_same_request_id_in_one_batch_and_across_batches(app) -> None:
    app.execute(open_cmd("ann", allowance=100))
    answers = app.execute_batch([
        spend("ann", 10, request_id="r1"),
        spend("ann", 10, request_id="r1"),   # the same request again: the first one's answer
        spend("ann", 20, request_id="r1"),   # the same id for something else
        spend("ann", 500, request_id="r2"),  # refused: no record ...
        spend("ann", 5, request_id="r2"),    # ... so the id is free for a new attempt
    ])
    assert answers[0] == answers[1]
    assert isinstance(answers[2], AlreadyExists) and answers[2].reason == "REQUEST_ID_REUSED"
    assert isinstance(answers[3], PreconditionFailed)
    assert answers[4][1].spent.amount == 15
    # Across batches (the writer's memory of recent requests, and the store after a restart).
    again = app.execute_batch([spend("ann", 10, request_id="r1"), spend("ann", 99, request_id="r2")])
    assert again[0] == answers[0]
    assert isinstance(again[1], AlreadyExists)
    assert app.execute(spend("ann", 10, request_id="r1")) == answers[0]
    assert [e.request_id for e in recorded(app, "ann")] == ["r1", "r2"]


def test_a_retry_older_than_the_writers_memory_is_replayed(app) -> None:
    """The writer remembers recent requests; older ones it may take as new (SQLite, and PostgreSQL's fast path).
    Decided again, the retry either succeeds (its save then fails on the record's unique key and the batch is
    decided again, finding the record) or is refused by its own earlier effect (the record is looked for before
    refusing): either way the caller gets the first answer, and nothing is recorded twice."""
    app.execute(open_cmd("ann", allowance=100))
    for _ in range(2):
        app.execute(spend("ann", 1))
    still_fits = app.execute(spend("ann", 10, request_id="fits"))
    all_of_it = app.execute(spend("ann", 88, request_id="all-of-it"))
    app.writer.memory.recent_records.clear()  # as if 10,000 other requests had come since
    answers = app.execute_batch([spend("ann", 10, request_id="fits"), spend("ann", 88, request_id="all-of-it")])
    assert answers == [still_fits, all_of_it]
    assert app.execute(spend("ann", 88, request_id="all-of-it")) == all_of_it  # through the writer thread too
    assert app.get_budget("ann").spent.amount == 100
    counts = Counter(e.request_id for e in recorded(app, "ann"))
    assert counts["fits"] == 1 and counts["all-of-it"] == 1


def test_idempotent_across_replicas_in_one_batch(app_factory) -> None:
    first, second = app_factory(), app_factory()
    first.execute(open_cmd("ann", allowance=100))
    original = first.execute(spend("ann", 10, request_id="r1"))
    # The second replica has never seen r1: its batch finds the record (after the version conflict).
    answers = second.execute_batch([spend("ann", 20), spend("ann", 10, request_id="r1"), spend("ann", 30)])
    assert answers[1] == original
    assert answers[2][1].spent.amount == 60
    assert Counter(e.request_id for e in recorded(second, "ann"))["r1"] == 1


# ============================================================================ failures


class FlakyApp(LeewayApplication):
    """Fails the next ``fail_saves`` saves as a database would (after the batch was decided)."""

    fail_saves = 0
    before_save: Any = None

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        if self.before_save is not None:
            hook, self.before_save = self.before_save, None
            hook()
        if self.fail_saves:
            self.fail_saves -= 1
            # Consume the events as a real failed save would (collect_events pops them), then fail.
            for obj in objs:
                obj.collect_events()
            raise OperationalError("connection lost (injected)")
        return super().save(*objs, **kwargs)


@pytest.fixture
def flaky_factory(app_factory):
    return lambda: app_factory(FlakyApp)


def test_store_failure_fails_only_its_batch_and_leaks_nothing(flaky_factory) -> None:
    app = flaky_factory()
    app.execute(open_cmd("ann", allowance=100))
    app.execute(open_cmd("bob", allowance=100))
    app.execute_batch([spend("ann", 10), spend("bob", 10)])  # the writer now caches both budgets
    before = app.recorder.max_notification_id()
    app.fail_saves = 1
    failed = app.execute_batch([spend("ann", 20, request_id="lost-1"), spend("bob", 20, request_id="lost-2"),
                                spend("ann", 500, request_id="lost-3")])
    assert all(isinstance(answer, Unavailable) for answer in failed), failed
    assert app.recorder.max_notification_id() == before
    # The next batch starts from what is stored: nothing of the failed batch (in memory) leaks into it.
    after = app.execute_batch([spend("ann", 5), spend("bob", 5, request_id="lost-2")])
    assert after[0][1].spent.amount == 15
    assert after[1][1].spent.amount == 15
    assert int(after[0][0].budget_version) == recorded(app, "ann")[0].originator_version + 1
    assert all_request_ids_in_log(app)["lost-1"] == 0
    assert app.get_budget("ann").spent.amount == 15
    assert app.verify_integrity().ok


def test_store_failure_through_the_writer_thread(flaky_factory) -> None:
    app = flaky_factory()
    app.execute(open_cmd("ann", allowance=1000))
    app.fail_saves = 1
    with pytest.raises(Unavailable):
        app.execute(spend("ann", 10, request_id="x"))
    assert app.execute(spend("ann", 10, request_id="x"))[1].spent.amount == 10
    assert app.get_budget("ann").spent.amount == 10


def test_version_conflict_decides_the_batch_again(flaky_factory) -> None:
    """Another replica writes one of the batch's aggregates between its decision and its save."""
    app, other = flaky_factory(), flaky_factory()
    app.execute(open_cmd("ann", allowance=100))
    app.execute(spend("ann", 10))  # cached by app's writer
    app.before_save = lambda: other.execute(spend("ann", 50, request_id="other"))
    answers = app.execute_batch([spend("ann", 30), spend("ann", 20)])
    assert app.writer.batch_conflicts == 1
    assert answers[0][1].spent.amount == 90
    assert isinstance(answers[1], PreconditionFailed) and answers[1].reason == "BUDGET_EXHAUSTED"
    assert app.get_budget("ann").spent.amount == 90
    assert app.verify_integrity().ok


def test_concurrent_callers_share_batches(app) -> None:
    app.execute(open_cmd("ann", allowance=10_000))
    committed = app.writer.batches_committed
    results: list[Any] = []
    with app.writer.lock:  # the writer waits: callers queue up behind it
        threads = [threading.Thread(target=lambda: results.append(app.execute(spend("ann", 1)))) for _ in range(20)]
        for t in threads:
            t.start()
        # The writer may have taken the first few before it blocked; the others wait in the queue.
        give_up = time.monotonic() + 10
        while len(app.writer.queue) < 15 and time.monotonic() < give_up:
            time.sleep(0.01)
        time.sleep(0.2)
    for t in threads:
        t.join(30)
    assert len(results) == 20
    assert app.writer.batches_committed - committed <= 3
    assert sorted(b.spent.amount for _, b in results) == list(range(1, 21))


def test_batch_max_one_takes_the_same_path_one_command_at_a_time(database_url, clock) -> None:
    """LEEWAY_BATCH_MAX=1: the writer's batches hold one command each (no second write path); concurrent callers
    queue, every request is decided once, a budget is never overspent and retries are replayed."""
    from leeway.settings import Settings

    app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env(), clock=clock, batch_max=1)
    try:
        app.execute(open_cmd("ann", allowance=30))
        committed = app.writer.batches_committed
        requests = [spend("ann", 1, request_id=f"one-{i}") for i in range(40)]
        refused, errors = drain(requests, 8, lambda _, command: app.execute(command), expected=(PreconditionFailed,))
        assert errors == []
        assert len(refused) == 10 and {r.reason for r in refused} == {"BUDGET_EXHAUSTED"}
        assert app.writer.batches_committed - committed == 40  # one batch per command (refusals too)
        assert app.get_budget("ann").spent.amount == 30
        again = app.execute(requests[0])  # a retry: answered from its request record, nothing new
        assert again[0].request_id == "one-0" and app.get_budget("ann").spent.amount == 30
        assert len(recorded(app, "ann")) == 30
    finally:
        app.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names are read from /proc (Linux)")
def test_the_writer_thread_has_its_name_at_the_os_level(app) -> None:
    """`top -H`, /proc and `make bench` tell the writer's CPU time from the gRPC threads' by this name."""
    app.execute(open_cmd("ann"))
    writer = app.writer.thread
    assert writer is not None and writer.native_id is not None
    assert Path(f"/proc/self/task/{writer.native_id}/comm").read_text().strip() == "leeway-writer"


def test_callers_are_answered_before_the_snapshots_are_stored(app) -> None:
    """Snapshots (and waking the projections) follow the writer's answers: a slow snapshot insert delays nobody."""
    app.snapshotting_intervals = {**app.snapshotting_intervals, Budget: 2}
    app.execute(open_cmd("ann", allowance=100))
    recorder = app.snapshots.recorder
    insert = recorder.insert_events
    entered, release = threading.Event(), threading.Event()
    woken: list[bool] = []
    app.save_listeners.append(lambda: woken.append(release.is_set()))

    def slow_insert(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return insert(*args, **kwargs)

    recorder.insert_events = slow_insert  # type: ignore[method-assign]
    try:
        action, budget = app.execute(spend("ann", 10))  # version 2: a snapshot is due
        assert budget.spent.amount == 10
        assert entered.wait(10)  # the writer is storing the snapshot now, after the answer
        release.set()
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while not recorder.select_events(budget_id_for("ann")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s.originator_version for s in recorder.select_events(budget_id_for("ann"))] == [2]
    assert woken and woken[-1] is True  # the projections were woken after the snapshot, after the answer


def test_a_snapshot_that_cannot_be_stored_fails_nothing(app) -> None:
    """Snapshots are a cache: a snapshot insert that fails is logged, and the save that committed stands (it used
    to fail the batch's callers after their events were stored)."""
    app.snapshotting_intervals = {**app.snapshotting_intervals, Budget: 2}
    app.execute(open_cmd("ann", allowance=100))
    recorder = app.snapshots.recorder

    def failing_insert(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("the snapshot table is gone (injected)")

    recorder.insert_events = failing_insert  # type: ignore[method-assign]
    with capture_logs() as logs:
        action, budget = app.execute(spend("ann", 10))
    assert budget.spent.amount == 10 and app.get_budget("ann").spent.amount == 10
    assert [entry["event"] for entry in logs].count("snapshot.not_stored") == 1, logs
    assert app.verify_integrity().ok


def test_close_drains_the_queue_and_refuses_new_work(app_factory) -> None:
    app = app_factory()
    app.execute(open_cmd("ann", allowance=10_000))
    outcomes: list[Any] = []

    def call() -> None:
        try:
            outcomes.append(app.execute(spend("ann", 1)))
        except Unavailable as error:
            outcomes.append(error)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    app.close()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 10 and not any(t.is_alive() for t in threads)
    with pytest.raises(Unavailable):
        app.execute(spend("ann", 1))


# ============================================================================ two replicas under load


def test_two_replicas_under_concurrent_load(app_factory) -> None:
    replicas = [app_factory(), app_factory()]
    employees = ["ann", "bob", "cat"]
    for e in employees:
        replicas[0].execute(open_cmd(e, "team-a", allowance=200))
    replicas[0].execute(SetTeamCap(request_id="cap", team_id="team-a", cap=Cap(usd(450), PeriodKind.MONTH)))
    # 8 threads per replica, 150 requests of 10 (1,500 asked, 600 allowed by the budgets, 450 by the team cap);
    # every 5th request is sent twice, once to each replica, with the same request_id.
    commands = []
    for i in range(150):
        command = spend(employees[i % 3], 10, customer=f"c{i % 7}")
        commands.append((i % 2, command))
        if i % 5 == 0:
            commands.append(((i + 1) % 2, command))
    accepted: dict[str, Any] = {}
    lock = threading.Lock()

    def send(_: int, item: tuple[int, RecordAction]) -> None:
        index, command = item
        action, _ = replicas[index].execute(command)
        with lock:
            if command.request_id in accepted:
                assert accepted[command.request_id] == action  # a replay: the same answer
            accepted[command.request_id] = action

    refused, errors = drain(commands, 16, send, expected=(PreconditionFailed, Conflict), timeout=180)
    refusals = Counter(e.reason for e in refused)  # type: ignore[attr-defined]
    assert not errors, errors[:3]
    check = replicas[1]
    in_log = all_request_ids_in_log(check)
    assert set(in_log) == set(accepted) and set(in_log.values()) == {1}  # none lost, none twice
    total = sum(e.amount for emp in employees for e in recorded(check, emp))
    assert total == 10 * len(accepted) == 450  # the team cap is reached exactly, never passed
    assert refusals["TEAM_CAP_EXCEEDED"] > 0
    assert check.get_team("team-a").usage.spent.amount == 450
    for e in employees:
        assert check.get_budget(e).spent.amount <= 200
    assert sum(check.get_customer_usage(f"c{i}").action_count for i in range(7)) == 45
    assert check.verify_integrity().ok
