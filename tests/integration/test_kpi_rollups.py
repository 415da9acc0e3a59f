"""KPIs from the daily rollups agree with a brute-force computation over the actions (SQLite and PostgreSQL).

A random history over seven weeks (escalations approved, denied and expired, reversals, wins documented days
later, two currencies, gifts of several types) is projected in small batches; then, for many random filters and
time ranges (open, whole days, cut inside a day, inside one day, across the edges of the history), GetKpis and
every point of GetKpiSeries (days, weeks from Monday, months) must equal ``History.kpis``: the figures computed
here from the commands issued, independently of the service. Also: a view built before the rollups existed is
emptied and rebuilt on upgrade (exactly once), and the series' validation.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest
from leeway.application.conventions import Conventions
from leeway.application.insights import Insights
from leeway.application.kpis import MAX_SERIES_POINTS, Granularity, buckets
from leeway.domain.customers import CustomerIdForm
from leeway.domain.errors import InvalidArgument
from leeway.domain.policy import ActionKind
from leeway.projections.runner import Projections
from leeway.projections.views import InsightsProjection
from test_projections import History, observed, tables

UTC = timezone.utc
EPOCH = date(1970, 1, 1)
KINDS = [ActionKind.REFUND, ActionKind.CREDIT, ActionKind.GIFT, ActionKind.RULE_BEND]
PEOPLE = [("ann", "team-a", "USD"), ("bob", "team-a", "USD"), ("cat", "team-b", "USD"), ("dan", "team-b", "EUR"),
          ("eve", "team-c", "USD"), ("fay", "team-c", "EUR")]


def random_history(h: History, rng: random.Random, steps: int = 160) -> None:
    for employee, team, currency in PEOPLE:
        h.open(employee, team, currency, allowance="100000")
    for _ in range(steps):
        roll = rng.random()
        pending = [a for a, act in h.actions.items() if act.state == "PENDING_APPROVAL" and act.expires_at > h.clock()]
        counted = [a for a, act in h.actions.items() if act.state in ("RECORDED", "APPROVED") and not act.reversed]
        won = {w.action_id for w in h.wins}
        if pending and rng.random() < 0.6:
            (h.approve if rng.random() < 0.6 else h.deny)(rng.choice(pending))
        elif roll < 0.2 and counted:
            h.reverse(rng.choice(counted))
        elif roll < 0.3 and [a for a in counted if a not in won]:
            h.win(rng.choice([a for a in counted if a not in won]))
        elif roll < 0.34:
            h.expire()
        else:
            employee = rng.choice(PEOPLE)[0]
            kind = rng.choice(KINDS)
            amount = "0" if kind is ActionKind.RULE_BEND else f"{rng.randint(1, 70)}.{rng.randint(0, 99):02d}"
            h.act(employee, amount, kind, customer=f"cust-{rng.randint(1, 12)}", gift=rng.choice(["flowers", "cake", "hamper"]))
        # From minutes to two days between commands: the history spans weeks, days hold a few actions each.
        h.clock.advance(timedelta(minutes=rng.choice([1, 5, 30, 90, 300, 900, 1440, 2880])))
    h.expire()


def random_range(rng: random.Random, first: datetime, last: datetime) -> tuple[datetime | None, datetime | None]:
    span = (last - first).total_seconds()

    def moment() -> datetime:
        at = first - timedelta(days=1) + timedelta(seconds=rng.uniform(0, span + 2 * 86400))
        shape = rng.random()
        if shape < 0.3:  # midnight
            return datetime(at.year, at.month, at.day, tzinfo=UTC)
        if shape < 0.4:  # to the microsecond
            return at
        return at.replace(microsecond=0)

    shape = rng.random()
    if shape < 0.1:
        return None, None
    if shape < 0.2:
        return moment(), None
    if shape < 0.3:
        return None, moment()
    a = moment()
    if shape < 0.45:  # inside one day (or just across midnight)
        return a, a + timedelta(minutes=rng.randint(1, 26 * 60))
    b = moment()
    if a == b:
        b = a + timedelta(hours=1)
    return min(a, b), max(a, b)


def random_filter(rng: random.Random) -> tuple[str, str]:
    employee, team, _ = rng.choice(PEOPLE)
    return rng.choice([("", ""), (team, ""), ("", employee), (team, employee), ("team-a", "cat")])


def test_rollup_kpis_equal_brute_force_for_random_ranges_and_filters(app_factory, clock) -> None:
    rng = random.Random(20261207)
    app = app_factory()
    projections = Projections(app)
    for runner in projections.runners.values():
        runner.batch = 7
    h = History(app, clock)
    h.after.append(lambda n: n % 5 == 0 and projections.runners["insights"].catch_up())
    first = clock()
    random_history(h, rng)
    last = clock()
    assert last - first > timedelta(days=30) and len(h.actions) > 80 and h.wins
    states = {a.state for a in h.actions.values()}
    assert {"RECORDED", "APPROVED", "DENIED", "EXPIRED"} <= states, states
    assert any(a.reversed for a in h.actions.values())
    projections.runners["insights"].catch_up()
    insights = Insights(projections, wait_seconds=5, clock=clock)
    checked = 0
    for _ in range(60):
        team, employee = random_filter(rng)
        start, end = random_range(rng, first, last)
        assert observed(insights.get_kpis(team, employee, start, end)) == h.kpis(team, employee, start, end), (
            team, employee, start, end)
        checked += 1
    # a few ranges written out: the edges of the history and one day exactly
    day = datetime(first.year, first.month, first.day, tzinfo=UTC) + timedelta(days=3)
    for start, end in [(first, last), (None, first + timedelta(microseconds=1)), (day, day + timedelta(days=1)),
                       (day + timedelta(hours=5), day + timedelta(hours=29))]:
        assert observed(insights.get_kpis("", "", start, end)) == h.kpis("", "", start, end)
    # ranges open at their start (customers gifted: a sum of first days, plus the rows of a day the range ends in)
    for team, employee in [("", ""), *((t, "") for _, t, _ in PEOPLE), *(("", e) for e, _, _ in PEOPLE),
                           *((t, e) for e, t, _ in PEOPLE), ("team-a", "cat")]:
        for end in (None, last, day, day + timedelta(hours=13, microseconds=7), first + timedelta(minutes=1)):
            assert observed(insights.get_kpis(team, employee, None, end)) == h.kpis(team, employee, None, end), (
                team, employee, end)
    # a CASEFOLD deployment counts customers case-insensitively: from the rollups while every gifted id is in lower
    # case (as here), from the rows once one is not
    class Subjects:
        conventions = Conventions(customer_ids=CustomerIdForm.CASEFOLD)

        def require_subjects(self, team: str, employee: str) -> None:
            pass

    folding = Insights(projections, wait_seconds=5, clock=clock, subjects=Subjects())
    for cased in (False, True):
        if cased:
            with projections.store.transaction() as tx:
                tx.execute("INSERT INTO {leeway_view_kpi_cased} (customer_id) VALUES ('Cust-X')")
        for team in ("", "team-a", "team-c"):
            for end in (None, day + timedelta(hours=13)):
                assert observed(folding.get_kpis(team, "", None, end)) == h.kpis(team, "", None, end), (cased, team, end)
    with projections.store.transaction() as tx:
        tx.execute("DELETE FROM {leeway_view_kpi_cased}")
    # series: every point is exactly the KPIs of its bucket
    for granularity in ("DAY", "WEEK", "MONTH"):
        for _ in range(4):
            team, employee = random_filter(rng)
            start, end = random_range(rng, first, last)
            start = start or first - timedelta(hours=7)
            end = end or last + timedelta(hours=3)
            points = insights.get_kpi_series(team, employee, start, end, granularity)
            assert points and points[0].start == start and points[-1].end == end
            for point, following in zip(points, points[1:]):
                assert point.end == following.start
                assert following.start.time() == datetime.min.time()  # inner boundaries at 00:00 UTC
                if granularity == "WEEK":
                    assert following.start.weekday() == 0
                if granularity == "MONTH":
                    assert following.start.day == 1
            for point in points:
                assert observed(point.kpis) == h.kpis(team, employee, point.start, point.end), (granularity, point.start)
            checked += len(points)
    assert checked > 100
    # the rollups built incrementally in batches of 7 equal a rebuild's
    incremental = tables(projections)
    assert incremental["leeway_view_kpi_days"] and incremental["leeway_view_kpi_wins"]
    assert incremental["leeway_view_kpi_gifts"] and not incremental["leeway_view_kpi_firsts"]  # retired
    assert reach_rows(incremental) == expected_reach(h)
    projections.rebuild("insights")
    assert tables(projections) == incremental
    projections.close()


def expected_reach(h: History) -> dict[tuple[str, str, int], tuple[int, int]]:
    """The customers' reach computed here from the actions: per (grain, team or ``*``, day), how many customers got
    their first and their last effective gift of the day's bucket (all time, month, ISO week, day) on that day."""
    gifted: dict[tuple[str, str], set[date]] = {}
    for a in h.actions.values():
        if a.kind == "GIFT" and a.state in ("RECORDED", "APPROVED") and not a.reversed:
            for level in ("*", a.team):
                gifted.setdefault((level, a.customer), set()).add(a.at.date())
    bucket = {"A": lambda d: 0, "M": lambda d: (d.year, d.month), "W": lambda d: d.isocalendar()[:2], "D": lambda d: d}
    out: Counter[tuple[str, str, int, int]] = Counter()
    for (level, _), days in gifted.items():
        for grain, key in bucket.items():
            spans: dict[object, list[date]] = {}
            for d in days:
                spans.setdefault(key(d), []).append(d)
            for ds in spans.values():
                out[(grain, level, (min(ds) - EPOCH).days, 0)] += 1
                out[(grain, level, (max(ds) - EPOCH).days, 1)] += 1
    keys = {(g, level, day) for g, level, day, _ in out}
    return {k: (out[(*k, 0)], out[(*k, 1)]) for k in keys}


