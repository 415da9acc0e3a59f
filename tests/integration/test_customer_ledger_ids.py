"""Customer ledgers under keyed ids (issue 22) on SQLite and PostgreSQL: a customer first seen with a key store has
a ledger whose id is an HMAC of its key (no uuid5 of the key in the event table); a customer with a ledger
written the old way (name-based id: before encryption, or encrypted by the code before keyed ids) keeps every cap
exactly across the upgrade, through decisions, reversals, reads, access requests, erasure and concurrent writers."""

from __future__ import annotations

import threading
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from builders import action_cmd, approve, customer_cap, deny, make_policy, open_cmd, reverse_cmd, run_threads, usd
from leeway.application.privacy import Privacy, iter_pages
from leeway.domain.errors import PreconditionFailed
from leeway.domain.ledgers import LEGACY_LEDGER_IDS, CustomerLedger
from stored_rows import StoredRows


@pytest.fixture
def make(make_keyed):
    return make_keyed


def old_app(make: Any, encrypted: bool) -> Any:
    """An application writing customer ledgers the way the code before keyed ids did: under the name-based id,
    without a key store (a log from before encryption) or with one (sealed events, name-based ledger ids)."""
    if not encrypted:
        return make(None)
    app = make()
    app.conventions = replace(app.conventions, customer_ledgers=LEGACY_LEDGER_IDS)
    return app


def refused(app: Any, command: Any) -> str:
    with pytest.raises(PreconditionFailed) as error:
        app.execute(command)
    return str(error.value.reason)


def stored_ids(database_url: str) -> set[Any]:
    rows = StoredRows(database_url)
    return {rows._uuid(r[0]) for r in rows._run(f"SELECT originator_id FROM {rows.table}", ())}  # noqa: SLF001


def customer_action_ids(app: Any, customer: str) -> set[str]:
    found: set[str] = set()
    token = ""
    while True:
        page = app.list_actions("", customer, None, 2, token)  # small pages: tokens across both ledgers
        found.update(view.action_id for view in page.items)
        token = page.next_page_token
        if not token:
            return found


@pytest.mark.parametrize("encrypted", [False, True], ids=["legacy-unencrypted", "legacy-encrypted"])
def test_caps_hold_across_the_upgrade(make, encrypted: bool) -> None:
    old = old_app(make, encrypted)
    old.execute(open_cmd("ann", policy=make_policy(1000, limit=50, per_customer=130, approvers=["mgr-1"])))
    old.execute(open_cmd("bob", policy=make_policy(1000, limit=100)))
    old.execute(customer_cap(usd(150)))
    spent, _ = old.execute(action_cmd("ann", 40, customer="Jane-9"))
    held, _ = old.execute(action_cmd("ann", 60, customer="jane-9"))  # over ann's per-action limit: held
    reversible, _ = old.execute(action_cmd("bob", 20, customer="jane-9"))
    legacy = CustomerLedger.create_id("jane-9")
    assert held.state == "PENDING_APPROVAL" and old.get_or_none(legacy).action_count == 3
    old.close()

    app = make()
    keyed = app.conventions.customer_ledgers.keyed("jane-9")
    assert keyed is not None and keyed != legacy and app.get_or_none(keyed) is None
    # 40 spent + 60 held + 20 spent = 120 of the organisation's 150; ann has 100 of her 130 for the customer.
    assert refused(app, action_cmd("bob", "30.01", customer="jane-9")) == "CUSTOMER_CAP_EXCEEDED"
    assert refused(app, action_cmd("ann", "30.01", customer="jane-9")) in ("PER_CUSTOMER_LIMIT_EXCEEDED",
                                                                           "CUSTOMER_CAP_EXCEEDED")
    new, _ = app.execute(action_cmd("bob", 30, customer="JANE-9"))  # exactly the cap
    assert app.get_or_none(keyed).action_count == 1  # the new action went to the keyed ledger ...
    assert app.get_or_none(legacy).action_count == 3  # ... never to the legacy one
    assert refused(app, action_cmd("bob", "0.01", customer="jane-9")) == "CUSTOMER_CAP_EXCEEDED"

    # The old hold is denied: released from the legacy ledger that holds it.
    app.execute(deny(held.action_id))
    assert app.get_or_none(legacy).tally["holds"] == {}
    usage = app.get_customer_usage("jane-9")
    assert (usage.usage.spent, usage.usage.held, usage.action_count) == (usd(90), usd(0), 4)
    app.execute(reverse_cmd(reversible.action_id))  # an old action reversed: 70 of 150
    assert app.get_customer_usage("jane-9").usage.spent == usd(70)
    last, _ = app.execute(action_cmd("bob", 80, customer="jane-9"))
    assert refused(app, action_cmd("bob", "0.01", customer="jane-9")) == "CUSTOMER_CAP_EXCEEDED"

    # Reads and the access request find the customer's actions on both ledgers.
    everything = {spent.action_id, held.action_id, reversible.action_id, new.action_id, last.action_id}
    assert customer_action_ids(app, "jane-9") == everything
    exported = {a["action_id"] for page in iter_pages(Privacy(app), "Jane-9", page_size=2) for a in page["actions"]}
    assert exported == everything

    # After an erasure the caps keep counting; a hold recorded since and decided after it closes on the keyed ledger.
    app.execute(open_cmd("cid", policy=make_policy(1000, limit=5, approvers=["mgr-1"])))
    app.execute(reverse_cmd(last.action_id))  # 70 of 150 again
    pending, _ = app.execute(action_cmd("cid", 50, customer="jane-9"))  # held: 120 of 150
    result = Privacy(app).erase_customer("erase-9", "jane-9", "art. 17", actor="dpo")
    assert refused(app, action_cmd("bob", "30.01", customer="jane-9")) == "CUSTOMER_CAP_EXCEEDED"
    app.execute(approve(pending.action_id))
    assert app.get_or_none(keyed).tally["holds"] == {}
    assert refused(app, action_cmd("bob", "30.01", customer="jane-9")) == "CUSTOMER_CAP_EXCEEDED"
    app.execute(reverse_cmd(pending.action_id))  # an erased action's reversal: on the keyed ledger, 70 of 150
    orphan = CustomerLedger.create_id(f"[erased:{result.pseudonym}]")
    assert app.get_or_none(orphan) is None
    assert refused(app, action_cmd("bob", "80.01", customer="jane-9")) == "CUSTOMER_CAP_EXCEEDED"
    app.execute(action_cmd("bob", 80, customer="jane-9"))
    assert app.verify_integrity().ok
    # A restart (or another replica) derives the same keyed id and counts the same.
    again = make()
    assert again.conventions.customer_ledgers.keyed("jane-9") == keyed
    assert refused(again, action_cmd("bob", "0.01", customer="jane-9")) == "CUSTOMER_CAP_EXCEEDED"


