"""Tamper evidence for the event log, and the log as auditors read it: the one import for audit tooling.

Every stored event's JSON state gets two extra keys, ``__prev__`` (the hash of the previous event of the same
aggregate; 64 zeros for version 1) and ``__hash__`` (this event's hash). The hash is

    SHA-256( prev_hash "\\n" aggregate_id "\\n" version "\\n" topic "\\n" canonical(state) )

where ``canonical(state)`` is the event's JSON state without the two keys, re-serialised with sorted keys,
no whitespace and UTF-8 (``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``). So
the chain can be checked from the stored rows, or from an export, with nothing but a JSON parser and SHA-256.
Snapshots are not part of the log and are stored without a chain.

What is checked, in one pass (chains, what the log points at, checkpoints): ``integrity.py``. The export format
(header, events, seal) and its offline verification: ``export.py``. Both are re-exported here.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from ..adapters.hash_chain import GENESIS, event_hash
from .export import BudgetRebuilder, Export, export_line, export_lines, read_export, rebuild_budgets, verify_export
from .integrity import (
    Checkpoint,
    Record,
    Verification,
    Verifier,
    Violation,
    log_link,
    records_from_notifications,
    references,
    verify,
)

__all__ = [
    "GENESIS", "BudgetRebuilder", "Checkpoint", "Export", "Record", "Verification", "Verifier", "Violation",
    "event_hash", "event_type", "export_line", "export_lines", "log_link", "plain", "read_export", "rebuild_budgets",
    "records_from_notifications", "references", "verify", "verify_export",
]  # fmt: skip

# ---------------------------------------------------------------------------- the log as people read it


def event_type(topic: str) -> str:
    """'leeway.domain.budget:Budget.ActionRecorded' -> 'Budget.ActionRecorded'."""
    return topic.rpartition(":")[2]


def plain(value: Any) -> Any:
    """Decoded event data made JSON-safe: Decimal and UUID as strings, datetimes as ISO 8601, value objects as
    their dict form."""
    from datetime import date, datetime
    from decimal import Decimal

    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