def reach_rows(snapshot: dict[str, list[dict]]) -> dict[tuple[str, str, int], tuple[int, int]]:
    rows = snapshot["leeway_view_kpi_reach"]
    assert all(r["employee_id"] == "*" for r in rows)
    return {(r["grain"], r["team_id"], int(r["day"])): (int(r["firsts"]), int(r["lasts"])) for r in rows}


def test_a_view_built_before_the_rollups_is_rebuilt_once_on_upgrade(app_factory, clock) -> None:
    rng = random.Random(7)
    app = app_factory()
    projections = Projections(app)
    h = History(app, clock)
    random_history(h, rng, steps=40)
    for runner in projections.runners.values():
        runner.catch_up()
    expected = tables(projections)
    # What a deployment of the previous version holds: action rows and a position, no rollups, no version rows.
    with projections.store.transaction() as tx:
        for table in ("leeway_view_kpi_days", "leeway_view_kpi_wins", "leeway_view_versions"):
            tx.execute(f"DELETE FROM {{{table}}}")
    head = projections.head()
    assert projections.store.position("insights") == head
    projections.close()

    upgraded = Projections(app)
    assert upgraded.store.position("insights") == 0  # emptied: the runner rebuilds it
    assert upgraded.store.position("balances") == head  # unchanged projections keep their rows
    upgraded.runners["insights"].catch_up()
    assert tables(upgraded) == expected
    insights = Insights(upgraded, wait_seconds=5, clock=clock)
    assert observed(insights.get_kpis("", "", None, None)) == h.kpis()
    # a second start (another replica, a restart) does not reset it again
    assert not upgraded.store.ensure_version("insights", InsightsProjection.version, InsightsProjection.tables)
    again = Projections(app)
    assert again.store.position("insights") == head
    again.close()
    upgraded.close()


