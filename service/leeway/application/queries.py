"""Queries: budgets, actions, teams and customers as callers see them, read from the event store.

``Queries`` is mixed into ``LeewayApplication`` (it reads through the application's repository and events)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from ..domain.approvals import HoldBook
from ..domain.budget import DAILY_HISTORY_DAYS, Budget
from ..domain.customers import spellings_in
from ..domain.directory import Directory, TeamRoster
from ..domain.errors import (
    FieldViolation,
    InvalidArgument,
    Unavailable,
    action_not_found,
    budget_not_found,
    event_missing,
    team_not_found,
)
from ..domain.ids import budget_id_for, parse_action_id
from ..domain.ledgers import CustomerLedger, OrgLimits, TeamLedger
from ..domain.policy import ActionKind
from ..domain.tally import Cap, CapUsage, merged, new_tally, usages
from ..domain.validation import check_id
from ..domain.views import PENDING_APPROVAL, ActionView, BudgetView, action_view, period_view
from . import paging
from .action_views import ActionViews, first_matches
from .conventions import Conventions

T = TypeVar("T")

#: Events read per round trip while scanning a history for a filtered list.
SCAN_CHUNK = 500
#: Positions of one customer ledger when a customer's ledgers are listed one after the other (more than any version).
LEDGER_STRIDE = 2**40


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the token for the next one ("" on the last page)."""

    items: list[T]
    next_page_token: str


#: A usage with nothing to show: no cap, and nothing spent or held in any currency.
NO_USAGE = CapUsage(None, None, None, None, None, None)


@dataclass(frozen=True)
class TeamView:
    """A team: its cap and where it stands in the cap's current period, and what it spent in every currency."""

    team_id: str
    usage: CapUsage
    member_count: int
    version: int
    #: Each currency: against the cap in it, or what was spent and is held this month (``tally.usages``).
    by_currency: tuple[CapUsage, ...] = ()


@dataclass(frozen=True)
class CustomerUsage:
    """The organisation-wide per-customer caps and what one customer received, in every currency (``usage``: the
    first of ``by_currency``)."""

    customer_id: str
    usage: CapUsage
    action_count: int
    by_currency: tuple[CapUsage, ...] = ()


def check_ids(*, required: bool = True, **ids: str) -> None:
    """INVALID_ARGUMENT listing every malformed id."""
    problems = [p for name, value in ids.items() for p in check_id(value, name, required=required)]
    if problems:
        raise InvalidArgument(problems)


