"""The packed form of stored events (issue 21, ``adapters/packing.py``): a stored format, so a contract."""

from __future__ import annotations

import json
import zlib

import pytest
from leeway.adapters import packing
from leeway.adapters.hash_chain import (
    GENESIS,
    HASH,
    PREV,
    canonical,
    event_hash,
    parse_state,
)

BODY = (b'{"action_id":"act_1","amount":{"_data_":"12.50","_type_":"decimal_str"},"currency":"USD",'
        b'"pending":false}')
#: BODY packed by format 1 (prev: 64 zeros, hash: "ab" * 32) when this test was written: every later release must
#: read it back exactly (decoding a DEFLATE stream does not depend on the zlib version that wrote it).
PACKED_THEN = bytes.fromhex(
    "01" + "00" * 32 + "ab" * 32 + "c34cf0a0aa144bb41b1ae999a21a841af718d183eaed5a00"
)


def test_the_dictionary_of_format_1_never_changes() -> None:
    assert packing.dictionary_digest() == "63d8aa858559828ac4c134b0254c523c2484c87a5da2035f0dde4517856f0e07"
    assert len(packing.DICTIONARY_V1) < 4096 - 262  # all of it inside the 4 KB window DEFLATE matches in


def test_a_row_packed_by_the_first_release_reads_back_exactly() -> None:
    assert packing.unpack(PACKED_THEN) == (BODY, GENESIS, "ab" * 32)
    assert parse_state(PACKED_THEN) == {**json.loads(BODY), PREV: GENESIS, HASH: "ab" * 32}
    assert packing.stored_hash(PACKED_THEN) == "ab" * 32


def test_pack_and_parse_give_the_state_of_the_json_form() -> None:
    state = json.loads(BODY)
    this = event_hash(GENESIS, "agg", 1, "t:T", state)
    packed = packing.pack(GENESIS, this, canonical(state))
    as_json = json.dumps({**state, PREV: GENESIS, HASH: this}).encode()
    assert packing.is_packed(packed) and not packing.is_packed(as_json)
    assert parse_state(packed) == parse_state(as_json)
    assert len(packed) < len(as_json) * 0.6  # what it is for
    assert packing.stored_hash(packed) == this and packing.stored_hash(as_json) is None


def test_damaged_rows_do_not_decode() -> None:
    packed = packing.pack(GENESIS, "cd" * 32, BODY)
    cut = packed[:-3]
    trailing = packed + b"x"
    garbage = packed[:65] + b"\xff\xff\xff\xff" + packed[69:]
    for damaged in (cut, trailing, garbage, packed[:65], b"\x01"):
        with pytest.raises(ValueError):
            parse_state(damaged)
    # A stream whose body changed (recompressed) decodes: the chain, not the format, finds it.
    changed = packing.pack(GENESIS, "cd" * 32, BODY.replace(b"12.50", b"1.50"))
    assert parse_state(changed)["amount"]["_data_"] == "1.50"
    # Without the dictionary the stream does not inflate to the body (the dictionary is part of the format).
    with pytest.raises(zlib.error):
        zlib.decompressobj(-12).decompress(packed[65:])


def test_only_hex_hashes_are_packed() -> None:
    assert packing.packable(GENESIS, "ab" * 32)
    for prev, this in (("", "ab" * 32), (GENESIS, "AB" * 32), (GENESIS, "ab" * 31), ("zz" * 32, GENESIS)):
        assert not packing.packable(prev, this)
