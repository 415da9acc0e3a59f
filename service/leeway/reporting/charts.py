"""The report's charts: Vega-Lite specs built with altair, rendered to SVG by vl-convert (no browser, no network),
so the page embeds them inline. Every chart labels its marks or its lines directly (no legend hunt); colours are
the same for a kind or a rate in every chart. Amounts become plain numbers only to be drawn: the page's tables
print them exactly."""

from __future__ import annotations

from typing import Any

from .data import ReportData, amount_of, fullest, held

#: Budgets drawn in the budget-use chart (the fullest first; the table lists more).
MOST_BUDGETS = 40
#: One colour per action kind and per rate, everywhere in the report.
KIND_COLOURS = {"REFUND": "#4C78A8", "CREDIT": "#72B7B2", "RULE_BEND": "#F58518", "GIFT": "#E45756"}
RATE_COLOURS = {"escalation": "#F58518", "approval": "#54A24B", "reversal": "#B279A2"}
WIDTH = 640


def _alt() -> Any:
    import altair as alt

    return alt


def svg(chart: Any) -> str:
    """The chart as an SVG document (text)."""
    import vl_convert

    return str(vl_convert.vegalite_to_svg(chart.to_dict()))


def flower_stats(data: ReportData) -> Any | None:
    """Gifts sent per week, stacked by gift type, each bar labelled with its total."""
    alt = _alt()
    rows = [{"week": w.start.date().isoformat(), "gift type": kind, "gifts": n}
            for w in data.weeks for kind, n in w.kpis.gifts_by_type]  # fmt: skip
    if not rows:
        return None
    totals = [{"week": w.start.date().isoformat(), "gifts": w.kpis.gifts_sent} for w in data.weeks]
    base = alt.Chart(alt.Data(values=rows))
    bars = base.mark_bar().encode(
        x=alt.X("week:O", title="week starting (UTC)"),
        y=alt.Y("sum(gifts):Q", title="gifts sent"),
        color=alt.Color("gift type:N", legend=alt.Legend(orient="top", title="gift type")),
    )
    labels = alt.Chart(alt.Data(values=totals)).mark_text(dy=-6, fontWeight="bold").encode(
        x="week:O", y="gifts:Q", text="gifts:Q"
    )
    return (bars + labels).properties(width=WIDTH, height=220, title="Flower stats: gifts sent per week")


def spend_by_kind(data: ReportData) -> Any | None:
    """Spend of effective actions per week, stacked by kind, one panel per currency."""
    alt = _alt()
    rows = [{"week": w.start.date().isoformat(), "kind": s.kind, "currency": s.currency, "spend": float(s.spend.amount)}
            for w in data.weeks for s in w.kpis.by_kind if s.effective_count]  # fmt: skip
    if not rows:
        return None
    kinds = [k for k in KIND_COLOURS if any(r["kind"] == k for r in rows)]
    return alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        x=alt.X("week:O", title="week starting (UTC)"),
        y=alt.Y("sum(spend):Q", title="spend"),
        color=alt.Color("kind:N", scale=alt.Scale(domain=kinds, range=[KIND_COLOURS[k] for k in kinds]),
                        legend=alt.Legend(orient="top", title="kind")),
        row=alt.Row("currency:N", title="currency"),
    ).properties(width=WIDTH, height=160, title="Spend by kind per week")


