"""Action views for one list call (ListActions): each action's recorded event and its budget's outcome of it.

A page names up to page_size + 1 actions, of any number of budgets. Read one at a time, each costs a query for its
event and two for its budget (the budget's snapshot, then the events after it): at a million actions a customer's
first page cost about 36 round trips. On PostgreSQL the actions a page still needs are resolved as a group: their
events in one query and their budgets in two (``PostgresBulkReads``), whatever the number of budgets. SQLite is
in-process (a query is a function call): one at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from itertools import islice
from typing import Any, TypeVar
from uuid import UUID

from ..domain.budget import Budget
from ..domain.errors import event_missing
from ..domain.ids import parse_action_id
from ..domain.views import ActionView, action_view

T = TypeVar("T")


class ActionViews:
    """Action views for one list call: each budget is loaded once for the outcomes of its actions.

    ``queries`` provides ``repository``, ``event_at`` and ``bulk_reads`` (None: one read at a time)."""

    def __init__(self, queries: Any, now: datetime):
        self.queries = queries
        self.now = now
        self.bulk = getattr(queries, "bulk_reads", None)
        self.budgets: dict[UUID, Budget] = {}

    def budget(self, budget_id: UUID) -> Budget:
        if budget_id not in self.budgets:
            self.budgets[budget_id] = self.queries.repository.get(budget_id)
        return self.budgets[budget_id]

    def of(self, event: Any) -> ActionView:
        budget = self.budget(event.originator_id)
        return action_view(event, budget.outcome(event.originator_version), self.now)

    def of_events(self, events: Sequence[Any]) -> list[ActionView]:
        return [self.of(event) for event in events]

    def by_ids(self, action_ids: Sequence[str], referenced_by: str) -> list[ActionView]:
        """The views of these actions, in order; DATA_LOSS (EVENT_MISSING) if one's event is not in the log, since
        whatever named it (``referenced_by``) found it there before."""
        pairs = []
        for action_id in action_ids:
            parsed = parse_action_id(action_id)
            assert parsed is not None, action_id  # ids from the log, the hold book or the trail
            pairs.append(parsed)
        if self.bulk is None or len(pairs) < 2:
            return [self.of(self.queries.event_at(*pair, referenced_by=referenced_by)) for pair in pairs]
        events = self.bulk.load_events(set(pairs))
        for budget_id, version in pairs:
            if events[(budget_id, version)] is None:
                raise event_missing(f"events/{budget_id}/{version}", referenced_by)
        wanted = {budget_id for budget_id, _ in pairs if budget_id not in self.budgets}
        if wanted:
            loaded = self.bulk.load(wanted, cached={}, learn_hashes=False)
            self.budgets.update({i: budget for i, budget in loaded.items() if budget is not None})
        return [self.of(events[pair]) for pair in pairs]


def first_matches(
    candidates: Iterable[tuple[int, T]],
    resolve: Callable[[list[T]], list[ActionView]],
    keep: Callable[[ActionView], bool],
    want: int,
) -> list[tuple[int, ActionView]]:
    """The first ``want`` (position, view) that ``keep`` accepts. ``candidates`` (position, what names an action) is
    lazy and read a group at a time, each group as large as the matches still missing (so nothing after the last
    match is read); ``resolve`` turns a group into views."""
    found: list[tuple[int, ActionView]] = []
    remaining = iter(candidates)
    while len(found) < want:
        group = list(islice(remaining, want - len(found)))
        if not group:
            break
        for (position, _), view in zip(group, resolve([item for _, item in group])):
            if keep(view):
                found.append((position, view))
    return found
