"""The hash chain stored with every event: each event's JSON state gets two extra keys, ``__prev__`` (the hash of
the previous event of the same aggregate; 64 zeros for version 1) and ``__hash__`` (this event's hash). The hash is

    SHA-256( prev_hash "\\n" aggregate_id "\\n" version "\\n" topic "\\n" canonical(state) )

where ``canonical(state)`` is the event's JSON state without the two keys, re-serialised with sorted keys,
no whitespace and UTF-8 (``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
``ChainedMapper`` computes it as events are saved; ``application/audit.py`` verifies it. Snapshots are not part
of the log and are stored without a chain.

With a ``Sealer`` (``adapters/pii.py``, issue 22) the personal fields are encrypted before the state is hashed:
the chain covers the stored (encrypted) form, so shredding a key never breaks it.

Since issue 21 an event is stored **packed** (``packing.py``: the canonical body DEFLATE-compressed, the two hashes
as raw bytes in a header); ``parse_state`` reads both that and the JSON form of older rows into the same state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
)
from eventsourcing.utils import get_topic

from . import packing
from .pii import Sealer
from .save_cache import SaveCache

GENESIS = "0" * 64
PREV, HASH = "__prev__", "__hash__"


def canonical(state: dict[str, Any]) -> bytes:
    body = {k: v for k, v in state.items() if k not in (PREV, HASH)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(prev: str, aggregate_id: str, version: int, topic: str, state: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{prev}\n{aggregate_id}\n{version}\n{topic}\n".encode())
    digest.update(canonical(state))
    return digest.hexdigest()


def _plain_encoding(name: str, encode: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
    """What ``JSONTranscoder._encode_obj`` returns for a value of a transcoding's type."""
    return lambda value: {"_type_": name, "_data_": encode(value)}


def parse_state(raw: bytes) -> dict[str, Any]:
    """An event's stored state as a JSON object with its chain keys, from either stored form (JSON, or packed:
    ``packing.py``); ValueError if it is neither."""
    if packing.is_packed(raw):
        body, prev, this = packing.unpack(raw)
        value = json.loads(body)
        if not isinstance(value, dict):
            raise ValueError("an event's state is not a JSON object")
        value[PREV], value[HASH] = prev, this
        return value
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("an event's state is not a JSON object")
    return value