def test_a_new_customer_leaves_no_name_based_id(make, database_url: str) -> None:
    app = make()
    app.execute(open_cmd("ann", policy=make_policy(1000, limit=50, approvers=["mgr-1"])))
    app.execute(customer_cap(usd(500)))
    recorded, _ = app.execute(action_cmd("ann", 20, customer="Fresh-1"))
    held, _ = app.execute(action_cmd("ann", 60, customer="fresh-1"))
    app.execute(approve(held.action_id))
    app.execute(reverse_cmd(recorded.action_id))
    ids = stored_ids(database_url)
    keyed = app.conventions.customer_ledgers.keyed("fresh-1")
    assert keyed in ids  # not vacuous: the customer's ledger is in the table ...
    assert CustomerLedger.create_id("fresh-1") not in ids and CustomerLedger.create_id("Fresh-1") not in ids
    assert app.get_customer_usage("fresh-1").usage.spent == usd(60)
    rows = StoredRows(database_url)
    states = b"\n".join(bytes(r[0]) for r in rows._run(f"SELECT state FROM {rows.table}", ()))  # noqa: SLF001
    assert b"fresh-1" not in states.lower()  # ... and its events name the customer sealed only


def test_without_a_key_store_ledgers_keep_the_name_based_id(make, database_url: str) -> None:
    app = make(None)
    app.execute(open_cmd("ann"))
    app.execute(action_cmd("ann", 20, customer="plain-1"))
    assert app.conventions.customer_ledgers.keyed("plain-1") is None
    assert CustomerLedger.create_id("plain-1") in stored_ids(database_url)
    assert app.get_customer_usage("plain-1").usage.spent == usd(20)


def test_concurrent_writers_keep_the_cap_of_a_legacy_customer(make) -> None:
    """Two replicas (each with its group-commit writer) and eight threads record 5 USD at once for a customer
    whose ledger was written the old way: the first action after the upgrade creates its keyed ledger (the
    replicas race for it), and the cap is never passed."""
    old = old_app(make, encrypted=True)
    old.execute(open_cmd("ann", policy=make_policy(10_000, limit=None)))
    old.execute(customer_cap(usd(150)))
    old.execute(action_cmd("ann", 100, customer="race-1"))
    old.close()
    replicas = [make(), make()]
    accepted: list[str] = []
    reasons: list[str] = []
    lock = threading.Lock()

    def record(index: int) -> None:
        app = replicas[index % 2]
        for _ in range(4):
            try:
                app.execute(action_cmd("ann", 5, customer="race-1"))
            except PreconditionFailed as error:
                with lock:
                    reasons.append(str(error.reason))
            else:
                with lock:
                    accepted.append("ok")

    run_threads(record, 8)
    assert len(accepted) == 10 and set(reasons) == {"CUSTOMER_CAP_EXCEEDED"} and len(reasons) == 22
    usage = make().get_customer_usage("race-1")
    assert usage.usage.spent == usd(150) and usage.action_count == 11
    keyed = replicas[0].get_or_none(replicas[0].conventions.customer_ledgers.keyed("race-1"))
    assert keyed.action_count == 10 and sum(keyed.tally["daily"]["USD"].values(), Decimal(0)) == Decimal(50)