def test_series_validation(app_factory, clock) -> None:
    app = app_factory()
    projections = Projections(app)
    h = History(app, clock)
    h.open("ann", "team-a")
    projections.runners["insights"].catch_up()
    insights = Insights(projections, wait_seconds=5, clock=clock)
    start = datetime(2025, 3, 1, tzinfo=UTC)

    def fields(*args: object) -> set[str]:
        with pytest.raises(InvalidArgument) as info:
            insights.get_kpi_series(*args)  # type: ignore[arg-type]
        return {v.field for v in info.value.violations}

    assert fields("", "", None, None, "DAY") == {"start_time", "end_time"}
    assert fields("", "", start, start, "DAY") == {"end_time"}
    assert fields("", "", start, start + timedelta(days=1), "") == {"granularity"}
    assert fields("", "", start, start + timedelta(days=1), "YEAR") == {"granularity"}
    assert fields("bad id", "", start, start + timedelta(days=1), "DAY") == {"team_id"}
    too_long = fields("", "", start, start + timedelta(days=MAX_SERIES_POINTS + 1), "DAY")
    assert too_long == {"end_time"}
    assert len(insights.get_kpi_series("", "", start, start + timedelta(days=MAX_SERIES_POINTS), "DAY")) == MAX_SERIES_POINTS
    # weeks start on Monday 00:00 UTC; months on the 1st
    weeks = buckets(datetime(2025, 3, 5, 13, tzinfo=UTC), datetime(2025, 3, 20, tzinfo=UTC), Granularity.WEEK)
    assert [(a.isoformat(), b.isoformat()) for a, b in weeks] == [
        ("2025-03-05T13:00:00+00:00", "2025-03-10T00:00:00+00:00"),
        ("2025-03-10T00:00:00+00:00", "2025-03-17T00:00:00+00:00"),
        ("2025-03-17T00:00:00+00:00", "2025-03-20T00:00:00+00:00"),
    ]
    months = buckets(datetime(2024, 11, 30, tzinfo=UTC), datetime(2025, 2, 1, 1, tzinfo=UTC), Granularity.MONTH)
    assert [a.date().isoformat() for a, _ in months] == ["2024-11-30", "2024-12-01", "2025-01-01", "2025-02-01"]
    empty = insights.get_kpi_series("", "", start, start + timedelta(days=3), "DAY")
    assert [p.kpis.action_count for p in empty] == [0, 0, 0]
    projections.close()