class ChainedMapper(Mapper):  # type: ignore[type-arg]
    """A Mapper that links every stored event to its predecessor by hash.

    The previous hash of (aggregate, version - 1) comes from a cache of committed events or, on a miss, from the
    stored event itself (``read_previous``). Hashes computed for a ``save()`` are only cached once it committed
    (``begin`` / ``commit`` / ``discard``), so a lost optimistic-concurrency race never poisons the cache.
    """

    #: Store new events packed (``packing.py``); False: in the JSON form of older releases (tests write old logs).
    pack = True

    def __init__(
        self, *args: Any, read_previous: Callable[[UUID, int], StoredEvent | None], sealer: Any = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.read_previous = read_previous
        #: Encrypts personal fields before they are hashed and stored (``adapters/pii.Sealer``); None: stored as sent.
        self.sealer = sealer
        #: (aggregate id, version) -> the hash of that event.
        self._hashes: SaveCache[tuple[str, int], str] = SaveCache()
        transcoder = self.transcoder
        # canonical() in one pass: the transcoder's own encoding of custom types, with sorted keys.
        self._canonical_encoder = (
            json.JSONEncoder(default=transcoder._encode_obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            if type(transcoder) is JSONTranscoder
            else None
        )
        #: The library's own transcodings of an event's most frequent values (its timestamps, amounts), applied to
        #: its top-level attributes before encoding: the same JSON as through the encoder's ``default`` hook, with
        #: fewer calls back into Python. Only those the transcoder has registered as the library's classes.
        self._plain: dict[type, Callable[[Any], dict[str, Any]]] = {}
        if self._canonical_encoder is not None:
            # What those classes' ``encode`` does, called directly (the same text).
            for value_type, library_class, encode in (
                (datetime, DatetimeAsISO, datetime.isoformat), (Decimal, DecimalAsStr, Decimal.__str__),
            ):
                transcoding = transcoder.types.get(value_type)
                if type(transcoding) is library_class:
                    self._plain[value_type] = _plain_encoding(transcoding.name, encode)

    # ------------------------------------------------------------------ save brackets

    def begin(self) -> None:
        self._hashes.begin()
        if self.sealer is not None:
            self.sealer.begin()

    def commit(self) -> None:
        if self.sealer is not None:
            self.sealer.commit()
        self._hashes.commit()

    def discard(self) -> None:
        self._hashes.discard()
        if self.sealer is not None:
            self.sealer.discard()

    # ------------------------------------------------------------------ mapping

    def _previous_hash(self, originator_id: UUID, version: int, id_text: str | None = None) -> str:
        if version <= 1:
            return GENESIS
        key = (id_text or str(originator_id), version - 1)
        previous = self._hashes.get(key, lambda: self._stored_hash(originator_id, version - 1))
        return GENESIS if previous is None else previous

    def _stored_hash(self, originator_id: UUID, version: int) -> str | None:
        stored = self.read_previous(originator_id, version)
        if stored is None:
            return None
        packed = packing.stored_hash(stored.state)
        return packed if packed is not None else str(parse_state(stored.state).get(HASH, ""))

    def learn_hashes(self, hashes: dict[tuple[str, int], str]) -> None:
        """The stored hashes of events just read from the store ((aggregate id as text, version) -> hash): the
        next event of each aggregate then chains to it without reading it again (``_stored_hash``)."""
        self._hashes.learn(hashes)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        """One JSON encoding per event: the state is encoded once, canonically (sorted keys, compact, UTF-8:
        exactly ``canonical()`` of what the library's transcoder would store), hashed, and stored with the two
        chain keys appended. The stored key order does not matter to readers or to ``verify``."""
        encoder = self._canonical_encoder
        if encoder is None or self.compressor is not None or self.cipher is not None:
            return self._to_stored_event_reencoded(domain_event)
        topic = get_topic(type(domain_event))
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        if PREV in state or HASH in state:
            raise ValueError(f"an event may not have attributes named {PREV} or {HASH}")
        if self.sealer is not None:
            self.sealer.seal(topic, state, originator_id, originator_version)
        plain = self._plain
        for key, value in state.items():
            encode = plain.get(type(value))
            if encode is not None:
                state[key] = encode(value)
        body = encoder.encode(state)
        id_text = str(originator_id)
        prev = self._previous_hash(originator_id, originator_version, id_text)
        digest = hashlib.sha256(f"{prev}\n{id_text}\n{originator_version}\n{topic}\n".encode())
        encoded = body.encode()
        digest.update(encoded)
        raw = digest.digest()
        this = raw.hex()  # 64 lowercase hex digits: packable as it is
        self._hashes.remember((id_text, originator_version), this)
        if self.pack and (prev is GENESIS or packing.packable_hash(prev)):
            stored = packing.pack_raw(bytes.fromhex(prev), raw, encoded)
        else:
            chain = f'"{PREV}":"{prev}","{HASH}":"{this}"}}'
            stored = (body[:-1] + ("," if len(body) > 2 else "") + chain).encode()
        return StoredEvent(
            originator_id=originator_id, originator_version=originator_version, topic=topic, state=stored
        )

    def _to_stored_event_reencoded(self, domain_event: Any) -> StoredEvent:
        """The general path (a transcoder other than JSON, or compression / encryption configured)."""
        stored = super().to_stored_event(domain_event)
        state = parse_state(stored.state)
        if self.sealer is not None:
            self.sealer.seal(stored.topic, state, stored.originator_id, stored.originator_version)
        prev = self._previous_hash(stored.originator_id, stored.originator_version)
        this = event_hash(prev, str(stored.originator_id), stored.originator_version, stored.topic, state)
        state[PREV], state[HASH] = prev, this
        self._hashes.remember((str(stored.originator_id), stored.originator_version), this)
        return StoredEvent(
            originator_id=stored.originator_id,
            originator_version=stored.originator_version,
            topic=stored.topic,
            state=json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode(),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        return self.to_domain_event_and_chain(stored_event)[0]

    def to_domain_event_and_chain(self, stored_event: StoredEvent) -> tuple[Any, str, str]:
        """(the domain event, its stored ``__prev__``, its stored ``__hash__``) from one decoding of the state
        ("" for a chain field that is missing or not a string). Sealed personal fields are opened (``[erased]``
        once their key is shredded, or without a key store). Both stored forms (JSON, packed) are read."""
        if packing.is_packed(stored_event.state):
            try:
                body, prev, this = packing.unpack(stored_event.state)
            except ValueError as error:
                raise MapperDeserialisationError(
                    f"Failed to deserialise state of stored event with topic '{stored_event.topic}', originator_id "
                    f"'{stored_event.originator_id}' and originator_version {stored_event.originator_version}: "
                    f"{error}"
                ) from error
            event = super().to_domain_event(StoredEvent(
                originator_id=stored_event.originator_id, originator_version=stored_event.originator_version,
                topic=stored_event.topic, state=body,
            ))
            attributes = event.__dict__
            attributes.pop(PREV, None), attributes.pop(HASH, None)  # only the header's count
        else:
            event = super().to_domain_event(stored_event)
            attributes = event.__dict__
            prev, this = attributes.pop(PREV, ""), attributes.pop(HASH, "")
        if "__pii__" in attributes:
            if self.sealer is not None:
                self.sealer.open(stored_event.topic, attributes)
            else:  # no key store: sealed fields are shown as such, never as ciphertext
                Sealer(lambda _id, _v: None).open(stored_event.topic, attributes)
        return event, prev if isinstance(prev, str) else str(prev), this if isinstance(this, str) else str(this)
