"""adapters/save_cache.SaveCache: what a save works out (an event's hash, its subject) is this thread's until the
save commits, is forgotten when it is discarded, and what is read from the store is shared at once."""

from __future__ import annotations

import threading

from leeway.adapters.save_cache import SaveCache


def _elsewhere(cache: SaveCache[str, str], key: str) -> str | None:
    """``key`` as another thread sees it (its read from the store finds nothing)."""
    seen: list[str | None] = []
    thread = threading.Thread(target=lambda: seen.append(cache.get(key, lambda: None)))
    thread.start()
    thread.join()
    return seen[0]


def test_a_save_sees_its_own_values_and_others_see_them_once_it_commits() -> None:
    cache: SaveCache[str, str] = SaveCache()
    cache.begin()
    cache.remember("a", "1")
    assert cache.get("a", lambda: "stored") == "1"
    assert _elsewhere(cache, "a") is None
    cache.commit()
    assert _elsewhere(cache, "a") == "1"


def test_a_discarded_save_leaves_nothing_and_outside_a_save_nothing_is_remembered() -> None:
    cache: SaveCache[str, str] = SaveCache()
    cache.remember("b", "no save")
    cache.commit()
    cache.begin()
    cache.remember("a", "lost race")
    cache.discard()
    cache.commit()
    assert cache.get("a", lambda: None) is None and cache.get("b", lambda: None) is None


def test_a_stored_value_is_read_once_and_a_missing_one_every_time() -> None:
    cache: SaveCache[str, str] = SaveCache()
    reads: list[str] = []

    def read(key: str, value: str | None):
        return lambda: reads.append(key) or value

    assert cache.get("a", read("a", "stored")) == "stored"
    assert cache.get("a", read("a", "stored")) == "stored"
    assert cache.get("b", read("b", None)) is None
    assert cache.get("b", read("b", None)) is None
    assert reads == ["a", "b", "b"]


def test_the_least_recently_committed_values_go_beyond_max_cached() -> None:
    cache: SaveCache[str, str] = SaveCache(max_cached=2)
    for keys in (["a", "b"], ["c", "a"]):
        cache.begin()
        for key in keys:
            cache.remember(key, key.upper())
        cache.commit()
    assert [_elsewhere(cache, key) for key in "abc"] == ["A", None, "C"]
