"""Purging an erased data subject's personal fields from the read models (issue 22).

After a subject's key is shredded the log reads ``[erased]`` in their fields; the read models were built from the
plain text before, so their rows are rewritten here from the log as it reads now: an action's row, its win and its
trail sentences from the action's view (``view_of``), an employee's display name and the reasons of their budget's
events. On SQLite, ``secure_delete`` zeroes the bytes the updates free and a checkpoint empties the WAL (see the
README for PostgreSQL's VACUUM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..adapters.keystore import sqlite_checkpoint
from ..domain.personal import ERASED
from ..domain.views import ActionView
from .store import ViewStore
from .trail import action_entries
from .views import micros

#: The budget events whose reason is the employee's (``domain/personal.py``: Closed, Reopened, TeamChanged).
EMPLOYEE_REASON_EVENTS = ("Budget.Closed", "Budget.Reopened", "Budget.TeamChanged")


def _secure(tx: Any, store: ViewStore) -> None:
    if store.is_sqlite:
        tx.execute("PRAGMA secure_delete = ON")


def customer_action_ids(store: ViewStore, spellings: Iterable[str]) -> list[str]:
    """Ids of the actions any read model holds under one of the customer's ids."""
    found: dict[str, None] = {}
    with store.transaction(commit=False) as tx:
        for spelling in spellings:
            for table in ("leeway_view_actions", "leeway_view_wins", "leeway_view_trail"):
                rows = tx.execute(
                    f"SELECT action_id FROM {{{table}}} WHERE customer_id = %(c)s", {"c": spelling}
                ).fetchall()
                found.update((str(r["action_id"]), None) for r in rows if r["action_id"])
    return list(found)


def customer_ids_with_pseudonym(store: ViewStore, keys: Any, pseudonym: str) -> tuple[str, ...]:
    """The customer ids the read models hold whose keyed pseudonym is ``pseudonym`` (an erasure by retention knows
    the subject only by it). One pass over the distinct customer ids."""
    with store.transaction(commit=False) as tx:
        rows = tx.execute(
            "SELECT DISTINCT customer_id FROM {leeway_view_actions} WHERE customer_id NOT LIKE '[%%'", {}
        ).fetchall()
    return tuple(str(r["customer_id"]) for r in rows if keys.pseudonym("customer", str(r["customer_id"])) == pseudonym)


def purge_actions(store: ViewStore, action_ids: Iterable[str], view_of: Callable[[str], ActionView | None]) -> int:
    """Rewrites every read-model row of ``action_ids`` from the action's view as the log reads now; returns how
    many actions were rewritten."""
    done = 0
    for action_id in action_ids:
        view = view_of(action_id)
        if view is None:
            continue
        win = view.win
        with store.transaction() as tx:
            _secure(tx, store)
            for row in tx.execute(
                "SELECT customer_id FROM {leeway_view_actions} WHERE action_id = %(a)s AND customer_id <> %(c)s",
                {"a": action_id, "c": view.customer_id},
            ).fetchall():
                _rename_gifted(tx, str(row["customer_id"]), view.customer_id)
            tx.execute(
                "UPDATE {leeway_view_actions} SET customer_id = %(c)s, reason = %(r)s WHERE action_id = %(a)s",
                {"c": view.customer_id, "r": view.reason, "a": action_id},
            )
            tx.execute(
                "UPDATE {leeway_view_wins} SET customer_id = %(c)s, reason = %(r)s, story = %(s)s, "
                "customer_quote = %(q)s, outcome = %(o)s WHERE action_id = %(a)s",
                {
                    "c": view.customer_id, "r": view.reason, "a": action_id,
                    "s": win.story if win else ERASED, "q": win.customer_quote if win else ERASED,
                    "o": win.outcome if win else ERASED,
                },
            )
            for entry in action_entries(view):
                tx.execute(
                    "UPDATE {leeway_view_trail} SET customer_id = %(c)s, reason = %(r)s, summary = %(s)s "
                    "WHERE action_id = %(a)s AND event_type = %(e)s AND time_us = %(t)s",
                    {
                        "c": entry.customer_id, "r": entry.reason, "s": entry.summary, "a": action_id,
                        "e": entry.event_type, "t": micros(entry.time),
                    },
                )
        done += 1
    if store.is_sqlite:
        sqlite_checkpoint(store.datastore)
    return done


def _rename_gifted(tx: Any, old: str, new: str) -> None:
    """The KPI rollup of a customer's gifts per day (``leeway_view_kpi_gifts``) under the id it reads as now. Two ids
    that now read as one are merged (their first days stay counted as they were: documented)."""
    tx.execute(
        "INSERT INTO {leeway_view_kpi_gifts} AS k (team_id, employee_id, customer_id, day, gifts) SELECT team_id, "
        "employee_id, %(new)s, day, gifts FROM {leeway_view_kpi_gifts} WHERE customer_id = %(old)s "
        "ON CONFLICT (team_id, employee_id, customer_id, day) DO UPDATE SET gifts = k.gifts + excluded.gifts",
        {"old": old, "new": new},
    )
    tx.execute("DELETE FROM {leeway_view_kpi_gifts} WHERE customer_id = %(old)s", {"old": old})
    if tx.execute("DELETE FROM {leeway_view_kpi_cased} WHERE customer_id = %(old)s", {"old": old}).rowcount and new != new.lower():
        tx.execute("INSERT INTO {leeway_view_kpi_cased} (customer_id) VALUES (%(new)s) ON CONFLICT (customer_id) DO NOTHING",
                   {"new": new})


def purge_employee(store: ViewStore, employee_id: str) -> None:
    """The employee's display name and the reasons of their budget's own events."""
    with store.transaction() as tx:
        _secure(tx, store)
        tx.execute(
            "UPDATE {leeway_view_balances} SET display_name = %(n)s WHERE employee_id = %(e)s",
            {"n": ERASED, "e": employee_id},
        )
        for event_type in EMPLOYEE_REASON_EVENTS:
            tx.execute(
                "UPDATE {leeway_view_trail} SET summary = REPLACE(summary, reason, %(n)s), reason = %(n)s "
                "WHERE employee_id = %(e)s AND event_type = %(t)s AND reason <> '' AND reason <> %(n)s",
                {"n": ERASED, "e": employee_id, "t": event_type},
            )
    if store.is_sqlite:
        sqlite_checkpoint(store.datastore)