def test_top_employees_of_all_time_among_ties_and_customers_gifted_in_batches(app_factory, clock) -> None:
    """Fourteen employees in two teams with 0-3 wins each (the tenth place tied): the top ten of all time (read
    from the all-time totals) are those of the brute force, for everyone and per team; customers gifted again,
    reversed, and gifted on another day (first days moving back and forth) are counted exactly."""
    app = app_factory()
    projections = Projections(app)
    projections.runners["insights"].batch = 3
    h = History(app, clock)
    h.after.append(lambda n: n % 4 == 0 and projections.runners["insights"].catch_up())
    people = [(f"e{n:02d}", f"team-{'ab'[n % 2]}") for n in range(14)]
    for employee, team in people:
        h.open(employee, team, "USD", allowance="100000")
    for n, (employee, _) in enumerate(people):
        for _ in range([1, 2, 1, 3, 1, 1, 0, 2, 1, 1, 1, 2, 1, 1][n]):
            h.win(h.act(employee, "5.00", ActionKind.GIFT, customer=f"cust-{n % 5}"))
        h.clock.advance(timedelta(hours=9))
    gifts = [h.act(employee, "2.00", ActionKind.GIFT, customer=f"cust-{7 + n % 3}") for n, (employee, _) in enumerate(people)]
    h.clock.advance(timedelta(days=1))
    for action_id in gifts[::2]:
        h.reverse(action_id)
    h.act("e03", "1.00", ActionKind.GIFT, customer="cust-7")
    projections.runners["insights"].catch_up()
    insights = Insights(projections, wait_seconds=5, clock=clock)
    for team in ("", "team-a", "team-b"):
        expected = h.kpis(team, "", None, None)
        assert len(expected["top_employees"]) == {"": 10, "team-a": 6, "team-b": 7}[team]  # 10th place: a tie of nine
        assert observed(insights.get_kpis(team, "", None, None)) == expected, team
    projections.close()


