"""Customer ids sent before they were normalised: found in the log once and noted on the ledgers of their keys.

Events are never rewritten. Instead, a scan reads every ``CustomerLedger.Created`` event (each customer id ever
stored has a ledger) after the position the previous scan for the same form reached, and groups the ids by their
key (``domain/customers.py``). An id other than its key is an older spelling: it is noted on the key's ledger
(``NoteCustomerSpellings``, idempotent: replicas scanning at once agree), and the position reached is recorded on
``OrgLimits``. From then on the caps, the per-customer limits and every read by customer count what the old
spellings hold (``CustomerLedger.spellings``).

The server scans at start-up, before it serves; ``leeway migrate`` does too. New ledgers are named after keys, so
once the log is scanned only ledgers written by an older version (during a rolling upgrade) or under another form
need a scan: the next start finds them. Customer ids are personal data: only counts are logged.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import structlog

from ..adapters.hash_chain import parse_state
from ..domain.customers import customer_key
from ..domain.ledgers import CustomerLedger, OrgLimits
from .commands import NoteCustomerSpellings

log = structlog.get_logger("leeway.customers")

#: The stored topic of a customer ledger's first event, which names the customer id as it was stored.
CREATED_TOPIC = CustomerLedger.Created.TOPIC  # type: ignore[attr-defined]
#: Keys noted per command (one transaction).
KEYS_PER_COMMAND = 200
#: A scan that found nothing records how far it read only if it read this far (so that the next start reads less).
RECORD_AFTER = 10_000


def scan_customer_spellings(app: Any) -> int:
    """Notes the older spellings of customer ids stored since the last scan for the deployment's form (``app``: the
    LeewayApplication); returns how many keys got spellings they did not have."""
    form = app.conventions.customer_ids.value
    with app.store_errors():
        org = app.get_or_none(OrgLimits.the_id())
        start = org.scanned.get(form, 0) if org is not None else 0
        head = int(app.recorder.max_notification_id() or 0)
        found: dict[str, set[str]] = defaultdict(set)
        for stored in _stored_ids(app, start):
            key = customer_key(stored, app.conventions.customer_ids)
            if key != stored:
                found[key].add(stored)
    if not found and head - start < RECORD_AFTER:
        return 0
    noted = 0
    keys = sorted(found)
    chunks = [keys[i : i + KEYS_PER_COMMAND] for i in range(0, len(keys), KEYS_PER_COMMAND)] or [[]]
    for number, chunk in enumerate(chunks, start=1):
        spellings = tuple((key, tuple(sorted(found[key]))) for key in chunk)
        position = head if number == len(chunks) else start  # the mark moves once every chunk is noted
        digest = hashlib.sha256(json.dumps([form, position, spellings]).encode()).hexdigest()[:32]
        command = NoteCustomerSpellings(
            request_id=f"customer-spellings:{digest}", form=form, position=position, spellings=spellings
        )
        noted += app.execute(command).noted
    log.info("customers.spellings_scanned", form=form, after=start, up_to=head, keys=len(found), noted=noted)
    return noted


def _stored_ids(app: Any, after: int) -> Iterator[str]:
    for notification in app.all_notifications(after, topics=(CREATED_TOPIC,)):
        try:
            state = parse_state(notification.state)
            if "customer_id" in (state.get("__pii__") or ()):
                continue  # encrypted (issue 22): stored since keys existed, under its key
            yield str(state["customer_id"])
        except (ValueError, KeyError):
            continue  # a damaged row: VerifyIntegrity names it
