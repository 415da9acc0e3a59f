"""The garbage-collector tuning of the long-running commands (runtime.py), in a fresh interpreter so that this
test process keeps its own collector settings."""

from __future__ import annotations

import json
import subprocess
import sys

from leeway.runtime import TUNED_THRESHOLDS

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
