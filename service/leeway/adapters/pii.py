"""Personal fields encrypted at the storage boundary (issue 22): ``Sealer.seal`` replaces the personal fields of an
event's state (``domain/personal.py``) with AES-256-GCM envelopes under its data subject's key before the state is
hash-chained and stored; ``Sealer.open`` decrypts them when the event is read back. A field whose key was shredded
reads as ``[erased]`` (free text) or ``[erased:<pseudonym>]`` (an identifier).

The stored state of a sealed event lists its sealed fields under ``__pii__`` (``["customer_id", "details.note",
...]``): events stored before this feature (or without a key store) have no such key and are read as they are, so
old logs stay readable and verifiable. An envelope is the string ``<key id>.<pseudonym>.<nonce + ciphertext,
base64url>`` (the pseudonym only for identifiers); its associated data binds it to the event topic and the field.

Without a key store (``open_sealed``, for offline tools) sealed identifiers read as ``[sealed:<pseudonym>]`` and
sealed text as ``[sealed]``.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..domain.personal import (
    ERASED,
    KEPT_DETAIL_KEYS,
    Form,
    Personal,
    Source,
    Subject,
    erased_identifier,
    personal_fields,
)
from .keystore import KeyStore, KeyStoreError
from .save_cache import SaveCache

MARK = "__pii__"
SEALED = "[sealed]"
#: What a sealed field that does not decrypt (its row was changed) reads as in an export's readable view.
UNREADABLE = "[unreadable]"

#: (aggregate id, version) of a stored event, as the sealer needs one: its stored state (None if there is none).
ReadState = Callable[[UUID, int], "dict[str, Any] | None"]


class TamperedField(Exception):
    """A sealed field does not decrypt with its key: the stored row was changed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("[erased", "[sealed"))


def split_envelope(envelope: str) -> tuple[str, str, str]:
    key_id, pseudonym, body = envelope.split(".", 2)
    return key_id, pseudonym, body


def pseudonym_of_envelope(envelope: str) -> str:
    return split_envelope(envelope)[1]