class Queries:
    """Every read of the application (mixed into LeewayApplication, which provides the attributes below)."""

    repository: Any
    events: Any
    recorder: Any
    clock: Callable[[], datetime]
    store_errors: Callable[[], Any]
    conventions: Conventions

    # ------------------------------------------------------------------ budgets

    def get_budget(
        self, employee_id: str, as_of: datetime | None = None, period_start: datetime | None = None
    ) -> BudgetView:
        """A budget now; as it stood at ``as_of``; or the figures, as they stand now, of its period that contains
        ``period_start`` (a period that has ended included: see ``_period``)."""
        check_ids(employee_id=employee_id)
        now = self.clock()
        problems = [
            FieldViolation(name, "must not be in the future")
            for name, moment in (("as_of", as_of), ("period_start", period_start))
            if moment is not None and moment > now
        ]
        if as_of is not None and period_start is not None:
            problems.append(FieldViolation("period_start", "give at most one of as_of and period_start"))
        if problems:
            raise InvalidArgument(problems)
        with self.store_errors():
            budget = self.load_budget(employee_id)
            if period_start is not None:
                return self._period(budget, period_start, now)
            if as_of is None:
                return budget.view(now)
            return self._budget_as_of(budget, as_of).view(as_of)

    def _budget_as_of(self, budget: Budget, moment: datetime) -> Budget:
        """``budget`` as it stood at ``moment`` (NOT_FOUND before it was opened)."""
        version = self._version_at(budget.id, budget.version, moment)
        if version == 0:
            raise budget_not_found(budget.employee_id, f"employee {budget.employee_id} had no budget at {moment.isoformat()}")
        return budget if version == budget.version else self.repository.get(budget.id, version=version)  # type: ignore[no-any-return]

    def _period(self, budget: Budget, moment: datetime, now: datetime) -> BudgetView:
        """The budget's period that contains ``moment`` (as its policy then cut periods), with its figures as they
        stand now: approvals of holds requested in it and reversals of its actions count in it whenever they
        happened, and the holds requested in it that still wait are held in it. The allowance and policy are
        those in force when the period ended. The current period is ``GetBudget`` now."""
        # The budget as it stood then, or as it was opened if that was later in the same period.
        then = self.repository.get(budget.id, version=max(self._version_at(budget.id, budget.version, moment), 1))
        if moment < then.period_start:
            raise budget_not_found(
                budget.employee_id, f"employee {budget.employee_id} had no budget period at {moment.isoformat()}"
            )
        start, end = then.period_of(moment)
        current = budget.view(now)
        if (start, end) == (current.period_start, current.period_end):
            return current
        if start < budget.keeps_days_from():
            raise InvalidArgument(
                [
                    FieldViolation(
                        "period_start",
                        f"a budget keeps its figures per day for {DAILY_HISTORY_DAYS} days before its current period; "
                        "use as_of for an older period as it stood then",
                    )
                ]
            )
        closing = budget if end > now else self._budget_as_of(budget, end - timedelta(microseconds=1))
        return period_view(budget, start, end, closing, now)

    def _version_at(self, aggregate_id: UUID, current: int, at: datetime) -> int:
        """The last version recorded at or before ``at`` (0: none), by binary search over single-event reads."""
        low, high = 0, current
        while low < high:
            middle = (low + high + 1) // 2
            if self.event_at(aggregate_id, middle).at <= at:
                low = middle
            else:
                high = middle - 1
        return low

    def list_budgets(self, team_id: str, page_size: int, page_token: str) -> Page[BudgetView]:
        if team_id:
            check_ids(team_id=team_id)
        size = paging.page_size(page_size)
        filters = {"team_id": team_id}
        after = paging.decode_token(page_token, "budgets", filters)
        index_id = TeamRoster.create_id(team_id) if team_id else Directory.the_id()
        now = self.clock()
        budgets: list[BudgetView] = []
        last, more = after, False
        with self.store_errors():
            for entry in self._events_after(index_id, max(after, 1), chunk=size + 1):
                if not isinstance(entry, (TeamRoster.MemberAdded, Directory.BudgetListed)):
                    continue
                # A team's roster keeps the entries of those who moved away (or away and back): only the entry that
                # lists a budget now counts. The directory lists every budget once.
                budget = self.load_budget(entry.employee_id) if team_id or len(budgets) < size else None
                if budget is not None and team_id and not budget.listed_by(team_id, entry.originator_version):
                    continue
                if len(budgets) == size:
                    more = True
                    break
                assert budget is not None
                budgets.append(budget.view(now))
                last = entry.originator_version
        token = paging.encode_token("budgets", filters, last) if more else ""
        return Page(budgets, token)

    def budget_at(self, budget_id: UUID, version: int, *, referenced_by: str = "a stored result") -> BudgetView:
        """The budget exactly as it was right after ``version`` (the response a request got); DATA_LOSS if the log
        no longer holds that version."""
        return self._budget_at(budget_id, version, referenced_by).view()  # type: ignore[no-any-return]

    def _budget_at(self, budget_id: UUID, version: int, referenced_by: str) -> Any:
        with self.store_errors():
            budget = self.get_or_none(budget_id, version)
        if budget is None or budget.version != version:
            raise event_missing(f"events/{budget_id}/{version}", referenced_by)
        return budget

    def load_budget(self, employee_id: str) -> Budget:
        try:
            budget = self.repository.get(budget_id_for(employee_id))
        except AggregateNotFoundError:
            raise budget_not_found(employee_id) from None
        assert isinstance(budget, Budget)
        return budget

    # ------------------------------------------------------------------ actions

    def get_action(self, action_id: str) -> ActionView:
        parsed = parse_action_id(action_id) if action_id else None
        if parsed is None:
            raise InvalidArgument(
                [FieldViolation("action_id", "is required" if not action_id else "is not an action id")]
            )
        budget_id, version = parsed
        with self.store_errors():
            events = list(self.events.get(budget_id, gt=version - 1, lte=version))
            if not events or not isinstance(events[0], Budget.ActionRecorded):
                raise action_not_found(action_id)
            budget = self.repository.get(budget_id)
        return action_view(events[0], budget.outcome(version), self.clock())

    def action_at(
        self, budget_id: UUID, action_version: int, budget_version: int, *, referenced_by: str = "a stored result"
    ) -> tuple[ActionView, BudgetView]:
        """An action and its budget as they were right after ``budget_version`` (the response a request got);
        DATA_LOSS if the log no longer holds them."""
        budget = self._budget_at(budget_id, budget_version, referenced_by)
        event = self.event_at(budget_id, action_version, referenced_by=referenced_by)
        return action_view(event, budget.outcome(action_version)), budget.view()

    def event_at(self, aggregate_id: UUID, version: int, *, referenced_by: str = "the log") -> Any:
        """One stored event; DATA_LOSS (EVENT_MISSING) if the log does not hold it, since whatever named it
        (``referenced_by``) found it there before."""
        with self.store_errors():
            event = next(iter(self.events.get(aggregate_id, gt=version - 1, lte=version)), None)
        if event is None:
            raise event_missing(f"events/{aggregate_id}/{version}", referenced_by)
        return event

    def list_actions(
        self,
        employee_id: str,
        customer_id: str,
        kind: ActionKind | None,
        page_size: int,
        page_token: str,
        state: str | None = None,
        approver_id: str = "",
        decided_by: str = "",
        decisions: Callable[[str, int], Iterable[tuple[int, str]]] | None = None,
    ) -> Page[ActionView]:
        """Actions of an employee, of a customer, waiting for approval, or decided (approved or denied) by
        ``decided_by`` (read from ``decisions(approver, after)``: the trail read model's (position, action id) of
        their decisions), filtered by the others."""
        waiting_list = state == PENDING_APPROVAL
        customer_id = self.conventions.customer_key(customer_id) if customer_id else ""
        if not employee_id and not customer_id and not waiting_list and not decided_by:
            needed = "employee_id, customer_id or decided_by is required (or state PENDING_APPROVAL)"
            raise InvalidArgument([FieldViolation("employee_id", needed), FieldViolation("customer_id", needed)])
        check_ids(
            employee_id=employee_id, customer_id=customer_id, approver_id=approver_id, decided_by=decided_by,
            required=False,
        )
        size = paging.page_size(page_size)
        filters = {
            "employee_id": employee_id,
            "customer_id": customer_id,
            "kind": kind.value if kind else "",
            "state": state or "",
            "approver_id": approver_id,
            **({"decided_by": decided_by} if decided_by else {}),
        }
        after = paging.decode_token(page_token, "actions", filters)
        views = ActionViews(self, self.clock())
        with self.store_errors():
            # The customer's key and the ids it was stored under before (see domain/customers.py).
            spellings = self.customer_spellings(customer_id) if customer_id else ()

        def keep(view: ActionView) -> bool:
            return (
                (kind is None or view.kind is kind)
                and (state is None or view.state == state)
                and (not approver_id or approver_id in view.approver_ids)
                # Decisions are listed from the approver's side: the employee and customer filter them here.
                and (not decided_by or not employee_id or view.employee_id == employee_id)
                and (not decided_by or not customer_id or view.customer_id in spellings)
            )

        candidates: Iterable[tuple[int, Any]]
        resolve: Callable[[list[Any]], list[ActionView]]
        with self.store_errors():
            if decided_by:
                if decisions is None:
                    raise Unavailable("the list of what an approver decided is read from the trail read model")
                candidates = decisions(decided_by, after)
                resolve = lambda ids: views.by_ids(ids, "the trail of decisions")  # noqa: E731
            elif waiting_list:
                book = self.get_or_none(HoldBook.the_id())
                candidates = book.waiting(after, approver_id, employee_id, spellings) if book is not None else []
                resolve = lambda ids: views.by_ids(ids, "the hold book")  # noqa: E731
            elif customer_id:
                candidates = (
                    (position, e.action_id)
                    for position, e in self._customer_events(spellings, after, first_chunk=size + 1)
                    if isinstance(e, CustomerLedger.ActionNoted) and (not employee_id or e.employee_id == employee_id)
                )
                resolve = lambda ids: views.by_ids(ids, f"customers/{customer_id}")  # noqa: E731
            else:
                budget = self.load_budget(employee_id)  # NOT_FOUND for an unknown employee
                views.budgets[budget.id] = budget  # the outcomes of its actions: loaded once
                candidates = (
                    (e.originator_version, e)
                    for e in self._events_after(budget_id_for(employee_id), after, first_chunk=size + 1)
                    if isinstance(e, Budget.ActionRecorded)
                )
                resolve = views.of_events
            matches = first_matches(candidates, resolve, keep, size + 1)
        token = paging.encode_token("actions", filters, matches[size - 1][0]) if len(matches) > size else ""
        return Page([view for _, view in matches[:size]], token)

    def customer_spellings(self, customer_id: str) -> tuple[str, ...]:
        """The key of ``customer_id``, then the ids the customer was stored under before (``domain/customers.py``):
        every id whose ledger, trail and holds are this customer's."""
        key = self.conventions.customer_key(customer_id)
        held = (self.get_or_none(i) for i in self.conventions.customer_ledgers.of(key))
        found = {s for ledger in held if ledger is not None for s in ledger.spellings}
        return (key, *spellings_in(found, key, self.conventions.customer_ids))

    def _customer_events(
        self, spellings: tuple[str, ...], after: int, *, first_chunk: int = SCAN_CHUNK
    ) -> Iterator[tuple[int, Any]]:
        """(position, event) of the ledgers of a customer's older spellings, then of its key (its legacy ledger, then
        its keyed one): each ledger's versions after the one before it (position = ledger index * LEDGER_STRIDE +
        version)."""
        ledgers = self._positioned_ledgers(spellings)
        first, version = divmod(after, LEDGER_STRIDE)
        for index, aggregate_id in sorted(ledgers.items()):
            if index < first:
                continue
            start = version if index == first else 0
            for event in self._events_after(aggregate_id, start, first_chunk=first_chunk):
                yield index * LEDGER_STRIDE + event.originator_version, event

    def _positioned_ledgers(self, spellings: tuple[str, ...]) -> dict[int, UUID]:
        """The index of each ledger in page positions. A spelling's legacy ledger keeps the index it had before
        keyed ids existed (so page tokens handed out then still work: a customer with a legacy ledger only keeps the
        positions of its one ledger); keyed ledgers come after every legacy one."""
        ids = self.conventions.customer_ledgers
        ordered = (*spellings[1:], spellings[0])
        positioned = {index: ids.legacy(s) for index, s in enumerate(ordered)}
        for index, s in enumerate(ordered):
            keyed = ids.keyed(s)
            if keyed is not None:
                positioned[len(ordered) + index] = keyed
        return positioned

    def _events_after(
        self, aggregate_id: UUID, after: int, *, chunk: int = SCAN_CHUNK, first_chunk: int | None = None
    ) -> Iterator[Any]:
        """An aggregate's events after version ``after``, read as the caller consumes them: ``first_chunk`` events
        first (a first page needs about a page of them, whatever the length of the history), then twice as many
        each time, up to ``chunk``."""
        position = after
        limit = min(first_chunk or chunk, chunk)
        while True:
            events = list(self.events.get(aggregate_id, gt=position, limit=limit))
            yield from events
            if len(events) < limit:
                return
            position = events[-1].originator_version
            limit = min(limit * 2, chunk)

    # ------------------------------------------------------------------ teams, customers, holds

    def get_team(self, team_id: str, *, version: int | None = None, at: datetime | None = None) -> TeamView:
        """A team now, or (version, at) as a SetTeamCap left it."""
        check_ids(team_id=team_id)
        with self.store_errors():
            ledger = self.get_or_none(TeamLedger.create_id(team_id), version)
            roster = self.get_or_none(TeamRoster.create_id(team_id))
        if ledger is None and roster is None:
            raise team_not_found(team_id)
        now = at or self.clock()
        cap = ledger.cap if ledger is not None else None
        in_currencies = ledger.usages({cap.amount.currency: cap} if cap else {}, now) if ledger is not None else []
        return TeamView(
            team_id=team_id,
            usage=in_currencies[0] if in_currencies else NO_USAGE,
            member_count=roster.member_count if roster is not None else 0,
            version=ledger.version if ledger is not None else 0,
            by_currency=tuple(in_currencies),
        )

    def require_subjects(self, team_id: str = "", employee_id: str = "") -> None:
        """NOT_FOUND unless the team (one with budgets or a cap) and the employee's budget exist, for reads of
        read models that would otherwise answer zeros for a typo (GetKpis)."""
        check_ids(team_id=team_id, employee_id=employee_id, required=False)
        with self.store_errors():
            if team_id and not any(self.has_events(of(team_id)) for of in (TeamRoster.create_id, TeamLedger.create_id)):
                raise team_not_found(team_id)
            if employee_id and not self.has_events(budget_id_for(employee_id)):
                raise budget_not_found(employee_id)

    def has_events(self, aggregate_id: UUID) -> bool:
        """Whether the log holds an event of ``aggregate_id`` (its first one is read, as stored: nothing is replayed
        or decoded)."""
        return bool(self.recorder.select_events(aggregate_id, limit=1))

    def get_customer_caps(self) -> dict[str, Cap]:
        """The organisation-wide per-customer cap of each currency that has one."""
        with self.store_errors():
            org = self.get_or_none(OrgLimits.the_id())
        return org.customer_caps if org is not None else {}

    def get_customer_usage(self, customer_id: str) -> CustomerUsage:
        """What a customer (its key, and the ids it was stored under before) received, against each cap."""
        key = self.conventions.customer_key(customer_id)
        check_ids(customer_id=key)
        caps = self.get_customer_caps()
        with self.store_errors():
            found = [self.get_or_none(i) for i in self._positioned_ledgers(self.customer_spellings(key)).values()]
        ledgers = [ledger for ledger in found if ledger is not None]
        tally = merged([ledger.tally for ledger in ledgers]) if ledgers else new_tally()  # nobody acted for them
        found_usages = usages(tally, caps, self.clock())
        return CustomerUsage(
            key,
            found_usages[0] if found_usages else NO_USAGE,
            sum(ledger.action_count for ledger in ledgers),
            tuple(found_usages),
        )

    def pending_counts(self) -> tuple[int, int]:
        """(waiting, overdue): actions waiting for approval now, and holds past their timeout that nothing has
        expired yet (one read of the hold book, usually from the aggregate cache; for /metrics)."""
        with self.store_errors():
            book = self.get_or_none(HoldBook.the_id())
        if book is None:
            return 0, 0
        now = self.clock()
        overdue = sum(1 for hold in book.open.values() if hold["expires_at"] <= now)
        return len(book.open) - overdue, overdue

    def get_or_none(self, aggregate_id: UUID, version: int | None = None) -> Any:
        try:
            return self.repository.get(aggregate_id, version=version)
        except AggregateNotFoundError:
            return None
