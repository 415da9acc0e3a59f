"""How this deployment reads what callers send: the settings that commands and queries apply before the domain
sees a request (customer ids become keys, ``occur_time`` has a horizon). Commands get them when they are admitted
(``Command.admitted``), queries from the application."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from ..domain.customers import CustomerIdForm, customer_key
from ..domain.ledgers import LEGACY_LEDGER_IDS, CustomerLedgerIds
from ..domain.rules import MAX_OCCUR_AGE


@dataclass(frozen=True)
class Conventions:
    #: How customer ids become keys (``LEEWAY_CUSTOMER_ID_NORMALIZATION``; see ``domain/customers.py``).
    customer_ids: CustomerIdForm = CustomerIdForm.CASEFOLD
    #: How far back ``occur_time`` may be (``LEEWAY_OCCUR_TIME_MAX_AGE_DAYS``).
    occur_time_max_age: timedelta = MAX_OCCUR_AGE
    #: (kind, id) -> how the id reads once its subject was erased (``[erased:<pseudonym>]``; issue 22): set by the
    #: application when it has a key store, so that what was counted under an erased id still counts.
    erased_spelling: Callable[[str, str], str] | None = None
    #: Where customers' ledgers are: keyed ids with a key store (issue 22), set by the application; legacy
    #: name-based ids without one.
    customer_ledgers: CustomerLedgerIds = LEGACY_LEDGER_IDS

    def customer_key(self, raw: str) -> str:
        return customer_key(raw, self.customer_ids)

    def erased(self, kind: str, key: str) -> str:
        """How ``key`` (a customer key or a case id) reads once erased; "" without a key store."""
        return self.erased_spelling(kind, key) if self.erased_spelling is not None and key else ""