class Sealer:
    """Seals and opens the personal fields of events with the data keys of a ``KeyStore``."""

    def __init__(self, read_state: ReadState, keys: KeyStore | None = None):
        self.keys = keys
        self.read_state = read_state
        self._local = threading.local()
        self._lock = threading.Lock()
        #: (aggregate id, version, subject kind) -> subject, for events that name their subject.
        self._subjects: SaveCache[tuple[str, int, str], str] = SaveCache()
        self._pseudonyms: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.max_cached = 100_000

    # ------------------------------------------------------------------ save brackets (the mapper's)

    def begin(self) -> None:
        self._subjects.begin()

    def commit(self) -> None:
        self._subjects.commit()

    def discard(self) -> None:
        self._subjects.discard()

    # ------------------------------------------------------------------ subjects

    def _pseudonym(self, kind: str, value: str) -> str:
        assert self.keys is not None
        key = (kind, value)
        with self._lock:
            found = self._pseudonyms.get(key)
        if found is None:
            found = self.keys.pseudonym(kind, value)
            with self._lock:
                self._pseudonyms[key] = found
                if len(self._pseudonyms) > self.max_cached:
                    self._pseudonyms.popitem(last=False)
        return found

    def subject(self, kind: Subject | str, value: str) -> str:
        """The key-store subject of a customer key or an employee id (``customer:<pseudonym>``); an erased
        identifier (``[erased:<pseudonym>]``) names the subject of its pseudonym."""
        if value.startswith(("[erased:", "[sealed:")):
            return f"{kind}:{value.split(':', 1)[1].rstrip(']')}"
        return f"{kind}:{self._pseudonym(str(kind), value)}"

    def _stored_subject(self, state: dict[str, Any], kind: Subject) -> str | None:
        field = "customer_id" if kind is Subject.CUSTOMER else "employee_id"
        value = state.get(field)
        if not isinstance(value, str) or not value:
            return None
        if field in (state.get(MARK) or ()):
            return f"{kind}:{pseudonym_of_envelope(value)}"
        return self.subject(kind, value)

    def _subject_at(self, originator_id: UUID, version: int, kind: Subject) -> str | None:
        def read() -> str | None:
            state = self.read_state(originator_id, version)
            return None if state is None else self._stored_subject(state, kind)

        return self._subjects.get((str(originator_id), version, str(kind)), read)

    def _subject_for(self, personal: Personal, state: dict[str, Any], originator_id: UUID) -> str | None:
        if personal.source is Source.FIELD:
            return self._stored_subject(state, personal.subject)
        if personal.source is Source.ACTION:
            return self._subject_at(originator_id, int(state["action_version"]), personal.subject)
        if personal.source is Source.AGGREGATE:
            return self._subject_at(originator_id, 1, personal.subject)
        return None  # EACH: per value

    # ------------------------------------------------------------------ sealing

    def _encrypt(self, subject: str, aad: str, value: str, pseudonym: str = "") -> str:
        key_id, cipher = self._cipher_for(subject)
        nonce = secrets.token_bytes(12)
        body = cipher.encrypt(nonce, value.encode(), aad.encode())
        return f"{key_id}.{pseudonym}.{_b64(nonce + body)}"

    def _cipher_for(self, subject: str) -> tuple[str, AESGCM]:
        """The current key of ``subject`` as a cipher, looked up once per event sealed (``_ciphers``)."""
        ciphers: dict[str, tuple[str, AESGCM]] = getattr(self._local, "ciphers", None) or {}
        found = ciphers.get(subject)
        if found is None:
            assert self.keys is not None
            key_id, key = self.keys.current_key(subject)
            found = ciphers[subject] = (key_id, AESGCM(key))
            self._local.ciphers = ciphers
        return found

    def _seal_identifier(self, subject: str, aad: str, value: str, kind: str) -> str:
        pseudonym = subject.split(":", 1)[1] if kind == "customer" else self._pseudonym(kind, value)
        return self._encrypt(subject, aad, value, pseudonym)

    def seal(self, topic: str, state: dict[str, Any], originator_id: UUID, version: int) -> None:
        """Replaces the personal fields of ``state`` (an event of ``topic`` about to be stored) with envelopes, and
        lists them under ``__pii__``. Empty values and placeholders are left as they are."""
        fields = personal_fields(topic)
        if not fields or self.keys is None:
            return
        self._local.ciphers = {}  # one key lookup per subject per event
        named: dict[Subject, str | None] = {}
        for kind in (Subject.CUSTOMER, Subject.EMPLOYEE):
            subject = named[kind] = self._stored_subject(state, kind)
            if subject is not None:
                self._subjects.remember((str(originator_id), version, str(kind)), subject)
        found: dict[tuple[Subject, Source], str | None] = {}
        subjects = {}
        for name, p in fields.items():
            if p.source is Source.FIELD:
                subjects[name] = named[p.subject]
            elif (p.subject, p.source) in found:
                subjects[name] = found[(p.subject, p.source)]
            else:
                subjects[name] = found[(p.subject, p.source)] = self._subject_for(p, state, originator_id)
        sealed: list[str] = []
        for name, personal in fields.items():
            value, subject = state.get(name), subjects[name]
            if not value or (subject is None and personal.source is not Source.EACH):
                continue
            aad = f"{topic}\n{name}"
            if personal.form is Form.IDENTIFIER or personal.form is Form.TEXT:
                if is_placeholder(value) or not isinstance(value, str):
                    continue
                assert subject is not None
                if personal.form is Form.TEXT:
                    state[name] = self._encrypt(subject, aad, value)
                else:
                    kind = "customer" if name == "customer_id" else name.removesuffix("_id")
                    state[name] = self._seal_identifier(subject, aad, value, kind)
                sealed.append(name)
            elif personal.form is Form.TEXT_VALUES:
                assert subject is not None
                values = dict(value)
                for key, text in value.items():
                    if key not in KEPT_DETAIL_KEYS and isinstance(text, str) and text and not is_placeholder(text):
                        values[key] = self._encrypt(subject, f"{aad}.{key}", text)
                        sealed.append(f"{name}.{key}")
                state[name] = values
            elif personal.form is Form.IDENTIFIER_KEYS:
                customers = value.get("customers") if isinstance(value, dict) else None
                if customers:
                    path = f"{name}.customers"
                    state[name] = {**value, "customers": {
                        (k if is_placeholder(k) else self._seal_identifier(self.subject("customer", k), path, k, "customer")): v
                        for k, v in customers.items()
                    }}  # fmt: skip
                    sealed.append(path)
            elif personal.form is Form.IDENTIFIER_LIST:
                assert subject is not None
                state[name] = [
                    v if is_placeholder(v) else self._seal_identifier(subject, aad, v, "customer") for v in value
                ]
                sealed.append(name)
        if sealed:
            state[MARK] = sealed

    # ------------------------------------------------------------------ opening

    def _decrypt(self, envelope: str, aad: str, identifier: bool, clear: bool = True) -> str:
        key_id, pseudonym, body = split_envelope(envelope)
        if self.keys is None:
            return f"[sealed:{pseudonym}]" if identifier else SEALED
        key = self.keys.key(key_id)
        if key is None:
            return erased_identifier(pseudonym) if identifier else ERASED
        if not clear:
            return f"[sealed:{pseudonym}]" if identifier else SEALED
        raw = _unb64(body)
        try:
            return AESGCM(key).decrypt(raw[:12], raw[12:], aad.encode()).decode()
        except InvalidTag as error:
            raise TamperedField(f"a sealed field ({aad.split(chr(10))[-1]}) does not decrypt: the row was changed") from error

    def open(self, topic: str, state: dict[str, Any], *, clear: bool = True) -> None:
        """Decrypts, in place, the fields ``state`` (an event's attributes, read back) lists under ``__pii__``.
        ``clear`` False: a field whose key exists reads ``[sealed]`` (``[sealed:<pseudonym>]``) instead of its text,
        so that only what was erased is told apart."""
        paths = state.pop(MARK, None)
        if not paths:
            return
        decrypt = self._decrypt if clear else functools.partial(self._decrypt, clear=False)
        fields = personal_fields(topic)
        for path in paths:
            name, _, sub = path.partition(".")
            personal = fields.get(name)
            aad = f"{topic}\n{name}"
            value = state.get(name)
            if personal is None or value is None:
                continue
            if personal.form is Form.TEXT_VALUES:
                state[name] = {**value, sub: decrypt(value[sub], f"{aad}.{sub}", False)}
            elif personal.form is Form.IDENTIFIER_KEYS:
                customers = value.get("customers", {})
                state[name] = {**value, "customers": {
                    (k if is_placeholder(k) else decrypt(k, path, True)): v for k, v in customers.items()
                }}  # fmt: skip
            elif personal.form is Form.IDENTIFIER_LIST:
                state[name] = [v if is_placeholder(v) else decrypt(v, aad, True) for v in value]
            else:
                state[name] = decrypt(value, aad, personal.form is Form.IDENTIFIER)


    def view(self, topic: str, state: dict[str, Any], *, clear: bool = True) -> dict[str, Any] | None:
        """The readable view of a stored state's sealed fields (parsed JSON, left as it is): each path of its
        ``__pii__`` list and what it reads as now (``clear``: its text, or ``[erased]`` once its key was shredded;
        not ``clear``: ``[sealed]`` or ``[erased]``). None for an event with no sealed field. A field that does not
        decrypt (the row was changed) reads ``[unreadable]``: verification reports the change itself."""
        paths = state.get(MARK)
        if not paths or not isinstance(paths, list):
            return None
        copy = dict(state)  # open() replaces the top-level values it changes, never a nested one in place
        try:
            self.open(topic, copy, clear=clear)
        except (TamperedField, KeyStoreError, ValueError, TypeError, KeyError, AttributeError):
            return {str(path): UNREADABLE for path in paths}
        return {str(path): _at(copy, str(path)) for path in paths}


