"""The report as one self-contained HTML page: inline CSS, inline SVG charts, no script and no link to fetch, so
it opens the same offline, in a mail attachment or on a shared drive. Every text from the log is escaped."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from . import charts
from .data import ReportData, amount_of, fullest, held

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 980px;
       color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
section { margin: 2rem 0; } .chart svg { max-width: 100%; height: auto; }
.figures { display: flex; gap: 1rem; flex-wrap: wrap; }
.figure { border: 1px solid #ddd; border-radius: 6px; padding: 0.6rem 1rem; min-width: 9rem; }
.figure b { display: block; font-size: 1.5rem; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 4px 8px; }
tr:nth-child(even) { background: #f6f6f6; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.win { border-left: 4px solid #E45756; padding: 0.3rem 0.8rem; margin: 0.8rem 0; }
.win q { font-style: italic; } .empty { color: #888; font-style: italic; }
"""


def render(data: ReportData) -> str:
    """The whole page (text)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Leeway report: {escape(data.title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Leeway report: {escape(data.title)}</h1>",
        f'<p class="meta">{data.start:%Y-%m-%d} to {data.end:%Y-%m-%d} (UTC, end excluded); generated '
        f"{data.generated:%Y-%m-%d %H:%M} UTC</p>",
        _headline(data),
        _chart("Flower stats", charts.flower_stats, data, "No gifts were sent in this period."),
        _chart("Spend by kind", charts.spend_by_kind, data, "Nothing was spent in this period."),
        _chart("Rates over time", charts.rates, data, "No actions in this period."),
        _chart("Budget use", charts.budget_use, data, "No open budgets."),
        _budget_table(data),
        _chart("Team caps", charts.team_caps, data, "No team has a cap."),
        _wins(data),
        _goodwill(data),
        "</body></html>",
    ]
    return "\n".join(parts)


def _headline(data: ReportData) -> str:
    k = data.totals
    if k is None:
        return ""
    spend = ", ".join(f"{m.amount} {m.currency}" for m in k.gift_spend) or "0"
    figures = [
        ("gifts sent", str(k.gifts_sent)), ("spent on gifts", spend), ("customers gifted", str(k.customers_gifted)),
        ("actions", str(k.action_count)), ("escalated", str(k.escalated_count)),
        ("approval rate", f"{100 * k.approval_rate:.0f}%"), ("reversal rate", f"{100 * k.reversal_rate:.1f}%"),
        ("wins documented", str(k.wins_documented)), ("pending approvals", str(k.pending_count)),
    ]  # fmt: skip
    boxes = "".join(f'<div class="figure"><b>{escape(v)}</b>{escape(label)}</div>' for label, v in figures)
    return f'<section><h2>The period at a glance</h2><div class="figures">{boxes}</div></section>'


def _chart(heading: str, build: Callable[[ReportData], Any], data: ReportData, empty: str) -> str:
    chart = build(data)
    body = f'<div class="chart">{charts.svg(chart)}</div>' if chart is not None else f'<p class="empty">{escape(empty)}</p>'
    return f"<section><h2>{escape(heading)}</h2>{body}</section>"


#: Budgets listed in the table (the fullest first).
TABLE_BUDGETS = 100


def _budget_table(data: ReportData) -> str:
    if not data.budgets:
        return ""
    shown = fullest(data)[:TABLE_BUDGETS]
    more = len(data.budgets) - len(shown)
    note = f'<p class="empty">{more} more budgets are less used.</p>' if more > 0 else ""
    rows = "".join(
        f"<tr><td>{escape(b.display_name or b.employee_id)}</td><td>{escape(b.team_id)}</td>"
        f'<td class="n">{amount_of(b.spent)}</td><td class="n">{held(b)}</td><td class="n">{amount_of(b.allowance)}</td>'
        f"<td>{escape(b.allowance.currency)}</td></tr>"
        for b in shown
    )
    return ("<section><table><tr><th>employee</th><th>team</th><th>spent</th><th>held</th><th>allowance</th>"
            f"<th>currency</th></tr>{rows}</table>{note}</section>")  # fmt: skip


def _wins(data: ReportData) -> str:
    if not data.wins:
        return '<section><h2>Wins</h2><p class="empty">No wins were documented in this period.</p></section>'
    items = []
    for w in data.wins:
        quote = f" <q>{escape(w.customer_quote)}</q>" if w.customer_quote else ""
        outcome = f" Outcome: {escape(w.outcome)}." if w.outcome else ""
        items.append(
            f'<div class="win"><b>{escape(w.employee_id)}</b> ({escape(w.team_id)}), {w.document_time:%Y-%m-%d}: '
            f"{escape(w.story)}{quote}{outcome} <small>{escape(w.kind)} of {w.amount.amount} "
            f"{escape(w.amount.currency)}</small></div>"
        )
    return "<section><h2>Wins, newest first</h2>" + "".join(items) + "</section>"


def _goodwill(data: ReportData) -> str:
    heading = "<h2>Customers receiving goodwill from many employees</h2>"
    if not data.goodwill:
        return f'<section>{heading}<p class="empty">No customer received goodwill from two or more employees.</p></section>'
    rows = "".join(
        f'<tr><td>{escape(g.customer_id)}</td><td class="n">{g.employees}</td><td class="n">{g.action_count}</td>'
        f"<td>{escape(', '.join(f'{m.amount} {m.currency}' for m in g.amounts))}</td></tr>"
        for g in data.goodwill
    )
    return (f"<section>{heading}<p>A customer helped by many different employees may be complaining serially.</p>"
            "<table><tr><th>customer</th><th>employees</th><th>actions</th><th>amount</th></tr>"
            f"{rows}</table></section>")  # fmt: skip
