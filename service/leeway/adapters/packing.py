"""The packed form of a stored event's state (issue 21: at most 1.5 KB per action in the log).

Events were stored as their JSON state with the two hash-chain keys appended (``__prev__``/``__hash__``, 64 hex
digits each): about 500-800 bytes per event, four or five events per action. Since this release they are stored
**packed**, which the first byte tells apart (a JSON state always starts with ``{``):

    0x01 | prev hash (32 bytes) | this hash (32 bytes) | raw DEFLATE of the canonical JSON body

The body is exactly what the hash covers: ``canonical(state)`` (``hash_chain.py``: sorted keys, compact, UTF-8,
without the chain keys). It is compressed with zlib's raw DEFLATE (level 3, a 4 KB window) primed with a fixed
**preset dictionary** (``DICTIONARY_V1`` below: the keys and common values of Leeway's events), which is what
makes events of a few hundred bytes compress at all (about 2.5x instead of 1.8x). Format byte 0x01 names this
dictionary: it must never change; a better one would be format 0x02, with 0x01 still read.

Reading (``unpack``, ``parse_state``) gives back the same state as the JSON form: the chain keys as 64 hex digits.
Rows written before are JSON and stay as they are (never rewritten); both forms are read and verified alike. A
packed row whose DEFLATE stream was damaged does not decode (``ValueError``), so verification reports it as any
unreadable row; one whose body was changed decodes to a body that no longer matches its hash.
"""

from __future__ import annotations

import hashlib
import re
import zlib

#: The first byte of a packed state (format 1: DEFLATE with ``DICTIONARY_V1``).
PACKED_V1 = 0x01
_HEADER = 1 + 32 + 32
_WBITS = -12  # raw DEFLATE, 4 KB window (the dictionary fits in it)
_LEVEL = 3  # levels 1-3 are DEFLATE's fast matcher; 3 finds longer matches at the same cost here
_MEM_LEVEL = 4  # a small hash table: copying the primed compressor stays cheap (about 1 µs)

#: The preset dictionary of format 1. NEVER CHANGE IT (rows packed with it could no longer be read): its SHA-256 is
#: pinned by tests/unit/test_packing.py. DEFLATE finds matches in its last bytes most cheaply, so the fragments of
#: the most frequent events (an action's: the budget's, the ledgers', the request record's) come last.
DICTIONARY_V1 = (
    b'{"allowed_kinds":["REFUND","CREDIT","GIFT","RULE_BEND"],"bendable_rules":[{"description":"","max_per_period":1,'
    b'"max_value":{"amount":"","currency":"USD"},"rule_code":""}],"escalation":{"approval_timeout_seconds":86400,'
    b'"approver_ids":[],"approver_role":"","mode":"APPROVAL"},"per_action_limit":{"amount":"100","currency":"USD"},'
    b'"per_customer_limit":null,"period":"MONTH","period_allowance":{"amount":"1000","currency":"USD"}},'
    b'"_type_":"leeway_policy"},"display_name":"","period_end":{"_data_":"","period_start":{"_data_":"",'
    b'"originator_topic":"leeway.domain.budget:Budget","team_id":"'
    b'"name":"budgets","originator_topic":"leeway.domain.indexes:Directory","originator_topic":"leeway.domain.'
    b'indexes:TeamRoster","name":"holds","originator_topic":"leeway.domain.limits:HoldBook","originator_topic":'
    b'"leeway.domain.limits:TeamLedger","team_id":"'
    b'{"action_version":1,"actor":"","at":{"_data_":"","_type_":"datetime_iso"},"customer_quote":"","outcome":"",'
    b'"story":"","timestamp":{"_data_":"'
    b'{"action_version":1,"actor":"","actor_id":"","amount":{"_data_":"","_type_":"decimal_str"},"at":{"_data_":"",'
    b'"_type_":"datetime_iso"},"customer_id":"","day":"2026-01-01","reason":"","request_id":"","rule_code":"",'
    b'"timestamp":{"_data_":"'
    b'"outcome":"APPROVED","outcome":"DENIED","outcome":"EXPIRED","approver_id":"","note":"",'
    b'{"action_id":"act_","approver_ids":[],"approver_role":"","at":{"_data_":"","_type_":"datetime_iso"},'
    b'"customer_id":"","employee_id":"","expires_at":{"_data_":"","_type_":"datetime_iso"},"timestamp":{"_data_":"'
    b'{"customer_id":"","originator_topic":"leeway.domain.indexes:CustomerLedger","timestamp":{"_data_":"'
    b'{"actor":"","at":{"_data_":"","_type_":"datetime_iso"},"fingerprint":"","method":"leeway.v1.ActionService/'
    b'DecideAction","method":"leeway.v1.ActionService/ReverseAction","method":"leeway.v1.ActionService/DocumentWin",'
    b'"method":"leeway.v1.ActionService/RecordAction","originator_topic":"leeway.domain.indexes:RequestRecord",'
    b'"request_id":"","result":{"action_id":"act_","budget_id":"","pending":false,"version":1},"timestamp":{"_data_":"'
    b'{"action_id":"act_","amount":{"_data_":"","_type_":"decimal_str"},"at":{"_data_":"","_type_":"datetime_iso"},'
    b'"currency":"USD","employee_id":"","expires_at":null,"pending":false,"timestamp":{"_data_":"'
    b'{"action_id":"act_","amount":{"_data_":"","_type_":"decimal_str"},"at":{"_data_":"","_type_":"datetime_iso"},'
    b'"currency":"USD","employee_id":"","expires_at":null,"kind":"GIFT","pending":false,"timestamp":{"_data_":"'
    b'{"__pii__":["customer_id","case_id","reason"],"actor":"","amount":{"_data_":"","_type_":"decimal_str"},'
    b'"approver_ids":[],"approver_role":"","at":{"_data_":"","_type_":"datetime_iso"},"case_id":"","currency":"USD",'
    b'"customer_id":"","details":{"gift_type":""},"employee_id":"","escalation_reasons":[],"expires_at":null,'
    b'"kind":"GIFT","occur_time":{"_data_":"","_type_":"datetime_iso"},"pending":false,"policy_version":1,'
    b'"reason":"","request_id":"","team_id":"","timestamp":{"_data_":"2026-01-01T00:00:00.000000+00:00",'
    b'"_type_":"datetime_iso"}}'
)

