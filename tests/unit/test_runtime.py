"""The garbage-collector tuning of the long-running commands (runtime.py), in a fresh interpreter so that this
test process keeps its own collector settings."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from leeway.runtime import OS_THREAD_NAME_MAX, TUNED_THRESHOLDS, name_os_thread

PROBE = """
import gc, json
from leeway.runtime import tune_garbage_collector
start_up = [[i] for i in range(50_000)]  # objects built at start-up: frozen, skipped by later collections
before = {"thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count()}
tune_garbage_collector()
after = {"thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count()}
# Cyclic garbage made after tuning is still collected.
import weakref
class Node: pass
node = Node(); node.self = node; alive = weakref.ref(node); del node
gc.collect()
print(json.dumps({"before": before, "after": after, "cycle_collected": alive() is None, "still_ours": len(start_up)}))
"""


def test_tuning_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["before"]["thresholds"] == [700, 10, 10] and report["before"]["frozen"] == 0
    assert report["after"]["thresholds"] == list(TUNED_THRESHOLDS)
    assert report["after"]["frozen"] > 50_000  # start-up objects now sit in the permanent generation
    assert report["cycle_collected"] is True
    assert report["still_ours"] == 50_000


def _os_name_of(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().rstrip("\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names are read from /proc (Linux)")
def test_threads_get_their_python_name_or_a_given_one_at_the_os_level() -> None:
    seen: dict[str, str] = {}

    def run(key: str, name: str | None) -> None:
        before = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().rstrip("\n")
        name_os_thread(name)
        seen[key] = before + " -> " + _os_name_of(threading.current_thread())

    threads = [
        threading.Thread(target=run, args=("own", None), name="leeway-probe"),
        threading.Thread(target=run, args=("long", None), name="projection-customer-usage"),  # > 15 bytes
        threading.Thread(target=run, args=("given", "leeway-given"), name="ignored"),
    ]
    for thread in threads:
        thread.start()
        thread.join(10)
    # Before: whatever the process is called (python...), as CPython 3.11 names no thread.
    assert seen["own"].endswith(" -> leeway-probe") and not seen["own"].startswith("leeway-probe")
    assert seen["long"].endswith(" -> " + "projection-customer-usage"[:OS_THREAD_NAME_MAX])
    assert seen["given"].endswith(" -> leeway-given")
    # The calling thread only: this one keeps its name.
    assert _os_name_of(threading.main_thread()) != "leeway-probe"


def test_long_garbage_collections_are_reported() -> None:
    """``watch_gc_pauses`` reports a collection that took at least GC_PAUSE_WARNING_SECONDS, and nothing else."""
    import gc
    import time

    from leeway import runtime

    seen: list[tuple[int, float, int]] = []
    before = list(gc.callbacks)
    try:
        runtime.watch_gc_pauses(lambda generation, seconds, collected: seen.append((generation, seconds, collected)))
        stall = lambda phase, info: time.sleep(0.03) if phase == "start" else None  # noqa: E731
        gc.callbacks.append(stall)  # after the watcher: its sleep falls between the watcher's start and stop
        gc.collect(0)
        gc.callbacks.remove(stall)
        gc.collect(0)  # quick: not reported
    finally:
        gc.callbacks[:] = before
    assert len(seen) == 1 and seen[0][0] == 0 and seen[0][1] >= runtime.GC_PAUSE_WARNING_SECONDS
