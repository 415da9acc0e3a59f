"""``leeway report``: the managers' report as one self-contained HTML file (service/leeway/reporting/), read from
the database on LEEWAY_DATABASE_URL through the application and its read models, as the service reads them. The
read models are brought up to date first (safely beside running servers: projection runners share positions)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .cli_common import fail

#: Weeks covered when no --start is given.
DEFAULT_WEEKS = 12


def add_report_command(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="write the managers' report (flower stats, spend, rates, budgets, caps, wins) as one HTML file"
    )
    report.add_argument("-o", "--output", default="report.html", help="the file to write (default: report.html)")
    report.add_argument("--team", default="", help="one team (default: the whole organisation)")
    report.add_argument("--start", type=_date, help="first day, YYYY-MM-DD, UTC (default: 12 weeks before --end)")
    report.add_argument("--end", type=_date, help="day after the last, YYYY-MM-DD, UTC (default: tomorrow)")
    report.set_defaults(func=report_command)


def _date(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date of the form YYYY-MM-DD") from None


def report_command(args: argparse.Namespace) -> int:
    try:
        import altair  # noqa: F401
        import vl_convert  # noqa: F401
    except ImportError:
        return fail("", "the report needs its chart libraries: pip install 'leeway[report]'", 2)
    from .application.insights import Insights
    from .cli_audit import _app
    from .domain.errors import LeewayError
    from .projections.runner import Projections
    from .projections.store import open_view_store
    from .reporting.data import gather
    from .reporting.page import render

    now = datetime.now(timezone.utc)
    end = args.end or (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    start = args.start or end - timedelta(weeks=DEFAULT_WEEKS)
    app = _app()
    if app is None:
        return 2
    projections = None
    try:
        # The read models' tables are made if this database has none yet (the report then builds them).
        store = open_view_store({**{k: str(v) for k, v in dict(app.env).items()}, "CREATE_TABLE": "y"})
        projections = Projections(app, store, names=("insights",))
        for runner in projections.runners.values():
            runner.catch_up()
        insights = Insights(projections, wait_seconds=5.0, clock=app.clock, subjects=app)
        data = gather(app, insights, team_id=args.team, start=start, end=end, now=now)
        page = render(data)
    except ValueError as error:
        return fail("", error, 2)
    except LeewayError as error:
        return fail("", error, 1)
    finally:
        if projections is not None:
            projections.close()
        app.close()
    Path(args.output).write_text(page, encoding="utf-8")
    print(f"wrote {args.output} ({len(page.encode()):,} bytes): {data.title}, {start:%Y-%m-%d} to {end:%Y-%m-%d}",
          file=sys.stderr)  # fmt: skip
    return 0
