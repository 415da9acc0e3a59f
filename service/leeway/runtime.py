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
"""

from __future__ import annotations

import gc

#: gc.set_threshold() arguments while tuned (CPython's defaults are 700, 10, 10).
TUNED_THRESHOLDS = (10_000, 20, 20)


def tune_garbage_collector() -> None:
    """Call once start-up is done (the server is built, the connection pools are open)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*TUNED_THRESHOLDS)
