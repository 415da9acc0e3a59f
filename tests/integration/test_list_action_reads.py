"""ListActions reads a page's actions as a group (application/action_views.py), on SQLite and PostgreSQL (issue 21).

A page of a customer's (or an approval queue's, or an approver's decisions') actions names actions of many
budgets. On PostgreSQL their events and budgets are read in three queries, whatever the number of budgets; the
views must be exactly what reading each action alone gives (GetAction), whatever their outcome, across pages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from builders import action_cmd, all_pages, approve, deny, make_policy, open_cmd, reverse_cmd
from leeway.application import LeewayApplication
from leeway.application import commands as c
from leeway.domain.errors import DataLoss
from leeway.domain.ids import parse_action_id
from leeway.domain.views import PENDING_APPROVAL
from leeway.settings import Settings
from pgschema import PostgresSchema

EMPLOYEES = [f"emp-{n:02d}" for n in range(12)]


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement this process sends to PostgreSQL while the block runs (psycopg's cursors)."""
    sent: list[str] = []
    original = psycopg.Cursor.execute

    def counting(self, query, *args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(str(query))
        return original(self, query, *args, **kwargs)

    psycopg.Cursor.execute = counting  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        psycopg.Cursor.execute = original  # type: ignore[method-assign]


@pytest.fixture
def served(app_factory):
    app = app_factory()
    return app, serve(app)


@pytest.fixture
def served_on_postgres(clock):
    """``served`` on PostgreSQL only (where a query is a round trip; SQLite's is a function call)."""
    schema = PostgresSchema("lar")
    app = LeewayApplication(env=Settings(database_url=schema.url).eventsourcing_env(), clock=clock)
    try:
        yield app, serve(app)
    finally:
        app.close()
        schema.drop()


def serve(app) -> list[str]:
    """One customer served by twelve employees: actions recorded, approved, denied, reversed, won, and waiting; the
    customer's action ids in the order recorded."""
    for employee in EMPLOYEES:
        app.execute(open_cmd(employee, policy=make_policy(5000, limit=100, approvers=("sup-1",))))
    ids = []
    for round_ in range(3):
        for n, employee in enumerate(EMPLOYEES):
            held = (n + round_) % 4 == 0
            action = app.execute(action_cmd(employee, 150 if held else 10 + n, customer="cust-9"))[0]
            app.execute(action_cmd(employee, 5, customer=f"other-{n}"))  # another customer's, in the same budgets
            ids.append(action.action_id)
            if held and n % 3 == 0:
                app.execute(approve(action.action_id, "sup-1"))
            elif held and n % 3 == 1:
                app.execute(deny(action.action_id, "sup-1"))
            elif not held and n % 5 == 0:
                app.execute(reverse_cmd(action.action_id, actor="sup-1"))
            elif not held and n % 5 == 1:
                app.execute(c.DocumentWin(f"w-{action.action_id}", action.action_id, "kept them", "thanks", "stayed"))
    return ids


def one_by_one(app, ids: list[str]) -> list:
    return [app.get_action(action_id) for action_id in ids]


@pytest.mark.parametrize("page_size", [1, 5, 50])
def test_a_customers_pages_equal_each_action_read_alone(served, page_size: int) -> None:
    app, ids = served
    listed, _ = all_pages(
        lambda token: (lambda page: (page.items, page.next_page_token))(
            app.list_actions("", "cust-9", None, page_size, token)),
        page_size=page_size,
    )
    assert [a.action_id for a in listed] == ids
    assert listed == one_by_one(app, ids)
    assert {a.state for a in listed} >= {"RECORDED", "APPROVED", "DENIED", "REVERSED", PENDING_APPROVAL}
    assert any(a.win is not None for a in listed)


def test_filters_of_a_group_keep_the_page_full(served) -> None:
    """A group is as large as the matches still missing: filtered out candidates are followed by the next ones."""
    app, ids = served
    waiting = [a for a in one_by_one(app, ids) if a.state == PENDING_APPROVAL]
    assert len(waiting) == 3
    page = app.list_actions("", "cust-9", None, 2, "", state=PENDING_APPROVAL)
    assert page.items == waiting[:2] and page.next_page_token
    queue = app.list_actions("", "", None, 2, "", state=PENDING_APPROVAL, approver_id="sup-1")
    rest = app.list_actions("", "", None, 50, queue.next_page_token, state=PENDING_APPROVAL, approver_id="sup-1")
    assert queue.items + rest.items == waiting and not rest.next_page_token


@pytest.mark.postgres
def test_a_page_of_many_budgets_costs_a_few_queries(served_on_postgres) -> None:
    app, ids = served_on_postgres
    with statements() as sent:
        page = app.list_actions("", "cust-9", None, 50, "")
    assert len(page.items) == len(ids) == 36
    # The customer's ledger (snapshot, events) and its events; the 36 actions' events; their 12 budgets' snapshots
    # and the events after them. One at a time it took 2 + 1 + 36 + 2 * 12 (and more with legacy ledgers).
    assert len(sent) <= 8, sent


def test_an_action_missing_from_the_log_is_data_loss(served, rows) -> None:
    """The customer's ledger names an action whose event is gone: DATA_LOSS naming it, whichever group it is in."""
    app, ids = served
    budget_id, version = parse_action_id(ids[4])  # type: ignore[misc]
    rows.remove(rows.row(budget_id, version))
    with pytest.raises(DataLoss) as lost:
        app.list_actions("", "cust-9", None, 50, "")
    assert lost.value.reason == "EVENT_MISSING"
    assert lost.value.metadata == {"resource_name": f"events/{budget_id}/{version}", "referenced_by": "customers/cust-9"}
    assert len(app.list_actions("", "cust-9", None, 3, "").items) == 3  # a page that does not reach it still reads