def test_customers_gifted_across_days_weeks_and_months_with_reversals(app_factory, clock) -> None:
    """Customers gifted again on other days of a week and a month, across midnight, across a month's end (a Monday,
    2025-03-31), by two teams, gifts reversed (moving a customer's first or last day of a bucket) and approved late:
    every point of a series of days, weeks and months, cut anywhere, and GetKpis over any of those ranges count the
    customers of the brute force; the reach rows are the brute force's, built in batches of 2 as by a rebuild."""
    app = app_factory()
    projections = Projections(app)
    projections.runners["insights"].batch = 2
    h = History(app, clock)
    h.after.append(lambda n: n % 3 == 0 and projections.runners["insights"].catch_up())
    h.open("ann", "team-a", "USD", allowance="100000")
    h.open("bob", "team-a", "USD", allowance="100000")
    h.open("cat", "team-b", "USD", allowance="100000")

    def at(day: int, hour: int, minute: int = 0) -> None:  # March 2025; day 32 is April 1st
        moment = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(days=day - 1, hours=hour, minutes=minute)
        assert moment >= clock()
        clock.now = moment

    def gift(employee: str, customer: str, amount: str = "5.00") -> str:
        return h.act(employee, amount, ActionKind.GIFT, customer=customer)

    at(24, 9)  # Monday
    first = clock()
    a1 = gift("ann", "c1")
    gift("bob", "c2")
    a2 = gift("ann", "c2")  # c2 twice on one day; one of them reversed below
    at(26, 23, 50)
    gift("cat", "c3")
    at(27, 0, 10)  # just past midnight: c3 again, the next day
    gift("ann", "c3")
    at(28, 10)
    held = gift("bob", "c4", "80.00")  # over the limit: pending, approved after another batch
    gift("cat", "c1")
    h.approve(held)
    at(29, 16)
    h.deny(gift("ann", "c5", "90.00"))
    at(31, 8)  # Monday, last day of March
    a3 = gift("ann", "c1")
    gift("cat", "c2")
    at(32, 7)  # April 1st
    a4 = gift("bob", "c1")
    gift("ann", "c6")
    at(33, 12)
    h.reverse(a1)  # c1's first day of the week of the 24th and of March moves to the 28th (cat, team-b)
    h.reverse(a2)  # c2 still gifted on the 24th (bob)
    h.reverse(a4)  # c1 no longer gifted in April by team-a
    at(38, 15)  # Monday April 7th
    gift("ann", "c1")
    h.reverse(a3)
    last = clock()
    projections.runners["insights"].catch_up()
    insights = Insights(projections, wait_seconds=5, clock=clock)
    snapshot = tables(projections)
    assert reach_rows(snapshot) == expected_reach(h)
    moments = [first - timedelta(days=1), datetime(2025, 3, 24, tzinfo=UTC), datetime(2025, 3, 24, 9, 5, tzinfo=UTC),
               datetime(2025, 3, 26, 23, 55, tzinfo=UTC), datetime(2025, 3, 27, tzinfo=UTC),
               datetime(2025, 3, 28, 12, tzinfo=UTC), datetime(2025, 3, 31, tzinfo=UTC),
               datetime(2025, 3, 31, 8, 3, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC),
               datetime(2025, 4, 1, 7, 3, tzinfo=UTC), datetime(2025, 4, 2, 13, tzinfo=UTC),
               datetime(2025, 4, 7, tzinfo=UTC), last, last + timedelta(days=2)]
    filters = [("", ""), ("team-a", ""), ("team-b", ""), ("", "ann"), ("team-a", "bob")]
    checked = 0
    for team, employee in filters:
        for n, start in enumerate(moments):
            for end in [*moments[n + 1:], None]:
                expected = h.kpis(team, employee, start, end)
                assert observed(insights.get_kpis(team, employee, start, end)) == expected, (team, employee, start, end)
                checked += 1
                if end is None:
                    continue
                for granularity in ("DAY", "WEEK", "MONTH"):
                    for point in insights.get_kpi_series(team, employee, start, end, granularity):
                        assert observed(point.kpis) == h.kpis(team, employee, point.start, point.end), (
                            team, employee, granularity, point.start, point.end)
                        checked += 1
            assert observed(insights.get_kpis(team, employee, None, start)) == h.kpis(team, employee, None, start)
    assert checked > 1000
    assert any(h.kpis(t, "", s, e)["customers_gifted"] >= 3 for t in ("", "team-a") for s in moments for e in moments
               if s < e)
    projections.rebuild("insights")
    assert tables(projections) == snapshot
    projections.close()


