"""Boundaries above a single employee: the team and customer ledgers, and the organisation's limits.

- ``TeamLedger``: one per team; the team's period cap and its members' spend per day and open holds. Every
  action of a member is counted here in the same transaction as on the member's budget, so concurrent actions
  of different members can never pass the cap together (the second writer loses the optimistic-concurrency
  race and decides again against the new total).
- ``CustomerLedger``: every action taken for one customer, by any employee (ListActions by customer), and
  the customer's spend per day and open holds, for the organisation-wide per-customer cap; named after the
  customer's key (``domain/customers.py``), it also remembers the ledgers of the customer's older spellings.
- ``OrgLimits``: the organisation's settings; today the per-customer cap across all employees, per currency.

Both ledgers are a ``Ledger``: one implementation of the tally, its holds and their events. Their caps are
checked by ``rules.check_team_cap`` and ``rules.check_customer_cap`` before an action is counted. Event classes are
stored per aggregate under their first homes (``keep_legacy_topics`` at the bottom): never rename one, nor
an attribute of one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from .ids import leeway_id
from .singleton import Singleton, created
from .money import Money
from .tally import (
    Cap,
    CapUsage,
    add_hold,
    add_spend,
    cap_usage,
    day_of,
    new_tally,
    release_hold,
    settle_hold,
    usages,
)
from .topics import keep_legacy_topics


def _ledger_events() -> tuple[Any, Any, Any]:
    """The events both ledgers have, defined once: each aggregate class gets its own event classes from them
    (``TeamLedger.HoldSettled``, ``CustomerLedger.HoldSettled``, ...), with the same attributes."""

    @event("HoldSettled")
    def _hold_settled(self: Ledger, action_id: str, at: datetime) -> None:
        settle_hold(self.tally, action_id, at)

    @event("HoldReleased")
    def _hold_released(self: Ledger, action_id: str, outcome: str, at: datetime) -> None:
        release_hold(self.tally, action_id)

    @event("ActionReversed")
    def _action_reversed(self: Ledger, action_id: str, currency: str, day: str, amount: Decimal, at: datetime) -> None:
        add_spend(self.tally, currency, day, -amount, at)

    return _hold_settled, _hold_released, _action_reversed


class Ledger:
    """What the team and customer ledgers share: a tally of spend per UTC day and open holds (see ``tally``),
    the commands on it, and (through ``_ledger_events``) the events that apply them."""

    tally: dict[str, Any]

    def _tally_action(
        self, action_id: str, amount: Decimal, currency: str, pending: bool, expires_at: datetime | None, at: datetime
    ) -> None:
        """Counts an action's amount as spend on its day, or as a hold until it is decided or expires."""
        if pending:
            assert expires_at is not None
            add_hold(self.tally, action_id, currency, day_of(at), amount, expires_at)
        else:
            add_spend(self.tally, currency, day_of(at), amount, at)

    def settle(self, action_id: str, now: datetime) -> None:
        """An approved hold becomes spend."""
        if action_id in self.tally["holds"]:
            self._hold_settled(action_id=action_id, at=now)  # type: ignore[attr-defined]

    def release(self, action_id: str, outcome: str, now: datetime) -> None:
        """A denied or expired hold stops counting."""
        if action_id in self.tally["holds"]:
            self._hold_released(action_id=action_id, outcome=outcome, at=now)  # type: ignore[attr-defined]

    def reverse(self, action_id: str, amount: Money, day: str, now: datetime) -> None:
        """A reversed action's amount comes off the day it was recorded."""
        self._action_reversed(  # type: ignore[attr-defined]
            action_id=action_id, currency=amount.currency, day=day, amount=amount.amount, at=now
        )

    def _usage(self, cap: Cap | None, now: datetime) -> CapUsage:
        return cap_usage(self.tally, cap, now)

    def usages(self, caps: Mapping[str, Cap], now: datetime) -> list[CapUsage]:
        """Where each currency stands: against its cap, or what was spent and is held without one (``tally.usages``)."""
        return usages(self.tally, caps, now)


