"""Stored events are a contract: one scenario of every command (successes, replays and refusals) run against a
fresh SQLite log must store exactly the events, topics and hash-chain verification that the code before the
issue-17 restructuring stored, and refuse with exactly the same reasons, messages and metadata.

``golden/scenario.txt`` was written by the code at commit 468c048 (before the restructuring) and must never be
regenerated to make this test pass: a difference is a change to the stored format or the wire. The library's
own ``timestamp`` and the hash fields are left out (the timestamp is the wall clock); the chain is verified.

Run with batch_max 1 too: batches of one go through the same writer (LEEWAY_BATCH_MAX=1).

Aggregate ids are not in the golden lines. The one id the issue-18 scoping of request_id changed is a request
record's, checked here by its logical key: ``request_key(actor, method, request_id)`` of the record's own fields
(it was ``leeway_id("request:<request_id>")``); the records' topics and fields are unchanged.

Issue 21 changed how a row encodes its state, not what it stores: rows are packed (``adapters/packing.py``: the same
canonical JSON, compressed, the two hashes as raw bytes). The lines compare the decoded state; the scenario runs
both packed (the default) and with the JSON encoding of older releases, whose rows must parse as JSON as they are."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from leeway.adapters import packing
from leeway.adapters.hash_chain import parse_state

from leeway.application import LeewayApplication
from leeway.application import commands as c
from leeway.application.idempotency import RequestRecord, request_key
from leeway.domain.money import Money
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import ActionKind, BendableRule, Escalation, EscalationMode, Policy
from leeway.domain.tally import Cap

GOLDEN = Path(__file__).parent / "golden" / "scenario.txt"


def usd(value: str | int) -> Money:
    return Money(Decimal(value), "USD")


def run_scenario(app: LeewayApplication, now: list[datetime]) -> list[str]:
    policy, _ = Policy.build(
        period_allowance=usd(500),
        period=PeriodKind.MONTH,
        per_action_limit=usd(100),
        allowed_kinds=[ActionKind.GIFT, ActionKind.RULE_BEND, ActionKind.REFUND],
        per_customer_limit=usd("150"),
        bendable_rules=[BendableRule("LATE", "x", 2, usd(30))],
        escalation=Escalation(EscalationMode.APPROVAL, timedelta(hours=2), ("boss",), "sup"),
    )
    assert policy is not None
    out: list[str] = []

    def run(command: Any) -> Any:
        try:
            return app.execute(command, actor="crm")
        except Exception as error:  # noqa: BLE001 - the refusal is what is compared
            out.append(
                repr(("err", type(command).__name__, type(error).__name__, getattr(error, "reason", ""), str(error),
                      getattr(error, "metadata", None)))
            )
            return None

    def gift(rid: str, employee: str, customer: str, amount: str, reason: str, kind: ActionKind = ActionKind.GIFT,
             details: dict[str, str] | None = None) -> Any:
        return run(c.RecordAction(rid, employee, customer, "k", kind, usd(amount), reason,
                                  details or {"gift_type": "flowers"}, None))

    run(c.OpenBudget("o1", "ann", "desk", "Ann", policy))
    run(c.OpenBudget("o2", "bob", "desk", "Bob", policy))
    run(c.OpenBudget("o1", "ann", "desk", "Ann", policy))  # a replay
    run(c.SetTeamCap("t1", "desk", Cap(usd(700), PeriodKind.MONTH)))
    run(c.SetCustomerCap("cc", Cap(usd(400), PeriodKind.MONTH)))
    a1 = gift("r1", "ann", "g1", "45.50", "late")
    a2 = gift("r2", "ann", "g1", "120", "big", ActionKind.REFUND, {"order_id": "o-1"})
    a3 = gift("r3", "bob", "g2", "10", "bend", ActionKind.RULE_BEND, {"rule_code": "LATE"})
    gift("r4", "bob", "g2", "10", "credit", ActionKind.CREDIT, {"account_ref": "x"})  # KIND_NOT_ALLOWED
    gift("r5", "bob", "g2", "10", "cur", details={"gift_type": "x"})
    gift("r5", "bob", "g2", "11", "cur", details={"gift_type": "x"})  # REQUEST_ID_REUSED
    now[0] += timedelta(minutes=5)
    run(c.DecideAction("d1", a2[0].action_id, "ann", "self", True, frozenset()))  # SELF_APPROVAL_NOT_ALLOWED
    run(c.DecideAction("d2", a2[0].action_id, "boss", "fine", True, frozenset()))
    run(c.DecideAction("d2", a2[0].action_id, "boss", "fine", True, frozenset()))  # a replay
    a6 = gift("r6", "ann", "g3", "130", "big2", ActionKind.REFUND, {"order_id": "o-2"})
    # carl decides by role, in the action's team (a role counts only in the caller's teams since issue 18)
    run(c.DecideAction("d3", a6[0].action_id, "carl", "role", False, frozenset({"sup"}), frozenset({"desk"})))
    a7 = gift("r7", "bob", "g3", "101", "big3", ActionKind.REFUND, {"order_id": "o-3"})
    run(c.ExpireAction("e0", a7[0].action_id))  # APPROVAL_NOT_DUE
    now[0] += timedelta(hours=3)
    run(c.ExpireAction("e1", a7[0].action_id))
    run(c.ReverseAction("v1", a1[0].action_id, "mistake", "boss"))
    run(c.ReverseAction("v2", a1[0].action_id, "mistake", "boss"))  # ACTION_ALREADY_REVERSED
    run(c.DocumentWin("w1", a3[0].action_id, "saved the stay", "thanks", "kept"))
    run(c.DocumentWin("w2", a3[0].action_id, "again", "", ""))  # WIN_ALREADY_DOCUMENTED
    run(c.UpdatePolicy("u1", "ann", policy, 0))
    now[0] += timedelta(days=40)
    gift("r8", "ann", "g1", "5", "next month", details={"gift_type": "x"})  # a new period
    run(c.CloseBudget("c1", "bob", "left"))
    gift("r9", "bob", "g1", "5", "closed", details={"gift_type": "x"})  # BUDGET_CLOSED
    for n in app.all_notifications():
        assert packing.is_packed(n.state) == app.mapper.pack, n.topic
        state = parse_state(n.state) if app.mapper.pack else json.loads(n.state)
        for key in ("timestamp", "__hash__", "__prev__"):
            state.pop(key, None)
        out.append(f"{n.originator_version} {n.topic} {json.dumps(state, sort_keys=True)}")
    out.append(f"verify {app.verify_integrity().ok}")
    return out


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("batch_max", [128, 1])
def test_the_log_is_stored_exactly_as_before(tmp_path: Path, batch_max: int, packed: bool) -> None:
    now = [datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)]
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "golden.sqlite")}
    app = LeewayApplication(env=env, clock=lambda: now[0], batch_max=batch_max)
    app.mapper.pack = packed
    try:
        lines = run_scenario(app, now)
        records = [
            (n.originator_id, parse_state(n.state))
            for n in app.all_notifications(topics=(RequestRecord.Recorded.TOPIC,))  # type: ignore[attr-defined]
        ]
    finally:
        app.close()
    expected = GOLDEN.read_text().splitlines()
    assert len(lines) == len(expected)
    for got, want in zip(lines, expected):
        assert got == want
    assert len(records) == 18
    for record_id, state in records:
        assert record_id == request_key(state["actor"], state["method"], state["request_id"])
