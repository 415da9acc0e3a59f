"""Process-wide runtime tuning for the long-running commands (`leeway serve`, `leeway projections run`).

CPython's cyclic garbage collector stops every thread while it runs. With its default thresholds (700, 10, 10) a
server that allocates a few thousand objects per request collects the youngest generation hundreds of times a
second, and now and then runs a full collection that walks every object in the process: the modules, the protobuf
descriptors, the writer's aggregate cache. Measured under `make bench` load on PostgreSQL (32 in flight), the
full collections took up to 69 ms, each one delaying every call in flight: the tail of RecordAction latency.

``tune_garbage_collector`` does what long-running Python servers commonly do:

- one collection, then ``gc.freeze()``: what start-up built (modules, descriptors, settings, pools) moves to a
  permanent generation that later collections skip, which halves the full-collection pause measured above;
- thresholds (10,000, 20, 20): the youngest generation is collected after 10,000 net allocations instead of 700,
  and the older generations 2x as rarely; cyclic garbage still gets collected, only in fewer, larger steps
  (reference counting frees everything else at once, as before).

Off with ``LEEWAY_GC_TUNING=false``.

``name_os_thread`` gives Leeway's own threads (the group-commit writer, the projection runners, the health and
expiry loops, the log writer) their names at the operating-system level, which CPython 3.11 does not do: `top -H`,
`ps -L`, `/proc/<pid>/task/*/comm` and profilers then tell the writer's CPU time from the gRPC threads' (`make bench`
reads it that way).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator

#: gc.set_threshold() arguments while tuned (CPython's defaults are 700, 10, 10).
TUNED_THRESHOLDS = (10_000, 20, 20)


def tune_garbage_collector() -> None:
    """Call once start-up is done (the server is built, the connection pools are open)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*TUNED_THRESHOLDS)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """TUNED_THRESHOLDS while a batch job runs in a process that is not tuned (a projection rebuild: it keeps tens of
    thousands of recent events, facts and budgets, which every full collection walks), the thresholds as they were
    after it."""
    before = gc.get_threshold()
    if before[0] >= TUNED_THRESHOLDS[0]:
        yield
        return
    gc.set_threshold(*TUNED_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


#: A garbage collection that stops every thread longer than this is logged (``gc.pause``, a warning).
GC_PAUSE_WARNING_SECONDS = 0.02


def watch_gc_pauses(on_pause: Callable[[int, float, int], None]) -> None:
    """Calls ``on_pause(generation, seconds, collected)`` after every collection that took at least
    GC_PAUSE_WARNING_SECONDS (every thread is stopped meanwhile: it shows in every call's latency)."""
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        seconds = time.perf_counter() - started[0]
        if seconds >= GC_PAUSE_WARNING_SECONDS:
            on_pause(info.get("generation", -1), seconds, info.get("collected", 0))

    gc.callbacks.append(callback)


#: prctl(2) option that names the calling thread (Linux); the kernel keeps at most 15 bytes of the name.
_PR_SET_NAME = 15
OS_THREAD_NAME_MAX = 15


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def name_os_thread(name: str | None = None) -> None:
    """Gives the calling thread an OS-level name: ``name``, or its Python name (truncated to 15 bytes, as the
    kernel keeps it). Linux only; elsewhere, or if the call fails, nothing happens (names are for people)."""
    if not sys.platform.startswith("linux"):
        return
    libc = _libc()
    prctl = getattr(libc, "prctl", None)
    if prctl is None:
        return
    raw = (name if name is not None else threading.current_thread().name).encode("utf-8", "replace")
    prctl(_PR_SET_NAME, ctypes.c_char_p(raw[:OS_THREAD_NAME_MAX]), 0, 0, 0)
