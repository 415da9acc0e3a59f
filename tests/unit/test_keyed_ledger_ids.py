"""Customer ledgers' keyed ids (issue 22): an HMAC of the customer key under the key store's pseudonym key, not the
name-based uuid5 anyone can compute from a candidate id; the application gives the domain the derivation
(``CustomerLedgerIds``)."""

from __future__ import annotations

from builders import action_cmd
from leeway.adapters.keystore import KeyStore, StaticMasterKey
from leeway.application.commands import ReverseAction
from leeway.application.conventions import Conventions
from leeway.domain.ids import leeway_id
from leeway.domain.ledgers import LEGACY_LEDGER_IDS, CustomerLedger, CustomerLedgerIds
from leeway.domain.personal import erased_identifier

MASTER = StaticMasterKey(b"\x07" * 32)


def keys() -> KeyStore:
    return KeyStore(None, MASTER)  # in memory: a new pseudonym key per store


def test_the_keyed_id_is_not_the_name_based_one_and_is_stable() -> None:
    store = keys()
    keyed = store.customer_ledger_id("jane-1")
    assert keyed != CustomerLedger.create_id("jane-1") == leeway_id("customer:jane-1")
    assert store.customer_ledger_id("jane-1") == keyed  # the same customer, the same ledger
    assert store.customer_ledger_id("jane-2") != keyed
    # Not the customer's pseudonym (shown in envelopes) read as a UUID either: a second HMAC of it.
    assert keyed.hex != store.pseudonym("customer", "jane-1")


def test_another_key_gives_other_ids() -> None:
    assert keys().customer_ledger_id("jane-1") != keys().customer_ledger_id("jane-1")


def test_an_erased_id_names_the_same_ledger() -> None:
    """After an erasure the customer id reads ``[erased:<pseudonym>]``: decisions and reversals of the customer's
    actions find their keyed ledger from it."""
    store = keys()
    erased = erased_identifier(store.pseudonym("customer", "jane-1"))
    assert store.customer_ledger_id(erased) == store.customer_ledger_id("jane-1")
    assert store.customer_ledger_id("[sealed:" + store.pseudonym("customer", "jane-1") + "]") == store.customer_ledger_id(
        "jane-1"
    )


def test_shredding_and_rotating_keep_the_ids() -> None:
    """The pseudonym key is never shredded and a rotation re-wraps it: ledger ids survive both."""
    store = keys()
    before = store.customer_ledger_id("jane-1")
    store.current_key(store.subject("customer", "jane-1"))
    store.shred(store.subject("customer", "jane-1"))
    store.rotate_master(StaticMasterKey(b"\x08" * 32))
    store._ledger_ids.clear()  # noqa: SLF001 - derive again, not from the cache
    assert store.customer_ledger_id("jane-1") == before


def test_without_a_key_store_ledgers_keep_the_legacy_id() -> None:
    ledger = LEGACY_LEDGER_IDS.new("jane-1")
    assert ledger.id == CustomerLedger.create_id("jane-1") and ledger.customer_id == "jane-1"
    assert LEGACY_LEDGER_IDS.of("jane-1") == (CustomerLedger.create_id("jane-1"),)
    assert LEGACY_LEDGER_IDS.keyed("jane-1") is None


def test_with_a_key_store_a_new_ledger_is_keyed_and_the_legacy_one_is_still_looked_for() -> None:
    store = keys()
    ids = CustomerLedgerIds(store.customer_ledger_id)
    ledger = ids.new("jane-1")
    assert ledger.id == store.customer_ledger_id("jane-1") and ledger.customer_id == "jane-1"
    assert ledger.action_count == 0 and ledger.version == 1
    assert ids.of("jane-1") == (CustomerLedger.create_id("jane-1"), store.customer_ledger_id("jane-1"))


def test_commands_read_ahead_both_ledgers() -> None:
    """The writer reads a batch's aggregates ahead in one query (PostgreSQL): a RecordAction names the customer's
    keyed ledger and its legacy one; a decision or reversal names them once it knows the action's customer."""
    store = keys()
    conventions = Conventions(customer_ledgers=CustomerLedgerIds(store.customer_ledger_id))
    command = action_cmd("ann", 10, customer="Jane-1").admitted(conventions)
    hinted = command.prefetch(_NoTeams())
    assert CustomerLedger.create_id("jane-1") in hinted and store.customer_ledger_id("jane-1") in hinted
    reversal = ReverseAction(request_id="r", action_id="x", reason="r", actor_id="sup").admitted(conventions)
    assert reversal.ledger_ids is conventions.customer_ledgers
    unadmitted = action_cmd("ann", 10, customer="jane-1")
    assert store.customer_ledger_id("jane-1") not in unadmitted.prefetch(_NoTeams())


class _NoTeams:
    def team_of(self, employee_id: str) -> str | None:
        return None
