"""Snapshots sealed (issue 22). A snapshot is a cache of an aggregate's whole state, personal fields included in
clear (a budget's actions hold their customers' ids and reasons), so with a key store every snapshot is encrypted
whole with AES-256-GCM under one data key of the key store's own (``SUBJECT``), before it is stored:
``LWSNAP1.<key id>.<nonce><ciphertext>``. Per data subject it cannot be (one budget's snapshot holds many
customers'); instead every erasure shreds that key too (``application/privacy.py``), so every snapshot taken
before it becomes unreadable at once (in the table, in PostgreSQL's dead row versions, in a backup that lacks the
key), and then deletes them, as before.

A snapshot stored before this (plain JSON) reads as it is. One that cannot be read (its key shredded, e.g. taken
by another replica with the key it still had cached; or damaged) is a cache miss: its aggregate replays from its
events (``SealedSnapshotStore``, and ``bulk_reads`` for PostgreSQL's batched reads).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import EventStore, MapperDeserialisationError

from .keystore import KeyStore, KeyStoreError

log = structlog.get_logger("leeway.snapshots")

PREFIX = b"LWSNAP1."
#: The key store subject of the snapshots' key (shredded on every erasure).
SUBJECT = "snapshots:all"


class SnapshotUnreadable(Exception):
    """A sealed snapshot whose key is gone (shredded) or that does not decrypt."""


class SnapshotCipher:
    """The ``cipher`` of the snapshot store's mapper (eventsourcing calls ``encrypt`` / ``decrypt`` on the encoded
    state). Without a key store (``keys()`` None) snapshots are stored in clear, as before."""

    def __init__(self, keys: Callable[[], KeyStore | None]):
        self.keys = keys

    def encrypt(self, plaintext: bytes) -> bytes:
        keys = self.keys()
        if keys is None:
            return plaintext
        key_id, key = keys.current_key(SUBJECT)
        nonce = secrets.token_bytes(12)
        return PREFIX + key_id.encode() + b"." + nonce + AESGCM(key).encrypt(nonce, plaintext, PREFIX)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if not ciphertext.startswith(PREFIX):
            return ciphertext  # stored before snapshots were sealed (or without a key store)
        keys = self.keys()
        if keys is None:
            raise SnapshotUnreadable("a sealed snapshot, and no key store")
        key_id, _, body = ciphertext[len(PREFIX):].partition(b".")
        try:
            key = keys.key(key_id.decode())
        except (KeyStoreError, UnicodeDecodeError) as error:
            raise SnapshotUnreadable(str(error)) from error
        if key is None:
            raise SnapshotUnreadable("its key was shredded by an erasure")
        try:
            return AESGCM(key).decrypt(body[:12], body[12:], PREFIX)
        except InvalidTag as error:
            raise SnapshotUnreadable("it does not decrypt: the row was changed") from error


def unreadable(error: Exception) -> bool:
    """Whether a snapshot's decoding failed because it is sealed and cannot be opened (a cache miss)."""
    return isinstance(error, MapperDeserialisationError) and isinstance(error.__cause__, SnapshotUnreadable)


class SealedSnapshotStore(EventStore):  # type: ignore[type-arg]
    """The snapshot store: a snapshot that cannot be opened is no snapshot (the aggregate replays its events)."""

    def get(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            found = list(super().get(*args, **kwargs))
        except MapperDeserialisationError as error:
            if not unreadable(error):
                raise
            log.warning("snapshot.unreadable", error=str(error.__cause__))
            found = []
        return iter(found)