_COMPRESSOR = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, DICTIONARY_V1)
_DECOMPRESSOR = zlib.decompressobj(_WBITS, DICTIONARY_V1)


def dictionary_digest() -> str:
    return hashlib.sha256(DICTIONARY_V1).hexdigest()


def is_packed(raw: bytes | memoryview) -> bool:
    return len(raw) > 0 and raw[0] == PACKED_V1


_HEX64 = re.compile("[0-9a-f]{64}")


def packable(prev: str, this: str) -> bool:
    """Whether two chain values can be stored as raw bytes and read back exactly (64 lowercase hex digits each;
    anything else, such as a damaged predecessor's hash, is stored in the JSON form)."""
    return _HEX64.fullmatch(prev) is not None and _HEX64.fullmatch(this) is not None


def packable_hash(value: str) -> bool:
    """``packable`` of one chain value."""
    return _HEX64.fullmatch(value) is not None


def pack(prev: str, this: str, body: bytes) -> bytes:
    """The packed state of a canonical JSON ``body`` whose chain values are ``prev`` and ``this`` (``packable``)."""
    return pack_raw(bytes.fromhex(prev), bytes.fromhex(this), body)


def pack_raw(prev: bytes, this: bytes, body: bytes) -> bytes:
    """``pack`` with the two hashes as their 32 raw bytes."""
    compressor = _COMPRESSOR.copy()  # a copy of the primed compressor: cheaper than priming a new one
    return b"\x01" + prev + this + compressor.compress(body) + compressor.flush()


def unpack(raw: bytes | memoryview) -> tuple[bytes, str, str]:
    """(the canonical JSON body, prev hash, this hash) of a packed state; ValueError if it is not a whole one."""
    raw = bytes(raw)
    if len(raw) <= _HEADER or raw[0] != PACKED_V1:
        raise ValueError("not a packed event state")
    decompressor = _DECOMPRESSOR.copy()
    try:
        body = decompressor.decompress(raw[_HEADER:])
    except zlib.error as error:
        raise ValueError(f"a packed event state does not decompress: {error}") from error
    if not decompressor.eof or decompressor.unused_data:
        raise ValueError("a packed event state is truncated or has trailing bytes")
    return body, raw[1:33].hex(), raw[33:_HEADER].hex()


def stored_hash(raw: bytes | memoryview) -> str | None:
    """The ``__hash__`` of a packed state read from its header without decompressing (None if not packed)."""
    if len(raw) > _HEADER and raw[0] == PACKED_V1:
        return bytes(raw[33:_HEADER]).hex()
    return None
