"""The crypto of issue 22 on its own: data keys wrapped by the master key, shredding, rotation, and the sealer's
envelopes for each form of personal field (identifiers keep a keyed pseudonym once erased)."""

from __future__ import annotations

import copy
from uuid import uuid4

import pytest
from leeway.adapters.keystore import KeyStore, KeyStoreError, StaticMasterKey, master_key_id
from leeway.adapters.pii import MARK, Sealer, TamperedField

B = "leeway.domain.budget:Budget."
MASTER = StaticMasterKey(b"\x11" * 32)


def sealer(keys: KeyStore | None, stored: dict | None = None) -> Sealer:
    return Sealer(lambda _id, version: (stored or {}).get(version), keys)


def test_a_data_key_per_subject_and_a_stable_keyed_pseudonym() -> None:
    keys = KeyStore(None, MASTER)
    a, b = keys.current_key("customer:a"), keys.current_key("customer:b")
    assert a != b and keys.current_key("customer:a") == a and len(a[1]) == 32
    assert keys.key(a[0]) == a[1]
    assert keys.pseudonym("customer", "jane") == keys.pseudonym("customer", "jane") != keys.pseudonym("case", "jane")
    other = KeyStore(None, StaticMasterKey(b"\x22" * 32))
    assert other.pseudonym("customer", "jane") != keys.pseudonym("customer", "jane")  # keyed: not a plain hash


def test_shredding_erases_only_that_subject_and_never_the_pseudonym_key() -> None:
    keys = KeyStore(None, MASTER)
    a, b = keys.current_key("customer:a"), keys.current_key("customer:b")
    assert keys.shred("customer:a") == 1 and keys.shred("customer:a") == 0
    assert keys.key(a[0]) is None and keys.key(b[0]) == b[1] and keys.is_erased("customer:a")
    assert keys.current_key("customer:a")[0] != a[0]  # new data of a returning subject: a new key
    with pytest.raises(KeyStoreError):
        keys.shred("__pseudonym__")
    with pytest.raises(KeyStoreError, match="not in the key store"):
        keys.key("0" * 32)


def test_rotating_the_master_key_rewraps() -> None:
    keys = KeyStore(None, MASTER)
    key_id, key = keys.current_key("customer:a")
    new = StaticMasterKey(b"\x33" * 32)
    assert keys.rotate_master(new) == 2  # the data key and the pseudonym key
    assert keys.master_id == master_key_id(b"\x33" * 32)
    keys._by_id.clear()  # noqa: SLF001 - read it back through the new wrapping
    assert keys.key(key_id) == key


def test_master_keys_are_32_bytes_in_any_common_spelling() -> None:
    raw = bytes(range(32))
    for spelling in (raw, raw.hex().encode(), __import__("base64").b64encode(raw)):
        assert StaticMasterKey(spelling).load() == raw
    with pytest.raises(KeyStoreError, match="32 bytes"):
        StaticMasterKey(b"too short").load()


def recorded(customer: str = "jane", case: str = "c-1") -> dict:
    return {"customer_id": customer, "case_id": case, "reason": "Jane Doe", "employee_id": "ann",
            "details": {"rule_code": "LATE", "description": "she was upset"}, "amount": 5}


def test_every_form_round_trips_and_reads_erased_after_a_shred() -> None:
    keys = KeyStore(None, MASTER)
    seal, aggregate = sealer(keys), uuid4()
    state = recorded()
    seal.begin()
    seal.seal(B + "ActionRecorded", state, aggregate, 2)
    seal.commit()
    assert state[MARK] == ["customer_id", "case_id", "reason", "details.description"]
    assert "Jane" not in str(state) and state["details"]["rule_code"] == "LATE" and state["amount"] == 5
    win = {"action_version": 2, "story": "kept her", "customer_quote": "thanks", "outcome": "stayed"}
    seal.seal(B + "WinDocumented", win, aggregate, 3)  # the subject: the action's customer (version 2)
    recount = {"recount": {"customers": {"jane": 5, "joe": 1}, "rules": {"LATE": 1}}}
    seal.seal(B + "PolicyUpdated", recount, aggregate, 4)
    opened = [copy.deepcopy(s) for s in (state, win, recount)]
    for topic, item in zip(("ActionRecorded", "WinDocumented", "PolicyUpdated"), opened):
        seal.open(B + topic, item)
    assert opened[0] == recorded() and opened[1]["story"] == "kept her"
    assert opened[2]["recount"]["customers"] == {"jane": 5, "joe": 1}

    pseudonym = keys.pseudonym("customer", "jane")
    keys.shred(f"customer:{pseudonym}")
    erased = [copy.deepcopy(s) for s in (state, win, recount)]
    for topic, item in zip(("ActionRecorded", "WinDocumented", "PolicyUpdated"), erased):
        seal.open(B + topic, item)
    assert erased[0]["customer_id"] == f"[erased:{pseudonym}]"
    assert erased[0]["case_id"] == f"[erased:{keys.pseudonym('case', 'c-1')}]"
    assert (erased[0]["reason"], erased[0]["details"]["description"]) == ("[erased]", "[erased]")
    assert erased[1]["story"] == erased[1]["customer_quote"] == "[erased]"
    assert erased[2]["recount"]["customers"] == {f"[erased:{pseudonym}]": 5, "joe": 1}  # joe is not erased


def test_without_keys_sealed_fields_read_as_sealed_and_a_changed_envelope_is_tampering() -> None:
    keys = KeyStore(None, MASTER)
    state = recorded()
    sealer(keys).seal(B + "ActionRecorded", state, uuid4(), 2)
    blind = copy.deepcopy(state)
    sealer(None).open(B + "ActionRecorded", blind)
    assert blind["reason"] == "[sealed]" and blind["customer_id"].startswith("[sealed:")
    moved = copy.deepcopy(state)
    moved["reason"] = moved["details"]["description"]  # a ciphertext moved to another field
    with pytest.raises(TamperedField):
        sealer(keys).open(B + "ActionRecorded", moved)


def test_events_without_personal_fields_or_from_before_are_left_alone() -> None:
    keys = KeyStore(None, MASTER)
    counted = {"action_id": "a", "employee_id": "ann", "currency": "EUR"}
    sealer(keys).seal("leeway.domain.limits:TeamLedger.ActionCounted", counted, uuid4(), 2)
    assert MARK not in counted
    old = recorded()  # stored before the feature: no __pii__, read as it is
    sealer(keys).open(B + "ActionRecorded", old)
    assert old == recorded()
