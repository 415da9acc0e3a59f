"""Tamper evidence and the auditors' view of the log, on a real event store (SQLite and PostgreSQL).

Every stored event carries ``__prev__``/``__hash__`` (a SHA-256 chain per aggregate); verify_integrity recomputes
it, and catches stored bytes changed, events removed and events replaced directly in the database. read_log is
the log as auditors read it; ``leeway export`` / ``leeway verify`` take it away and check it (and rebuild every
budget) offline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import JSONTranscoder, Mapper
from leeway.adapters import packing
from leeway.adapters.hash_chain import canonical, parse_state
from leeway.application import LeewayApplication, audit
from leeway.application.commands import (
    CloseBudget,
    SetCustomerCap,
    SetTeamCap,
    UpdatePolicy,
)
from leeway.domain.ids import budget_id_for, parse_action_id
from leeway.domain.errors import InvalidArgument, NotFound
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import (
    ActionKind,
)
from leeway.domain.tally import Cap

from builders import DETAILS, action_cmd, decide, make_policy, open_cmd, usd
from builders import reverse_cmd as reverse

HEX64 = re.compile(r"[0-9a-f]{64}")
BUDGET_TOPIC = "leeway.domain.budget:Budget."


# ============================================================================ helpers


def version_of(action_id: str) -> int:
    parsed = parse_action_id(action_id)
    assert parsed is not None
    return parsed[1]


def build_history(app, clock) -> dict[str, Any]:
    """A realistic history: caps, three budgets, recorded / pending (approved, denied, left waiting) / reversed
    actions, a rule bend, a policy update, a period rollover (two budget events in one save), a closed budget,
    and non-ASCII text. Returns the action ids worth tampering with."""
    app.execute(SetTeamCap(request_id=f"cap-{uuid4()}", team_id="team-a", cap=Cap(usd(5000), PeriodKind.MONTH)))
    app.execute(SetCustomerCap(request_id=f"ccap-{uuid4()}", cap=Cap(usd(5000), PeriodKind.MONTH)))
    app.execute(open_cmd("emp-1", "team-a", make_policy(1000, approvers=("mgr-1",)), display_name="Zoë Ångström"))
    app.execute(open_cmd("emp-2", "team-a", make_policy(500)))
    app.execute(open_cmd("emp-3", "team-b", make_policy(300, approvers=("mgr-1",))))
    app.execute(open_cmd("emp-4", "team-b"))

    first, _ = app.execute(action_cmd("emp-1", "17.25", customer="cust-1", reason="Café ☕ — 日本の顧客"))
    hold_ok, _ = app.execute(action_cmd("emp-1", 60, customer="cust-2"))
    hold_no, _ = app.execute(action_cmd("emp-1", 55, customer="cust-1"))
    to_reverse, _ = app.execute(action_cmd("emp-1", "12.50", kind=ActionKind.CREDIT, customer="cust-3"))
    assert first.state == "RECORDED" and hold_ok.state == hold_no.state == "PENDING_APPROVAL"
    clock.advance(timedelta(minutes=5))
    app.execute(decide(hold_ok.action_id, True))
    app.execute(decide(hold_no.action_id, False))
    app.execute(reverse(to_reverse.action_id))

    e2, _ = app.execute(action_cmd("emp-2", "20.10", customer="cust-2"))
    app.execute(action_cmd("emp-2", 0, kind=ActionKind.RULE_BEND, customer="cust-4"))
    app.execute(UpdatePolicy(request_id=f"up-{uuid4()}", employee_id="emp-2", policy=make_policy(800)))
    app.execute(action_cmd("emp-2", "5.05", customer="cust-1"))
    app.execute(reverse(e2.action_id))

    app.execute(action_cmd("emp-3", "7.77", kind=ActionKind.CREDIT, customer="cust-5"))
    waiting, _ = app.execute(action_cmd("emp-3", 70, customer="cust-5"))  # left waiting for approval
    assert waiting.state == "PENDING_APPROVAL"

    app.execute(action_cmd("emp-4", 3, customer="cust-6"))
    app.execute(CloseBudget(request_id=f"close-{uuid4()}", employee_id="emp-4", reason="left the company"))

    # Into the next month: the budget rolls over and records in one save (two chained events at once).
    clock.advance(timedelta(days=20))
    rolled, _ = app.execute(action_cmd("emp-1", "9.99", customer="cust-7"))
    app.execute(action_cmd("emp-1", "4.44", customer="cust-7"))
    return {"first": first.action_id, "rolled": rolled.action_id, "waiting": waiting.action_id}


EMPLOYEES = ("emp-1", "emp-2", "emp-3", "emp-4")


def all_notifications(app) -> list[Any]:
    return list(app.all_notifications())


def position_of(app, aggregate_id: UUID, version: int) -> int:
    for n in all_notifications(app):
        if n.originator_id == aggregate_id and n.originator_version == version:
            return int(n.id)
    raise AssertionError(f"no stored event {aggregate_id} v{version}")


def budget_records(app, employee: str) -> list[Any]:
    return [n for n in all_notifications(app) if n.originator_id == budget_id_for(employee)]


# ============================================================================ the chain as stored


def test_every_stored_event_is_chained(app, clock, rows) -> None:
    build_history(app, clock)
    notifications = all_notifications(app)
    assert len(notifications) > 60
    last_hash: dict[UUID, tuple[int, str]] = {}
    for n in notifications:
        state = parse_state(n.state)
        assert isinstance(state.get("__prev__"), str) and HEX64.fullmatch(state["__prev__"]), n
        assert isinstance(state.get("__hash__"), str) and HEX64.fullmatch(state["__hash__"]), n
        expected = audit.event_hash(state["__prev__"], str(n.originator_id), n.originator_version, n.topic, state)
        assert state["__hash__"] == expected, f"{n.topic} v{n.originator_version}: wrong hash"
        previous = last_hash.get(n.originator_id)
        if n.originator_version == 1:
            assert previous is None
            assert state["__prev__"] == audit.GENESIS
        else:
            assert previous is not None, f"{n.topic} v{n.originator_version}: earlier versions missing"
            assert previous[0] == n.originator_version - 1
            assert state["__prev__"] == previous[1], f"{n.topic} v{n.originator_version} does not link"
        last_hash[n.originator_id] = (n.originator_version, state["__hash__"])
        # The table holds exactly what the log hands out.
        assert rows.get(n.originator_id, n.originator_version) == (n.topic, bytes(n.state))

    # The chain keys never reach the domain: events and aggregates load as before.
    for event in app.events.get(budget_id_for("emp-1")):
        assert "__prev__" not in vars(event) and "__hash__" not in vars(event)
    assert app.get_budget("emp-1").employee_id == "emp-1"

    result = app.verify_integrity()
    assert result.ok, result.violations
    assert result.violations == []
    assert result.events_checked == len(notifications)

    for employee in EMPLOYEES:
        mine = app.verify_integrity(employee)
        assert mine.ok, (employee, mine.violations)
        assert mine.events_checked == app.get_budget(employee).version == len(budget_records(app, employee))


def test_one_pass_mapping_matches_the_general_path(app, clock) -> None:
    """The mapper encodes each event once (sorted keys, the hash over that text); the general path encodes,
    parses and re-encodes canonically. Both must give the same hash and the same state for every event type."""
    build_history(app, clock)
    mapper = app.mapper
    assert mapper._canonical_encoder is not None, "the one-pass path is the one in use"
    checked = 0
    for n in all_notifications(app):
        event = mapper.to_domain_event(n)
        mapper.begin()
        try:
            fast = mapper.to_stored_event(event)
            general = mapper._to_stored_event_reencoded(event)
        finally:
            mapper.discard()
        assert packing.is_packed(fast.state) and general.state[:1] == b"{", "packed by default; JSON in general"
        fast_state, general_state = parse_state(fast.state), parse_state(general.state)
        assert fast_state == general_state == parse_state(n.state), n.topic
        # Byte for byte: the stored row is the general path's canonical body, packed (the one pass transcodes
        # timestamps and amounts itself, without the encoder's default hook: it must give the same text).
        assert fast.state == packing.pack(general_state["__prev__"], general_state["__hash__"], canonical(general_state))
        assert fast.state == n.state, n.topic
        body = [key for key in fast_state if key not in ("__prev__", "__hash__")]
        assert list(fast_state) == sorted(body) + ["__prev__", "__hash__"]
        assert (fast.originator_id, fast.originator_version, fast.topic) == (n.originator_id, n.originator_version, n.topic)
        checked += 1
    assert checked > 60


def test_one_save_numbers_its_events_in_order(app, clock) -> None:
    """The recorder's insert (parallel arrays on PostgreSQL) gives a save's events increasing positions in the
    order they were saved, across aggregates."""
    from leeway.domain.actions import ActionRequest
    from leeway.domain.budget import Budget

    budgets = [
        Budget.open(employee_id=f"order-{i}", team_id="t-order", display_name="", policy=make_policy(), now=clock())
        for i in range(5)
    ]
    action = ActionRequest(customer_id="c", case_id="", kind=ActionKind.REFUND, amount=usd(1), reason="r",
                           details=dict(DETAILS[ActionKind.REFUND]))
    expected = []
    for budget in reversed(budgets):
        for _ in range(3):
            budget.record_action(action, request_id="", now=clock())
        expected += [(budget.id, version) for version in range(1, budget.version + 1)]
    recordings = app.save(*reversed(budgets))
    saved = [(r.notification.originator_id, r.notification.originator_version) for r in recordings]
    assert saved == expected
    positions = [r.notification.id for r in recordings]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    stored = [(n.originator_id, n.originator_version) for n in all_notifications(app) if n.id >= positions[0]]
    assert stored == expected
    assert app.verify_integrity().ok


def test_rollover_and_action_in_one_save_are_linked(app, clock) -> None:
    ids = build_history(app, clock)
    version = version_of(ids["rolled"])
    events = {n.originator_version: parse_state(n.state) for n in budget_records(app, "emp-1")}
    topics = {n.originator_version: n.topic for n in budget_records(app, "emp-1")}
    assert topics[version - 1].endswith("Budget.PeriodRolledOver")
    assert topics[version].endswith("Budget.ActionRecorded")
    assert events[version]["__prev__"] == events[version - 1]["__hash__"]
    assert events[version - 1]["__prev__"] == events[version - 2]["__hash__"]


def test_verify_integrity_arguments(app, clock) -> None:
    build_history(app, clock)
    with pytest.raises(NotFound) as info:
        app.verify_integrity("nobody")
    assert info.value.reason == "BUDGET_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        app.verify_integrity("bad id!")


def test_empty_log_verifies(app) -> None:
    result = app.verify_integrity()
    assert result.ok and result.events_checked == 0


# ============================================================================ tampering in the database


def test_changed_bytes_are_a_hash_mismatch(app, clock, rows) -> None:
    ids = build_history(app, clock)
    budget_id, version = parse_action_id(ids["first"])  # type: ignore[misc]
    topic, _ = rows.get(budget_id, version)
    assert topic.endswith("Budget.ActionRecorded")
    assert rows.text(budget_id, version).count(b'"17.25"') == 1
    rows.edit(budget_id, version, b'"17.25"', b'"1.25"')

    result = app.verify_integrity()
    assert not result.ok
    assert result.events_checked == len(all_notifications(app))
    assert [(v.aggregate_id, v.version, v.kind) for v in result.violations] == [
        (str(budget_id), version, "HASH_MISMATCH")
    ]
    assert result.violations[0].position == position_of(app, budget_id, version)
    assert result.violations[0].description


def test_changed_bytes_outside_budgets_are_caught(app, clock, rows) -> None:
    """Not only budgets: any aggregate's event (here the team's cap ledger) is covered."""
    build_history(app, clock)
    target = next(n for n in all_notifications(app) if n.topic.endswith("TeamLedger.ActionCounted"))
    assert b'"emp-1"' in rows.text(target.originator_id, target.originator_version)
    rows.edit(target.originator_id, target.originator_version, b'"emp-1"', b'"emp-9"', 1)
    result = app.verify_integrity()
    assert [(v.position, v.aggregate_id, v.version, v.kind) for v in result.violations] == [
        (target.id, str(target.originator_id), target.originator_version, "HASH_MISMATCH")
    ]


def test_removed_hash_fields_are_missing_hash(app, clock, rows) -> None:
    build_history(app, clock)
    budget_id = budget_id_for("emp-2")
    _, state = rows.get(budget_id, 2)
    plain_state = {k: v for k, v in parse_state(state).items() if k not in ("__prev__", "__hash__")}
    rows.set_state(budget_id, 2, json.dumps(plain_state).encode())
    result = app.verify_integrity()
    assert [(v.aggregate_id, v.version, v.kind) for v in result.violations] == [(str(budget_id), 2, "MISSING_HASH")]


def test_per_employee_verify_reports_changed_bytes(app, clock, rows) -> None:
    ids = build_history(app, clock)
    budget_id, version = parse_action_id(ids["first"])  # type: ignore[misc]
    position = position_of(app, budget_id, version)
    rows.edit(budget_id, version, b'"17.25"', b'"1.25"')

    assert app.verify_integrity("emp-2").ok  # another budget is untouched
    result = app.verify_integrity("emp-1")
    assert not result.ok
    assert [(v.aggregate_id, v.version, v.kind) for v in result.violations] == [
        (str(budget_id), version, "HASH_MISMATCH")
    ]
    # The violation names the event's position in the log, as the whole-log check does.
    assert result.violations[0].position == position


def test_deleted_middle_event(app, clock, rows) -> None:
    build_history(app, clock)
    budget_id = budget_id_for("emp-1")
    last = app.get_budget("emp-1").version
    assert last >= 6
    next_position = position_of(app, budget_id, 4)
    rows.delete(budget_id, 3)

    result = app.verify_integrity()
    assert not result.ok
    assert len(result.violations) == 1
    violation = result.violations[0]
    assert (violation.aggregate_id, violation.version, violation.position) == (str(budget_id), 4, next_position)
    assert violation.kind in ("VERSION_GAP", "PREV_HASH_MISMATCH")


def test_deleted_middle_event_per_employee(app, clock, rows) -> None:
    """VerifyIntegrity for one employee reports the gap (it must not fail on the broken history itself)."""
    build_history(app, clock)
    budget_id = budget_id_for("emp-1")
    rows.delete(budget_id, 3)
    result = app.verify_integrity("emp-1")
    assert not result.ok
    assert [(v.aggregate_id, v.version) for v in result.violations] == [(str(budget_id), 4)]
    assert result.violations[0].kind in ("VERSION_GAP", "PREV_HASH_MISMATCH")


def test_deleted_first_event(app, clock, rows) -> None:
    build_history(app, clock)
    budget_id = budget_id_for("emp-3")
    rows.delete(budget_id, 1)
    result = app.verify_integrity()
    assert [(v.aggregate_id, v.version, v.kind) for v in result.violations] == [(str(budget_id), 2, "VERSION_GAP")]


def test_forged_and_rehashed_event_breaks_the_next_link(app, clock, rows) -> None:
    ids = build_history(app, clock)
    budget_id, version = parse_action_id(ids["first"])  # type: ignore[misc]
    assert app.get_budget("emp-1").version > version
    topic, raw = rows.get(budget_id, version)
    state = parse_state(raw)
    forged = json.dumps(state).replace('"17.25"', '"0.25"')
    assert forged != json.dumps(state)
    forged_state = json.loads(forged)
    forged_state["__hash__"] = audit.event_hash(forged_state["__prev__"], str(budget_id), version, topic, forged_state)
    rows.set_state(budget_id, version, json.dumps(forged_state).encode())

    result = app.verify_integrity()
    assert not result.ok
    assert [(v.position, v.aggregate_id, v.version, v.kind) for v in result.violations] == [
        (position_of(app, budget_id, version + 1), str(budget_id), version + 1, "PREV_HASH_MISMATCH")
    ]


def test_reordered_events_are_caught(app, clock, rows) -> None:
    """Swapping two events' contents (each with its own valid hash) breaks the chain."""
    build_history(app, clock)
    budget_id = budget_id_for("emp-2")
    _, second = rows.get(budget_id, 2)
    _, third = rows.get(budget_id, 3)
    rows.set_state(budget_id, 2, third)
    rows.set_state(budget_id, 3, second)
    result = app.verify_integrity()
    assert [(v.aggregate_id, v.version) for v in result.violations] == [(str(budget_id), 2)]
    assert result.violations[0].kind in ("HASH_MISMATCH", "PREV_HASH_MISMATCH")