class TeamLedger(Ledger, Aggregate):
    """A team's period cap and what its members spent and hold per day."""

    @staticmethod
    def create_id(team_id: str) -> UUID:
        return leeway_id(f"team-ledger:{team_id}")

    @event("Created")
    def __init__(self, team_id: str) -> None:
        self.team_id = team_id
        self.cap_data: dict[str, Any] | None = None
        self.tally = new_tally()

    @event("CapSet")
    def _cap_set(self, cap: dict[str, Any] | None, at: datetime, actor: str = "") -> None:
        self.cap_data = cap

    @event("ActionCounted")
    def count_action(
        self,
        action_id: str,
        employee_id: str,
        amount: Decimal,
        currency: str,
        pending: bool,
        expires_at: datetime | None,
        at: datetime,
    ) -> None:
        self._tally_action(action_id, amount, currency, pending, expires_at, at)

    _hold_settled, _hold_released, _action_reversed = _ledger_events()

    @property
    def cap(self) -> Cap | None:
        return Cap.from_dict(self.cap_data)

    def set_cap(self, cap: Cap | None, now: datetime, actor: str = "") -> None:
        self._cap_set(cap=None if cap is None else cap.to_dict(), at=now, actor=actor)

    def usage(self, now: datetime) -> CapUsage:
        return self._usage(self.cap, now)


class CustomerLedger(Ledger, Aggregate):
    """Every action taken for one customer, by any employee, and what the customer received per day. Its id is
    chosen by ``CustomerLedgerIds`` (a keyed id with a key store; ``create_id``, the legacy name-based one,
    otherwise and for ledgers created before keyed ids existed)."""

    @staticmethod
    def create_id(customer_id: str) -> UUID:
        """The legacy, name-based id (uuid5 of the customer id): computable by anyone who has a candidate id."""
        return leeway_id(f"customer:{customer_id}")

    @event("Created")
    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.action_count = 0
        self.tally = new_tally()

    @event("ActionNoted")
    def note_action(
        self,
        action_id: str,
        employee_id: str,
        kind: str,
        amount: Decimal,
        currency: str,
        at: datetime,
        pending: bool = False,
        expires_at: datetime | None = None,
    ) -> None:
        self.action_count += 1
        self._tally_action(action_id, amount, currency, pending, expires_at, at)

    _hold_settled, _hold_released, _action_reversed = _ledger_events()

    @event("SpellingsNoted")
    def _spellings_noted(self, spellings: list[str], at: datetime) -> None:
        self.other_spellings = [*self.spellings, *spellings]

    @property
    def spellings(self) -> list[str]:
        """Other ids under which this customer's earlier actions were stored (each has a ledger of its own): ids
        sent before customer ids were normalised, found by the scan of the log (``domain/customers.py``)."""
        return list(getattr(self, "other_spellings", []))

    def note_spellings(self, spellings: list[str], now: datetime) -> None:
        new = [s for s in dict.fromkeys(spellings) if s not in self.spellings and s != self.customer_id]
        if new:
            self._spellings_noted(spellings=new, at=now)

    def usage(self, cap: Cap | None, now: datetime) -> CapUsage:
        return self._usage(cap, now)


@dataclass(frozen=True)
class CustomerLedgerIds:
    """Where a customer's ledgers are (issue 22). ``keyed_id`` (given by the application from its key store: an
    HMAC of the customer id under a key that never leaves it, so not computable from the id alone) names the
    ledgers created from now on; an id erased since (``[erased:<pseudonym>]``) names the same ledger. Without a
    key store (None) every ledger has the legacy name-based id, as before. A customer may have both: the legacy
    ledger holds what was counted before the key store existed and is counted with the keyed one."""

    keyed_id: Callable[[str], UUID] | None = None

    def keyed(self, customer_id: str) -> UUID | None:
        return None if self.keyed_id is None else self.keyed_id(customer_id)

    @staticmethod
    def legacy(customer_id: str) -> UUID:
        return CustomerLedger.create_id(customer_id)

    def of(self, customer_id: str) -> tuple[UUID, ...]:
        """The ids a ledger of ``customer_id`` may have: the legacy one, then the keyed one (if any)."""
        keyed = self.keyed(customer_id)
        legacy = self.legacy(customer_id)
        return (legacy,) if keyed is None else (legacy, keyed)

    def new(self, customer_id: str) -> CustomerLedger:
        """A new ledger for ``customer_id``, under its keyed id (the legacy one without a key store)."""
        keyed = self.keyed(customer_id)
        if keyed is None:
            return CustomerLedger(customer_id=customer_id)
        # The library's constructor takes no id unless the class declares one: create it as the constructor does.
        return CustomerLedger._create(CustomerLedger.Created, id=keyed, customer_id=customer_id)  # type: ignore[attr-defined]  # noqa: SLF001