def caught_up_history(app_factory, clock, *, seed: int, steps: int) -> tuple[Projections, History, Insights]:
    """A random history (``random_history``) with its insights projection caught up, and the InsightsService queries."""
    app = app_factory()
    projections = Projections(app)
    h = History(app, clock)
    random_history(h, random.Random(seed), steps=steps)
    projections.runners["insights"].catch_up()
    return projections, h, Insights(projections, wait_seconds=5, clock=clock)


def kpi_statements(monkeypatch) -> list[str]:
    """The SQL of every read GetKpis / GetKpiSeries makes from now on (``KpiReader._rows``), as written."""
    from leeway.application import kpis as kpis_module

    statements: list[str] = []
    original = kpis_module.KpiReader._rows

    def recording(self: object, sql: str, **extra: object) -> list:
        statements.append(sql)
        return original(self, sql, **extra)  # type: ignore[arg-type]

    monkeypatch.setattr(kpis_module.KpiReader, "_rows", recording)
    return statements


def test_whole_buckets_of_everyone_or_a_team_read_no_action_or_employee_rows(app_factory, clock, monkeypatch) -> None:
    """The points of a series that are whole days, weeks or months count their customers and their top employees from
    the rollups (a sum over the bucket's days, the first rows of an index), not from the gifts or the employees' wins
    of those days: with start and end on bucket boundaries, the only action rows read are the pending ones."""
    projections, h, insights = caught_up_history(app_factory, clock, seed=3, steps=60)
    statements = kpi_statements(monkeypatch)
    for team in ("", "team-a"):
        for granularity, start, end in [("DAY", datetime(2025, 3, 15, tzinfo=UTC), datetime(2025, 4, 20, tzinfo=UTC)),
                                        ("WEEK", datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 4, 28, tzinfo=UTC)),
                                        ("MONTH", datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))]:
            statements.clear()
            points = insights.get_kpi_series(team, "", start, end, granularity)
            for point in points:
                assert observed(point.kpis) == h.kpis(team, "", point.start, point.end)
            assert sum(p.kpis.customers_gifted for p in points) and sum(len(p.kpis.top_employees) for p in points)
            reads = [s for s in statements if "{leeway_view_actions}" in s or "{leeway_view_wins}" in s]
            assert all("PENDING_APPROVAL" in s for s in reads), reads
            assert not [s for s in statements if "employee_id <> '*'" in s]
    projections.close()


def test_whole_months_read_month_rows_not_day_rows(app_factory, clock, monkeypatch) -> None:
    """A range's whole calendar months are read from the month rows (a row per month and group), only the days
    before and after them from the day rows: all time reads no day row, and the figures equal the brute force."""
    projections, h, insights = caught_up_history(app_factory, clock, seed=5, steps=220)
    statements = kpi_statements(monkeypatch)
    first = min(a.at for a in h.actions.values())
    last = max(a.at for a in h.actions.values())
    assert (last - first) > timedelta(days=80), "the history spans whole months, and days around them"
    for team, employee in [("", ""), ("team-a", ""), ("", PEOPLE[0][0])]:
        statements.clear()
        assert observed(insights.get_kpis(team, employee, None, None)) == h.kpis(team, employee, None, None)
        assert [s for s in statements if "{leeway_view_kpi_months}" in s]
        assert not [s for s in statements if "{leeway_view_kpi_days}" in s], statements
        # from the middle of a month to the middle of a later one: days, months, days
        start = datetime(first.year, first.month, 20, 7, tzinfo=UTC)
        next_month = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
        end = (next_month + timedelta(days=32)).replace(day=1) + timedelta(days=3, hours=7)
        statements.clear()
        assert observed(insights.get_kpis(team, employee, start, end)) == h.kpis(team, employee, start, end)
        assert len([s for s in statements if "{leeway_view_kpi_days}" in s]) == 2, statements
        assert len([s for s in statements if "{leeway_view_kpi_months}" in s]) == 1, statements
    projections.close()