def test_every_broken_aggregate_is_reported_once(app, clock, rows) -> None:
    build_history(app, clock)
    b1, b2 = budget_id_for("emp-1"), budget_id_for("emp-2")
    rows.edit(b1, 2, b'"17.25"', b'"1.25"')
    # a second change further down the same chain: still the first link is named
    rows.edit(b1, 4, b'"cust-1"', b'"cust-x"')
    rows.delete(b2, 3)
    result = app.verify_integrity()
    assert sorted((v.aggregate_id, v.version) for v in result.violations) == sorted([(str(b1), 2), (str(b2), 4)])
    kinds = {v.aggregate_id: v.kind for v in result.violations}
    assert kinds[str(b1)] == "HASH_MISMATCH"
    assert kinds[str(b2)] in ("VERSION_GAP", "PREV_HASH_MISMATCH")


def test_garbage_bytes_are_reported_not_fatal(app, clock, rows) -> None:
    build_history(app, clock)
    budget_id = budget_id_for("emp-2")
    rows.set_state(budget_id, 3, b"\x00 not json at all")
    result = app.verify_integrity()
    assert result.events_checked == len(all_notifications(app))
    assert [(v.aggregate_id, v.version, v.kind) for v in result.violations] == [(str(budget_id), 3, "MISSING_HASH")]


