"""Customer ids as Leeway counts and indexes them.

A CRM may send the same customer as ``GUEST-42``, ``guest-42`` or `` guest-42 ``. Before any cap or index sees a
customer id, it is turned into the customer's **key** (``customer_key``), in one of three forms (the setting
``LEEWAY_CUSTOMER_ID_NORMALIZATION``): ``casefold`` (the default: trim, then case-fold), ``trim`` (for CRMs whose
ids are case-sensitive) or ``exact`` (as sent, as before normalisation existed). The key is what is stored in
new events, what the customer ledger is named after and what per-customer limits and caps count.

Events written before (or under another form) hold the ids as they were then: the old **spellings** of a key.
They are never rewritten; they are found again at read time: a budget compares its own stored ids by their key
(``spellings_in``), and a customer ledger remembers the other ledgers that hold the same customer under an old
spelling (``CustomerLedger.spellings``, noted once by a scan of the log at start-up: see
``application/customers.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from .validation import check_id


class CustomerIdForm(StrEnum):
    """How a customer id becomes its key. Values are configuration: never rename them."""

    CASEFOLD = "casefold"
    TRIM = "trim"
    EXACT = "exact"


def customer_key(raw: str, form: CustomerIdForm = CustomerIdForm.CASEFOLD) -> str:
    """The key of the customer id ``raw``. An id that is not valid once trimmed is returned as it was sent, so that
    validation refuses it as sent (and case-folding never turns an invalid id, such as one with ``ß`` or the
    Kelvin sign, into a valid one)."""
    if form is CustomerIdForm.EXACT:
        return raw
    trimmed = raw.strip()
    if check_id(trimmed, "customer_id"):
        return raw
    return trimmed.casefold() if form is CustomerIdForm.CASEFOLD else trimmed


def spellings_in(stored: Iterable[str], key: str, form: CustomerIdForm) -> tuple[str, ...]:
    """The ids among ``stored`` (as events hold them) that are ``key`` under ``form``, other than ``key`` itself,
    sorted."""
    if form is CustomerIdForm.EXACT:
        return ()
    # customer_key(s) is s itself (an invalid id) or s trimmed (and case-folded): a cheap test first, the exact one
    # on the few that pass it (a budget holds every customer of its period; this runs for every action).
    fold = form is CustomerIdForm.CASEFOLD
    return tuple(sorted({
        s for s in stored
        if s != key and (s.strip().casefold() if fold else s.strip()) == key and customer_key(s, form) == key
    }))