def test_a_database_with_a_key_store_is_not_served_without_its_master_key(make, database_url: str) -> None:
    """Without the master key the service would store personal data in clear and miss the keyed ledgers (each
    such customer's caps would start again from zero): ``build_application`` (serve, export, keys) refuses, as
    for a wrong master key."""
    from leeway.adapters.keystore import KeyStoreError
    from leeway.server import build_application
    from leeway.settings import Settings

    plain = make(None)
    assert not plain.key_store_found()  # no key store yet: a database used without one stays usable without one
    plain.close()
    app = make()
    app.execute(open_cmd("ann"))
    app.execute(action_cmd("ann", 20, customer="kept-1"))
    assert app.key_store_found() and make(None).key_store_found()
    settings = Settings(database_url=database_url)
    if database_url.startswith("postgres"):
        assert settings.master_key_source() is None  # PostgreSQL without LEEWAY_MASTER_KEY_FILE: no key store
        with pytest.raises(KeyStoreError, match="has a key store.*LEEWAY_MASTER_KEY_FILE"):
            build_application(settings)
        reader = build_application(settings, read_only=True)  # the audit tools (export, checkpoint) still read it
        try:
            assert reader.keystore is None and reader.verify_integrity().ok
        finally:
            reader.close()
    else:  # SQLite always has a master key (generated beside the file): here not the one that wrapped the keys
        with pytest.raises(KeyStoreError, match="LEEWAY_MASTER_KEY_FILE"):
            build_application(settings)


def test_closing_a_budget_releases_its_holds_from_both_ledgers(make) -> None:
    from leeway.application import commands as c

    old = old_app(make, encrypted=True)
    old.execute(open_cmd("ann", policy=make_policy(1000, limit=10, approvers=["mgr-1"])))
    old.execute(customer_cap(usd(100)))
    old.execute(action_cmd("ann", 40, customer="held-1"))  # held before the upgrade: on the legacy ledger
    old.close()
    app = make()
    app.execute(action_cmd("ann", 50, customer="held-1"))  # held after it: on the keyed ledger
    ids = app.conventions.customer_ledgers
    assert refused(app, action_cmd("ann", "10.01", customer="held-1")) == "CUSTOMER_CAP_EXCEEDED"
    app.execute(c.CloseBudget("close-ann", "ann", "left"))
    for aggregate_id in ids.of("held-1"):
        assert app.get_or_none(aggregate_id).tally["holds"] == {}
    usage = app.get_customer_usage("held-1").usage
    assert (usage.spent, usage.held, usage.remaining) == (usd(0), usd(0), usd(100))


def test_reversing_an_erased_customers_legacy_action_counts_for_them(make) -> None:
    """A customer with a legacy ledger only is erased; the reversal of one of their old actions knows them only as
    ``[erased:<pseudonym>]``: it lands on their keyed ledger (created by it), which the cap counts with the legacy
    one when they come back (the code before keyed ids put it on a ledger named after the erased id, never
    counted)."""
    old = old_app(make, encrypted=True)
    old.execute(open_cmd("ann", policy=make_policy(1000, limit=None)))
    old.execute(customer_cap(usd(100)))
    given, _ = old.execute(action_cmd("ann", 60, customer="gone-1"))
    old.close()
    app = make()
    result = Privacy(app).erase_customer("erase-gone", "gone-1", "art. 17")
    assert app.get_action(given.action_id).customer_id == f"[erased:{result.pseudonym}]"
    app.execute(reverse_cmd(given.action_id))
    assert app.get_or_none(CustomerLedger.create_id(f"[erased:{result.pseudonym}]")) is None
    assert refused(app, action_cmd("ann", "100.01", customer="gone-1")) == "CUSTOMER_CAP_EXCEEDED"
    app.execute(action_cmd("ann", 100, customer="gone-1"))
    assert refused(app, action_cmd("ann", "0.01", customer="gone-1")) == "CUSTOMER_CAP_EXCEEDED"