# ============================================================================ the mapper's hash cache


def test_two_apps_alternating_on_one_budget(app_factory) -> None:
    one, two = app_factory(), app_factory()
    one.execute(open_cmd("emp-1", policy=make_policy(10000, limit=None)))
    apps = [one, two]
    for n in range(12):
        apps[n % 2].execute(action_cmd("emp-1", n + 1, customer=f"cust-{n % 3}"))
    # And both keep writing to the indexes they share (team ledger, customer ledgers, directory).
    two.execute(open_cmd("emp-2", policy=make_policy(10000, limit=None)))
    one.execute(action_cmd("emp-2", 7, customer="cust-0"))
    two.execute(action_cmd("emp-1", 8, customer="cust-0"))
    for a in apps:
        result = a.verify_integrity(full=True)
        assert result.ok, result.violations
        assert result.events_checked == len(all_notifications(a))
        assert a.verify_integrity("emp-1").ok
    assert one.get_budget("emp-1").version == 14
    assert one.get_budget("emp-1").spent.amount == sum(range(1, 13)) + 8


def test_lost_race_does_not_poison_the_cache(app_factory) -> None:
    """app one decides, then (inside its save) app two commits the same budget's next version first: one's save
    fails with an IntegrityError and is retried. The hashes of the failed attempt must never be used."""
    one, two = app_factory(), app_factory()
    one.execute(open_cmd("emp-1", policy=make_policy(10000, limit=None)))
    one.execute(action_cmd("emp-1", 1))
    attempts: list[int] = []
    real_save = one.save

    def racing_save(*objs: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            two.execute(action_cmd("emp-1", 2, customer="cust-2"))
        return real_save(*objs, **kwargs)

    one.save = racing_save  # type: ignore[method-assign]
    try:
        one.execute(action_cmd("emp-1", 3))
    finally:
        del one.save
    assert len(attempts) == 2, "the first attempt should have lost the race and been retried"
    # Everyone continues the chain from what was committed.
    one.execute(action_cmd("emp-1", 4))
    two.execute(action_cmd("emp-1", 5))
    one.execute(action_cmd("emp-1", 6))
    for a in (one, two):
        result = a.verify_integrity(full=True)
        assert result.ok, result.violations
    assert one.get_budget("emp-1").version == 7
    assert one.get_budget("emp-1").spent.amount == 21


@pytest.mark.parametrize("mode", ["shared", "replicas"])
def test_concurrent_writers_on_one_budget_keep_the_chain(app_factory, mode: str) -> None:
    main = app_factory()
    apps = [main] * 8 if mode == "shared" else [main, app_factory(), app_factory(), app_factory()] * 2
    main.execute(open_cmd("emp-1", policy=make_policy(100000, limit=None)))
    main.execute(open_cmd("emp-2", policy=make_policy(100000, limit=None)))
    per_thread = 8
    errors: list[BaseException] = []
    conflicts: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(apps))

    def count_conflicts(a) -> None:
        real = a.save

        def save(*objs: Any, **kwargs: Any) -> Any:
            from eventsourcing.persistence import IntegrityError

            try:
                return real(*objs, **kwargs)
            except IntegrityError:
                with lock:
                    conflicts.append(1)
                raise

        a.save = save

    for a in set(apps):
        count_conflicts(a)

    def work(a, worker: int) -> None:
        barrier.wait()
        try:
            for n in range(per_thread):
                a.execute(action_cmd(f"emp-{1 + (worker + n) % 2}", 1, customer=f"cust-{n % 3}"))
        except BaseException as error:  # noqa: BLE001
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=work, args=(a, i)) for i, a in enumerate(apps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for a in set(apps):
        del a.save
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    total = len(apps) * per_thread
    assert main.get_budget("emp-1").version + main.get_budget("emp-2").version == 2 + total
    if mode == "shared":
        # One process queues writers of a team on an in-process lock: no race is lost at all.
        assert not conflicts, f"{len(conflicts)} optimistic-concurrency races inside one process"
    else:
        assert conflicts, "no optimistic-concurrency race happened between the apps: the test proves nothing"
    for a in set(apps):
        result = a.verify_integrity(full=True)
        assert result.ok, result.violations
    # Writing on after the races, every app continues a valid chain.
    for a in set(apps):
        a.execute(action_cmd("emp-1", 1))
        a.execute(action_cmd("emp-2", 1))
    result = main.verify_integrity()
    assert result.ok, result.violations


# ============================================================================ read_log


def read_everything(app, *, limit: int = 7, **filters: Any) -> tuple[list[Any], int]:
    """Pages through read_log; returns (events, the position read up to)."""
    events: list[Any] = []
    position = 0
    while True:
        page = app.read_log(position, limit=limit, **filters)
        if not page:
            return events, position
        assert page[-1].is_marker, "a non-empty page ends with its marker"
        assert all(not e.is_marker for e in page[:-1])
        assert page[-1].position > position
        events += page[:-1]
        position = page[-1].position


def test_read_log_unfiltered(app, clock) -> None:
    build_history(app, clock)
    events, upto = read_everything(app)
    notifications = all_notifications(app)
    positions = [e.position for e in events]
    assert positions == list(range(1, len(notifications) + 1)), "strictly increasing, from 1, without gaps"
    assert upto == positions[-1]
    assert [(e.position, e.aggregate_id, e.version) for e in events] == [
        (n.id, str(n.originator_id), n.originator_version) for n in notifications
    ]
    # One big read gives the same events.
    assert app.read_log(0, limit=10_000)[:-1] == events
    # After the last position: nothing, not even a marker.
    assert app.read_log(upto) == []
    assert app.read_log(upto + 100) == []

    for e, n in zip(events, notifications):
        state = parse_state(n.state)
        assert e.event_type == n.topic.rpartition(":")[2]
        assert (e.hash, e.prev_hash) == (state["__hash__"], state["__prev__"])
        assert e.record_time is not None and e.record_time.tzinfo is not None
        json.dumps(e.payload)  # JSON-safe as it is
        assert "__hash__" not in e.payload and "__prev__" not in e.payload
        if n.topic.startswith(BUDGET_TOPIC):
            owner = next(emp for emp in EMPLOYEES if budget_id_for(emp) == n.originator_id)
            assert e.employee_id == owner, e
        else:
            assert e.employee_id == "", e

    recorded = [e for e in events if e.event_type == "Budget.ActionRecorded"]
    first = recorded[0]
    assert first.payload["amount"] == "17.25"
    assert first.payload["currency"] == "USD"
    assert first.payload["reason"] == "Café ☕ — 日本の顧客"
    assert all(isinstance(e.payload["amount"], str) for e in recorded)
    assert {e.event_type for e in events} >= {
        "Budget.Opened",
        "Budget.ActionRecorded",
        "Budget.ActionApproved",
        "Budget.ActionDenied",
        "Budget.ActionReversed",
        "Budget.PolicyUpdated",
        "Budget.PeriodRolledOver",
        "Budget.Closed",
    }
    # Events without employee_id in their data still name the budget's employee.
    approved = next(e for e in events if e.event_type == "Budget.ActionApproved")
    assert "employee_id" not in approved.payload or approved.payload["employee_id"] == "emp-1"
    assert approved.employee_id == "emp-1"


def test_read_log_filters(app, clock) -> None:
    build_history(app, clock)
    everything, upto = read_everything(app)

    recorded, upto_recorded = read_everything(app, event_types=("Budget.ActionRecorded",))
    assert recorded == [e for e in everything if e.event_type == "Budget.ActionRecorded"]
    assert len(recorded) == 12
    assert upto_recorded == upto, "the marker carries the position read even when filters dropped the events"

    two_types, _ = read_everything(app, event_types=("Budget.ActionReversed", "Budget.Opened"))
    assert two_types == [e for e in everything if e.event_type in ("Budget.ActionReversed", "Budget.Opened")]
    assert len(two_types) == 4 + 2

    for employee in EMPLOYEES:
        mine, _ = read_everything(app, employee_id=employee)
        assert mine == [e for e in everything if e.aggregate_id == str(budget_id_for(employee))]
        assert [e.version for e in mine] == list(range(1, app.get_budget(employee).version + 1))
        assert all(e.employee_id == employee for e in mine)

    both, _ = read_everything(app, employee_id="emp-2", event_types=("Budget.ActionRecorded",))
    assert [e.payload["amount"] for e in both] == ["20.10", "0", "5.05"]

    nobody, upto_nobody = read_everything(app, employee_id="nobody")
    assert nobody == [] and upto_nobody == upto
    with pytest.raises(InvalidArgument) as unknown:  # not an empty log: a filter that can match nothing
        read_everything(app, event_types=("Budget.ActionRecorded", "No.Such"))
    assert [v.field for v in unknown.value.violations] == ["event_types[1]"]
    with pytest.raises(InvalidArgument):
        app.read_log(0, employee_id="bad id!")

    # Resuming from any position gives the rest.
    middle = everything[len(everything) // 2].position
    rest, _ = read_everything(app)
    assert [e for e in rest if e.position > middle] == app.read_log(middle, limit=10_000)[:-1]


# ============================================================================ export and verify


def export_lines(app, after: int = 0) -> list[str]:
    """The event lines of an export (without its header and seal)."""
    return [audit.export_line(n) for n in app.all_notifications(after=after)]


def whole_export(app, after: int = 0) -> list[str]:
    """A whole export: header, event lines, seal."""
    return list(app.export(after))


def offline_mapper() -> Mapper:
    transcoder = JSONTranscoder()
    LeewayApplication.register_transcodings(LeewayApplication.__new__(LeewayApplication), transcoder)
    return Mapper(transcoder=transcoder)


def test_export_and_verify_in_python(app, clock) -> None:
    build_history(app, clock)
    lines = export_lines(app)
    assert len(lines) == len(all_notifications(app))
    records = list(audit.read_export(lines))
    assert [r.position for r in records] == [n.id for n in all_notifications(app)]
    result = audit.verify(records)
    assert result.ok, result.violations
    assert result.events_checked == len(lines)

    budgets, incomplete = audit.rebuild_budgets(records, offline_mapper())
    assert incomplete == []
    assert sorted(b.employee_id for b in budgets) == list(EMPLOYEES)
    for budget in budgets:
        view = budget.view()
        assert view == app.budget_at(budget.id, budget.version)
        assert budget.version == app.get_budget(budget.employee_id).version
        then = app.get_budget(budget.employee_id, as_of=view.update_time)
        assert (view.spent, view.remaining, view.held) == (then.spent, then.remaining, then.held)

    # One changed character in the file.
    index = next(i for i, line in enumerate(lines) if '"17.25"' in line)
    tampered = list(lines)
    tampered[index] = lines[index].replace('"17.25"', '"1.25"')
    broken = audit.verify(audit.read_export(tampered))
    assert [(v.position, v.kind) for v in broken.violations] == [(records[index].position, "HASH_MISMATCH")]
    # A line left out.
    budget_lines = [i for i, r in enumerate(records) if r.aggregate_id == str(budget_id_for("emp-2"))]
    dropped = lines[: budget_lines[2]] + lines[budget_lines[2] + 1 :]
    gap = audit.verify(audit.read_export(dropped))
    assert [(v.position, v.kind) for v in gap.violations] == [(records[budget_lines[3]].position, "VERSION_GAP")]
    with pytest.raises(ValueError):
        list(audit.read_export(["not json"]))


def run_cli(*args: str, database_url: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    if database_url:
        env["LEEWAY_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "leeway.cli", *args],
        check=False,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


def cli_budgets(stdout: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            found[item["employee_id"]] = item
    return found


def verify_cleanly(file: Path, count: int) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    """`leeway verify FILE` finds nothing broken in ``count`` events; returns its result and the budgets it rebuilt."""
    checked = run_cli("verify", str(file), cwd=file.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "BROKEN" not in checked.stdout
    assert f"{count} events checked" in checked.stderr
    return checked, cli_budgets(checked.stdout)


def assert_matches_app(app, line: dict[str, Any]) -> None:
    employee = line["employee_id"]
    now = app.get_budget(employee)
    # The app's view of the budget as of its last event (what the file alone can tell: the clock has moved on
    # since, past a period end and a hold's timeout, which get_budget without as_of would apply).
    last = app.budget_at(budget_id_for(employee), now.version)
    then = app.get_budget(employee, as_of=last.update_time)
    assert line["version"] == now.version == then.version
    assert Decimal(line["spent"]) == last.spent.amount == then.spent.amount
    assert Decimal(line["remaining"]) == last.remaining.amount == then.remaining.amount
    assert Decimal(line["held"]) == last.held.amount == then.held.amount
    assert Decimal(line["allowance"]) == last.allowance.amount
    assert line["currency"] == last.allowance.currency
    assert line["state"] == last.state
    assert line["policy_version"] == last.policy_version
    assert line["period_start"] == last.period_start.isoformat()


def test_export_and_verify_with_the_cli(app, clock, database_url, tmp_path) -> None:
    build_history(app, clock)
    file = tmp_path / "events.jsonl"
    exported = run_cli("export", "-o", str(file), database_url=database_url, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    count = len(all_notifications(app))
    written = file.read_text(encoding="utf-8").splitlines()
    assert len(written) == count + 2, "a header, the events, a seal"
    assert written == whole_export(app)
    assert written[1:-1] == export_lines(app)

    checked, budgets = verify_cleanly(file, count)
    assert "OK" in checked.stderr
    assert sorted(budgets) == list(EMPLOYEES)
    for line in budgets.values():
        assert_matches_app(app, line)
    assert budgets["emp-4"]["state"] == "CLOSED"
    assert Decimal(budgets["emp-3"]["held"]) == 70

    # Tamper with one line of the file: exit 1, and the broken link is named by its position.
    lines = file.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if '"20.10"' in line)
    position = json.loads(lines[index])["position"]
    lines[index] = lines[index].replace('"20.10"', '"2.10"')
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    broken = run_cli("verify", str(bad), cwd=tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    broken_lines = [line for line in broken.stdout.splitlines() if line.startswith("BROKEN")]
    assert len(broken_lines) == 1, broken.stdout
    assert broken_lines[0].startswith(f"BROKEN at position {position}:")
    assert str(budget_id_for("emp-2")) in broken_lines[0]
    assert "HASH_MISMATCH" in broken_lines[0]
    assert "BROKEN" in broken.stderr

    # Not an export at all: a usage error, not a verdict.
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n", encoding="utf-8")
    assert run_cli("verify", str(junk), cwd=tmp_path).returncode == 2


def test_partial_export_verifies(app, clock, database_url, tmp_path) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(1000, limit=None)))
    app.execute(open_cmd("emp-2", policy=make_policy(1000, limit=None)))
    app.execute(open_cmd("emp-9", policy=make_policy(1000, limit=None)))  # nothing happens to emp-9 later
    app.execute(action_cmd("emp-1", "11.11"))
    app.execute(action_cmd("emp-2", "22.22"))
    after = app.recorder.max_notification_id()
    assert after
    app.execute(action_cmd("emp-1", "1.01"))
    app.execute(open_cmd("emp-3", policy=make_policy(1000, limit=None)))
    app.execute(action_cmd("emp-3", "3.33"))
    app.execute(action_cmd("emp-2", "2.02"))
    app.execute(action_cmd("emp-3", "4.44"))

    file = tmp_path / "partial.jsonl"
    exported = run_cli("export", "--after", str(after), "-o", str(file), database_url=database_url, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    sealed = file.read_text(encoding="utf-8").splitlines()
    assert sealed == whole_export(app, after)
    assert json.loads(sealed[0])["header"]["after"] == after
    lines = sealed[1:-1]
    assert lines == export_lines(app, after)
    assert json.loads(lines[0])["position"] == after + 1

    checked, budgets = verify_cleanly(file, len(lines))
    assert "2 budgets start before this export (not rebuilt)" in checked.stderr
    assert sorted(budgets) == ["emp-3"]
    assert_matches_app(app, budgets["emp-3"])

    # The Python functions agree: the chains of emp-1 and emp-2 are trusted from their first record.
    records = list(audit.read_export(lines))
    assert audit.verify(records, partial=True).ok
    full = audit.verify(records)  # without partial, the missing beginnings are gaps
    assert {v.aggregate_id for v in full.violations} >= {str(budget_id_for("emp-1")), str(budget_id_for("emp-2"))}
    assert all(v.kind == "VERSION_GAP" for v in full.violations)
    rebuilt, incomplete = audit.rebuild_budgets(records, offline_mapper())
    assert [b.employee_id for b in rebuilt] == ["emp-3"]
    assert incomplete == sorted([str(budget_id_for("emp-1")), str(budget_id_for("emp-2"))])

    # Tampering inside a partial export is still caught.
    index = next(i for i, line in enumerate(sealed) if '"2.02"' in line)
    sealed[index] = sealed[index].replace('"2.02"', '"9.02"')
    bad = tmp_path / "partial-tampered.jsonl"
    bad.write_text("\n".join(sealed) + "\n", encoding="utf-8")
    broken = run_cli("verify", str(bad), cwd=tmp_path)
    assert broken.returncode == 1
    assert f"BROKEN at position {json.loads(sealed[index])['position']}:" in broken.stdout


def test_export_to_stdout(app, clock, database_url, tmp_path) -> None:
    app.execute(open_cmd("emp-1"))
    app.execute(action_cmd("emp-1", "1.50", reason="naïve 🎁"))
    exported = run_cli("export", database_url=database_url, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    lines = [line for line in exported.stdout.splitlines() if line.strip()]
    assert lines[1:-1] == export_lines(app)
    assert audit.verify(audit.read_export(lines)).ok
    assert audit.verify_export(lines).ok