#: Legacy ids only: no key store.
LEGACY_LEDGER_IDS = CustomerLedgerIds()


class OrgLimits(Singleton, Aggregate):
    """The organisation's boundaries: the per-customer cap across all employees, one per currency (an action is
    counted against the cap in its own currency; a currency without one has no organisation-wide cap). There is
    one."""

    NAME = "organisation"
    ID_PREFIX = "org-limits"
    __init__ = created()

    def _start(self) -> None:
        self.customer_cap_data: dict[str, Any] | None = None
        self.customer_caps_data: dict[str, dict[str, Any]] = {}
        self.customer_ids_scanned: dict[str, int] = {}

    @event("CustomerCapSet")
    def _customer_cap_set(self, cap: dict[str, Any] | None, at: datetime, actor: str = "") -> None:
        """The caps in force are exactly ``cap``, or none: how every change was recorded before caps per currency,
        and still is while at most one currency has a cap (so such a log reads the same to earlier versions)."""
        self.customer_cap_data = cap
        self.customer_caps_data = {} if cap is None else {cap["amount"]["currency"]: cap}

    @event("CustomerCapChanged")
    def _customer_cap_changed(self, currency: str, cap: dict[str, Any] | None, at: datetime, actor: str = "") -> None:
        """The cap of one currency is set (or removed, ``cap`` None) beside the caps of other currencies."""
        caps = dict(self._caps_data())
        if cap is None:
            caps.pop(currency, None)
        else:
            caps[currency] = cap
        self.customer_caps_data = caps

    @event("CustomerIdsScanned")
    def _customer_ids_scanned(self, form: str, position: int, at: datetime) -> None:
        """The log was scanned for customer ids stored under other spellings than their key in ``form``, up to
        ``position`` (``application/customers.py``)."""
        self.customer_ids_scanned = {**self.scanned, form: position}

    @property
    def scanned(self) -> dict[str, int]:
        """Per customer-id form, the log position up to which ids under older spellings were looked for."""
        return dict(getattr(self, "customer_ids_scanned", {}))

    def mark_scanned(self, form: str, position: int, now: datetime) -> None:
        if position > self.scanned.get(form, 0):
            self._customer_ids_scanned(form=form, position=position, at=now)

    def _caps_data(self) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] | None = getattr(self, "customer_caps_data", None)
        if data is None:  # a snapshot taken before caps per currency: its one cap
            cap = self.customer_cap_data
            data = {} if cap is None else {cap["amount"]["currency"]: cap}
        return data

    @property
    def customer_caps(self) -> dict[str, Cap]:
        """The per-customer cap of each currency that has one."""
        return {currency: Cap.from_dict(data) for currency, data in self._caps_data().items()}  # type: ignore[misc]

    def set_customer_cap(self, cap: Cap | None, now: datetime, actor: str = "", *, currency: str = "") -> None:
        """Sets the cap of ``cap``'s currency; with ``cap`` None, removes the cap of ``currency``, or every cap
        when no currency is named."""
        caps = self.customer_caps
        if cap is not None:
            currency = cap.amount.currency
            caps[currency] = cap
        elif currency:
            caps.pop(currency, None)
        else:
            caps = {}
        if len(caps) <= 1:
            only = next(iter(caps.values()), None)
            self._customer_cap_set(cap=None if only is None else only.to_dict(), at=now, actor=actor)
        else:
            self._customer_cap_changed(
                currency=currency, cap=None if cap is None else cap.to_dict(), at=now, actor=actor
            )


keep_legacy_topics("leeway.domain.limits", TeamLedger, OrgLimits)
keep_legacy_topics("leeway.domain.indexes", CustomerLedger)