def rates(data: ReportData) -> Any | None:
    """Escalation, approval and reversal rates per week (percent), each line labelled at its end."""
    alt = _alt()
    rows = []
    for w in data.weeks:
        k = w.kpis
        if not k.action_count:
            continue
        week = w.start.date().isoformat()
        rows.append({"week": week, "rate": "escalation", "percent": 100 * k.escalated_count / k.action_count})
        if k.escalated_count:  # no escalation, no decision: an approval rate of 0 would mislead
            rows.append({"week": week, "rate": "approval", "percent": 100 * k.approval_rate})
        rows.append({"week": week, "rate": "reversal", "percent": 100 * k.reversal_rate})
    if not rows:
        return None
    colour = alt.Color("rate:N", scale=alt.Scale(domain=list(RATE_COLOURS), range=list(RATE_COLOURS.values())),
                       legend=None)
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("week:O", title="week starting (UTC)"),
        y=alt.Y("percent:Q", title="percent", scale=alt.Scale(domain=[0, 100])),
        color=colour,
    )
    last = base.transform_window(rank="rank()", sort=[alt.SortField("week", order="descending")], groupby=["rate"]
                                 ).transform_filter("datum.rank == 1")  # fmt: skip
    lines = base.mark_line(point=True)
    labels = last.mark_text(align="left", dx=6, fontWeight="bold").encode(text="rate:N")
    return (lines + labels).properties(width=WIDTH, height=200, title="Escalation, approval and reversal rates")


def budget_use(data: ReportData) -> Any | None:
    """Each employee's spent and held as a share of their allowance, fullest first; 100% marked."""
    alt = _alt()
    rows = []
    for b in fullest(data)[:MOST_BUDGETS]:
        allowance = amount_of(b.allowance)
        if not allowance:
            continue
        name = f"{b.display_name or b.employee_id} ({b.team_id})"
        label = f"{amount_of(b.spent)} + {held(b)} held of {allowance} {b.allowance.currency}"
        rows.append({"employee": name, "part": "spent", "percent": float(100 * amount_of(b.spent) / allowance),
                     "label": label})  # fmt: skip
        rows.append({"employee": name, "part": "held", "percent": float(100 * held(b) / allowance), "label": label})
    if not rows:
        return None
    order = alt.EncodingSortField(field="percent", op="sum", order="descending")
    bars = alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        y=alt.Y("employee:N", sort=order, title=None),
        x=alt.X("sum(percent):Q", title="percent of the period's allowance"),
        color=alt.Color("part:N", scale=alt.Scale(domain=["spent", "held"], range=["#4C78A8", "#9ECAE9"]),
                        legend=alt.Legend(orient="top", title=None)),
    )
    text = alt.Chart(alt.Data(values=[r for r in rows if r["part"] == "spent"])).mark_text(align="left", dx=4).encode(
        y=alt.Y("employee:N", sort=order), x=alt.value(WIDTH + 4), text="label:N"
    )
    rule = alt.Chart(alt.Data(values=[{"x": 100}])).mark_rule(color="#E45756", strokeDash=[4, 3]).encode(x="x:Q")
    height = max(60, 18 * len(rows) // 2)
    return (bars + rule + text).properties(width=WIDTH, height=height, title=f"Budget use by employee (the period containing {data.budget_day:%Y-%m-%d})")


def team_caps(data: ReportData) -> Any | None:
    """Each team with a cap: spent and held as a share of it."""
    alt = _alt()
    rows = []
    for team in data.teams:
        usage = team.usage
        if usage.cap is None or not usage.cap.amount.amount:
            continue
        cap = usage.cap.amount.amount
        rows.append({"team": team.team_id, "part": "spent", "percent": float(100 * amount_of(usage.spent) / cap)})
        rows.append({"team": team.team_id, "part": "held", "percent": float(100 * amount_of(usage.held) / cap)})
    if not rows:
        return None
    bars = alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        y=alt.Y("team:N", title=None),
        x=alt.X("sum(percent):Q", title="percent of the team's cap"),
        color=alt.Color("part:N", scale=alt.Scale(domain=["spent", "held"], range=["#4C78A8", "#9ECAE9"]),
                        legend=alt.Legend(orient="top", title=None)),
    )
    rule = alt.Chart(alt.Data(values=[{"x": 100}])).mark_rule(color="#E45756", strokeDash=[4, 3]).encode(x="x:Q")
    return (bars + rule).properties(width=WIDTH, height=max(60, 24 * len(rows) // 2), title="Teams against their caps (their current period)")