def _at(state: dict[str, Any], path: str) -> Any:
    name, _, sub = path.partition(".")
    value = state.get(name)
    return value.get(sub) if sub and isinstance(value, dict) else value


def legacy_paths(topic: str, state: dict[str, Any]) -> list[str]:
    """The declared personal fields of a stored state that hold text in clear (not sealed, not a placeholder,
    not empty): an event stored before personal data was encrypted (or without a key store). Paths as in
    ``__pii__`` (``details.note``, ``recount.customers``)."""
    fields = personal_fields(topic)
    if not fields:
        return []
    sealed = set(state.get(MARK) or ())
    found = []
    for name, personal in fields.items():
        value = state.get(name)
        if not value:
            continue
        if personal.form is Form.TEXT_VALUES and isinstance(value, dict):
            found += [f"{name}.{k}" for k, v in value.items() if k not in KEPT_DETAIL_KEYS and isinstance(v, str)
                      and v and not is_placeholder(v) and f"{name}.{k}" not in sealed]
        elif personal.form is Form.IDENTIFIER_KEYS and isinstance(value, dict):
            customers = value.get("customers")
            path = f"{name}.customers"
            if isinstance(customers, dict) and path not in sealed and any(not is_placeholder(k) for k in customers):
                found.append(path)
        elif personal.form is Form.IDENTIFIER_LIST and isinstance(value, list):
            if name not in sealed and any(isinstance(v, str) and v and not is_placeholder(v) for v in value):
                found.append(name)
        elif isinstance(value, str) and not is_placeholder(value) and name not in sealed:
            found.append(name)
    return found


def open_sealed(topic: str, state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored state (parsed JSON) with its sealed fields shown without keys (``[sealed...]``): how
    offline tools that read an export present personal fields."""
    copy = json.loads(json.dumps(state))
    Sealer(lambda _id, _v: None).open(topic, copy)
    return copy
