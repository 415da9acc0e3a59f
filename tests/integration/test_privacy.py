"""Crypto-shredding (issue 22) on SQLite and PostgreSQL: personal fields are stored encrypted, read back in clear,
and after an erasure read ``[erased]`` everywhere while amounts, limits, caps and the hash chain stay as they were;
logs written before the feature stay readable; an erasure racing actions for the same customer loses nothing and
breaks no limit."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any

import pytest
from builders import action_cmd, customer_cap, make_policy, open_cmd, usd
from integration.conftest import MASTER_KEY
from leeway.adapters.keystore import KeyStoreError, StaticMasterKey
from leeway.application import commands as c
from leeway.application.privacy import Privacy
from leeway.domain.errors import AlreadyExists, InvalidArgument, PreconditionFailed
from leeway.domain.policy import ActionKind, SplitDetection
from stored_rows import StoredRows

MASTER = StaticMasterKey(MASTER_KEY)
SECRET = "Jane Doe +1-555-0100 jane@example.com"


@pytest.fixture
def make(make_keyed):
    return make_keyed


def raw_states(database_url: str) -> list[bytes]:
    """Every stored event's JSON as stored (a packed row's body, decompressed: compression hides nothing)."""
    from leeway.adapters import packing

    rows = StoredRows(database_url)
    states = [bytes(r[0]) for r in rows._run(f"SELECT state FROM {rows.table}", ())]  # noqa: SLF001
    return [packing.unpack(s)[0] if packing.is_packed(s) else s for s in states]


def gift(employee: str, customer: str, amount: int | str, *, reason: str = SECRET, case: str = "",
         note: str = "for " + SECRET, request_id: str | None = None) -> c.RecordAction:
    return action_cmd(employee, amount, kind=ActionKind.RULE_BEND, customer=customer, reason=reason, case=case,
                      details={"rule_code": "LATE_FEE", "description": note}, request_id=request_id)


def test_personal_fields_are_stored_encrypted_and_read_in_clear(make, database_url: str) -> None:
    app = make()
    app.execute(open_cmd("ann", display_name="Ann Example"))
    action, _ = app.execute(gift("ann", "Cust-7", 20, case="case-1"))
    stored = b"\n".join(raw_states(database_url))
    for clear in (SECRET.encode(), b"cust-7", b"case-1", b"Ann Example"):
        assert clear not in stored
    assert b'"__pii__"' in stored
    view = app.get_action(action.action_id)
    assert (view.customer_id, view.case_id, view.reason) == ("cust-7", "case-1", SECRET)
    assert view.details == {"rule_code": "LATE_FEE", "description": "for " + SECRET}
    assert app.get_budget("ann").display_name == "Ann Example"
    assert app.verify_integrity().ok
    # A second application (a restart, another replica) reads it with the same master key...
    assert make().get_action(action.action_id).reason == SECRET
    # ... and refuses to start with another one, saying why.
    with pytest.raises(KeyStoreError, match="LEEWAY_MASTER_KEY_FILE"):
        make(StaticMasterKey(b"\x01" * 32))


def test_erasure_erases_everywhere_and_changes_no_figure(make) -> None:
    app = make()
    app.execute(open_cmd("ann", policy=make_policy(allowance=500, limit=100, per_customer=100)))
    app.execute(open_cmd("bob", policy=make_policy(allowance=500, limit=100)))
    app.execute(customer_cap(usd(150)))
    first, _ = app.execute(gift("ann", "Jane-1", 60, case="c-1"))
    app.execute(c.DocumentWin("w1", first.action_id, "kept " + SECRET, "thanks, " + SECRET, "stayed"))
    other, _ = app.execute(gift("bob", "other-9", 10, reason="not erased", note="kept"))
    before = (app.get_budget("ann").spent, app.get_budget("bob").spent)

    privacy = Privacy(app)
    result = privacy.erase_customer("erase-1", "JANE-1", "GDPR art. 17 request #1", actor="dpo")
    view = app.get_action(first.action_id)
    assert view.customer_id == f"[erased:{result.pseudonym}]" and view.case_id.startswith("[erased:")
    assert view.reason == "[erased]" and view.details["description"] == "[erased]"
    assert view.details["rule_code"] == "LATE_FEE"  # not personal: limits count bends per rule
    assert view.win is not None and (view.win.story, view.win.customer_quote) == ("[erased]", "[erased]")
    assert app.get_action(other.action_id).reason == "not erased"
    streamed = json.dumps([e.payload for e in app.read_log(0)], default=str)
    assert SECRET not in streamed and "jane-1" not in streamed
    assert (app.get_budget("ann").spent, app.get_budget("bob").spent) == before
    assert app.verify_integrity().ok
    # The record of it: who, when, why, by pseudonym; idempotent with its request_id.
    erased = [e for e in app.read_log(0) if e.event_type.endswith("DataSubjectErased")]
    assert [(e.payload["actor"], e.payload["reason"], e.payload["pseudonym"]) for e in erased] == [
        ("dpo", "GDPR art. 17 request #1", result.pseudonym)
    ]
    assert privacy.erase_customer("erase-1", "jane-1", "GDPR art. 17 request #1", actor="dpo") == result
    with pytest.raises(AlreadyExists):
        privacy.erase_customer("erase-1", "jane-1", "another reason", actor="dpo")
    # The customer comes back: what was given before still counts (per-customer limit 100, org cap 150).
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(gift("ann", "jane-1", 50, reason="back"))
    assert refused.value.reason == "PER_CUSTOMER_LIMIT_EXCEEDED"
    with pytest.raises(PreconditionFailed) as capped:
        app.execute(gift("bob", "jane-1", 95, reason="back"))
    assert capped.value.reason == "CUSTOMER_CAP_EXCEEDED"
    back, _ = app.execute(gift("ann", "jane-1", 40, reason="back again"))
    assert (back.customer_id, back.reason) == ("jane-1", "back again")  # new data, new key: readable
    assert make().get_action(back.action_id).reason == "back again"
    assert make().get_action(first.action_id).reason == "[erased]"


def test_split_detection_counts_an_erased_case(make) -> None:
    app = make()
    app.execute(open_cmd("ann", policy=make_policy(allowance=500, limit=50, split=SplitDetection(same_customer=True))))
    app.execute(gift("ann", "jane-2", 30, case="case-9"))
    Privacy(app).erase_customer("erase-2", "jane-2", "art. 17")
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(gift("ann", "someone-else", 30, case="case-9"))
    assert refused.value.reason == "SPLIT_ACTION_LIMIT_EXCEEDED"


def test_employee_erasure(make) -> None:
    app = make()
    app.execute(open_cmd("eve", display_name="Eve Example"))
    app.execute(c.CloseBudget("close-eve", "eve", "left: " + SECRET))
    Privacy(app).erase_employee("erase-eve", "eve", "art. 17", actor="dpo")
    budget = app.get_budget("eve")
    assert (budget.display_name, budget.close_reason) == ("[erased]", "[erased]")
    assert budget.employee_id == "eve" and app.verify_integrity().ok


def test_erasure_needs_a_valid_id_and_a_reason(make) -> None:
    privacy = Privacy(make())
    with pytest.raises(InvalidArgument):
        privacy.erase_customer("e", "not an id!", "why")
    with pytest.raises(InvalidArgument):
        privacy.erase_customer("e", "jane", "")


def test_without_a_key_store_erasure_is_refused(make) -> None:
    with pytest.raises(PreconditionFailed) as refused:
        Privacy(make(None)).erase_customer("e", "jane", "why")
    assert refused.value.reason == "PERSONAL_DATA_NOT_ENCRYPTED"


def test_a_log_written_before_the_feature_stays_readable(make, database_url: str) -> None:
    old = make(None)
    old.execute(open_cmd("ann", display_name="Ann Old"))
    legacy, _ = old.execute(gift("ann", "jane-3", 10))
    old.close()
    app = make()
    new, _ = app.execute(gift("ann", "jane-3", 10, reason="new " + SECRET))
    assert app.get_action(legacy.action_id).reason == SECRET
    assert app.get_budget("ann").display_name == "Ann Old"
    assert app.verify_integrity().ok
    Privacy(app).erase_customer("erase-3", "jane-3", "art. 17")
    # What was stored in clear before the feature cannot be shredded (README: Personal data); the new is erased.
    assert app.get_action(legacy.action_id).reason == SECRET
    assert app.get_action(new.action_id).reason == "[erased]"
    assert app.verify_integrity().ok


def test_rotating_the_master_key_rewraps_and_never_touches_events(make, database_url: str) -> None:
    app = make()
    app.execute(open_cmd("ann"))
    action, _ = app.execute(gift("ann", "jane-4", 10))
    before = raw_states(database_url)
    new_master = StaticMasterKey(b"\x07" * 32)
    assert app.keystore is not None and app.keystore.rotate_master(new_master) >= 2
    assert raw_states(database_url) == before
    app.close()
    assert make(new_master).get_action(action.action_id).reason == SECRET
    with pytest.raises(KeyStoreError):
        make(MASTER)


def test_an_erasure_racing_actions_for_the_same_customer(make) -> None:
    """Actions for one customer from several threads while the customer is erased: every accepted action is in the
    log once, the per-customer limit holds across the erasure, and the chain verifies."""
    app = make()
    employees = [f"emp-{i}" for i in range(4)]
    for employee in employees:
        app.execute(open_cmd(employee, policy=make_policy(allowance=1000, limit=100, per_customer=60)))
    accepted: list[tuple[str, Decimal]] = []
    lock = threading.Lock()

    def worker(employee: str) -> None:
        for n in range(12):
            try:
                action, _ = app.execute(gift(employee, "jane-5", 5, request_id=f"{employee}-{n}"))
            except PreconditionFailed as error:
                assert error.reason == "PER_CUSTOMER_LIMIT_EXCEEDED"
                continue
            with lock:
                accepted.append((action.action_id, action.amount.amount))

    threads = [threading.Thread(target=worker, args=(e,)) for e in employees]
    for thread in threads:
        thread.start()
    Privacy(app).erase_customer("erase-5", "jane-5", "art. 17")
    for thread in threads:
        thread.join(timeout=120)
    assert len({a for a, _ in accepted}) == len(accepted)
    for employee in employees:
        budget = app.get_budget(employee)
        mine = [amount for a, amount in accepted if app.get_action(a).employee_id == employee]
        assert budget.spent.amount == sum(mine, Decimal(0)) <= 60
        assert budget.period_action_count == len(mine)
    assert app.verify_integrity().ok


def test_retention_erases_idle_customers_once(make, clock: Any) -> None:
    from datetime import timedelta

    app = make()
    app.execute(open_cmd("ann", policy=make_policy(allowance=500, limit=100)))
    old, _ = app.execute(gift("ann", "idle-1", 5))
    clock.advance(timedelta(days=31))
    fresh, _ = app.execute(gift("ann", "active-1", 5))
    privacy = Privacy(app)
    assert privacy.sweep_retention(30) == 1
    assert privacy.sweep_retention(30) == 0  # idempotent: nothing idle is left
    assert app.get_action(old.action_id).reason == "[erased]"
    assert app.get_action(fresh.action_id).reason == SECRET
    erasures = [e.payload for e in app.read_log(0) if e.event_type.endswith("DataSubjectErased")]
    assert [(e["actor"], e["reason"]) for e in erasures] == [
        ("leeway-retention", "retention: no new personal data for 30 days")
    ]
    # Another replica sweeping the same subject records nothing new (same request id, same request).
    assert Privacy(make()).sweep_retention(30) == 0
    assert app.verify_integrity().ok


def test_another_replica_sees_an_erasure_within_its_check_interval(make) -> None:
    import time

    one, two = make(), make()
    assert two.keystore is not None
    two.keystore._check_seconds = 0.2  # noqa: SLF001 - the default is 1 s
    one.execute(open_cmd("ann"))
    action, _ = one.execute(gift("ann", "jane-6", 5))
    assert two.get_action(action.action_id).reason == SECRET  # its key is cached on the other replica now
    Privacy(one).erase_customer("erase-6", "jane-6", "art. 17")
    time.sleep(0.3)
    assert two.get_action(action.action_id).reason == "[erased]"
