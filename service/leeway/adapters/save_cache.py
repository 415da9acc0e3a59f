"""What a save works out about the events it stores (an event's hash, its subject), kept for the events after it.

Within a save (``begin`` .. ``commit`` / ``discard``) the values are this thread's alone; they are shared once the
save committed, so a save that lost an optimistic-concurrency race (``discard``) never poisons the cache. A value
read from the store is shared at once. The least recently stored values go beyond ``max_cached``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SaveCache(Generic[K, V]):
    def __init__(self, max_cached: int = 100_000):
        self.max_cached = max_cached
        self._committed: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def begin(self) -> None:
        self._local.pending = {}

    def commit(self) -> None:
        pending: dict[K, V] = getattr(self._local, "pending", None) or {}
        with self._lock:
            for key, value in pending.items():
                self._committed[key] = value
                self._committed.move_to_end(key)
            while len(self._committed) > self.max_cached:
                self._committed.popitem(last=False)
        self._local.pending = {}

    def discard(self) -> None:
        self._local.pending = {}

    def remember(self, key: K, value: V) -> None:
        """``value`` of ``key``, for this save and, once it commits, for everyone (outside a save: nothing)."""
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending[key] = value

    def learn(self, values: dict[K, V]) -> None:
        """Values read from the store (shared at once, as ``get``'s reads are)."""
        if values:
            with self._lock:
                self._committed.update(values)

    def get(self, key: K, read: Callable[[], V | None]) -> V | None:
        """The value of ``key``: this thread's save's, a committed one, or ``read()`` from the store (kept unless
        it is None)."""
        pending: dict[K, V] = getattr(self._local, "pending", None) or {}
        if key in pending:
            return pending[key]
        with self._lock:
            if key in self._committed:
                return self._committed[key]
        found = read()
        if found is not None:
            with self._lock:
                self._committed[key] = found
        return found
