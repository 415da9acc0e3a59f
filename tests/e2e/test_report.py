"""``leeway report`` (issue 23): the managers' report as one self-contained HTML file, from a real database seeded
through the application over several weeks, rendered by a real headless Chromium (Debian's ``chromium``) whose
screenshot must show the charts (their colours, in quantity), not only a file that exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from builders import action_cmd, approve, deny, eur, make_policy, open_cmd, reverse_cmd, team_cap
from conftest import FakeClock
from leeway.application import LeewayApplication
from leeway.application.commands import DocumentWin
from leeway.domain.policy import ActionKind
from leeway.reporting import charts
from leeway.settings import Settings

START = datetime(2026, 9, 7, tzinfo=timezone.utc)  # a Monday
GIFTS = ("flowers", "voucher", "chocolates")
KINDS = (ActionKind.REFUND, ActionKind.CREDIT, ActionKind.RULE_BEND, ActionKind.GIFT)


def seed(database_url: str) -> None:
    """Two teams over six weeks: gifts of three types, refunds, credits and rule bends, wins, one customer helped
    by three employees, a team cap."""
    clock = FakeClock(START + timedelta(hours=9))
    app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env(), clock=clock)
    try:
        policy = make_policy(10_000, limit=500, kinds=KINDS, currency="EUR")
        # Bob's gifts over 40 wait for mgr-1, who approves some and denies others.
        held = make_policy(2_000, limit=40, kinds=KINDS, currency="EUR", approvers=["mgr-1"], max_held=2_000)
        for employee, team in (("ann", "desk"), ("bob", "desk"), ("cyd", "desk"), ("olga", "ops")):
            app.execute(open_cmd(employee, team, held if employee == "bob" else policy, display_name=employee.title()))
        app.execute(team_cap("desk", eur(5_000)))
        for week in range(6):
            for day in range(week % 3 + 2):
                clock.now = START + timedelta(weeks=week, days=day, hours=10)
                for n, employee in enumerate(("ann", "bob", "cyd", "olga")):
                    gift = GIFTS[(week + day + n) % len(GIFTS)]
                    action, _ = app.execute(action_cmd(employee, eur(20 + week * 5 + n), kind=ActionKind.GIFT,
                                                    customer=f"guest-{week}-{n}", details={"gift_type": gift}))
                    refund, _ = app.execute(action_cmd(employee, eur(10 + day), customer=f"guest-{day}"))
                    if action.state == "PENDING_APPROVAL":
                        app.execute((approve if (week + day) % 3 else deny)(action.action_id))
                    if (week + day + n) % 5 == 0:
                        app.execute(reverse_cmd(refund.action_id, actor="mgr-1"))
                    if (week + n) % 4 == 0:
                        app.execute(DocumentWin(request_id=f"win-{week}-{day}-{n}", action_id=action.action_id,
                                                story=f"{employee.title()} saved week {week}",
                                                customer_quote="You made our day <3", outcome="stayed"))
        clock.now = START + timedelta(weeks=5, days=3)
        for employee in ("ann", "bob", "cyd"):  # the same customer, helped by three people in a week
            app.execute(action_cmd(employee, eur(15), kind=ActionKind.CREDIT, customer="serial-complainer",
                                   details={"account_ref": "acc-9"}))
    finally:
        app.close()


def run_report(database_url: str, output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env["LEEWAY_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "leeway.cli", "report", "-o", str(output), "--start", "2026-09-07", "--end",
         "2026-10-19", *args],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def screenshot(page: Path, png: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
         "--window-size=1100,6000", f"--screenshot={png}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def colour_pixels(png: Path, hex_colour: str, tolerance: int = 12) -> int:
    from PIL import Image

    target = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    image = Image.open(png).convert("RGB")
    return sum(
        count
        for count, pixel in image.getcolors(maxcolors=1 << 24) or []
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, target, strict=True))
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'leeway.sqlite'}"
    seed(url)
    return url


def test_the_report_is_one_self_contained_page_whose_charts_show_in_chromium(seeded: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    done = run_report(seeded, page)
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert html.count("<svg") == 5  # flower stats, spend by kind, rates, budget use, team caps: all drawn
    for forbidden in ("<script", "http://", "https://", "<link", "@import"):
        assert forbidden not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
            "http://www.w3.org/1999/xlink", ""), forbidden  # fmt: skip
    assert "serial-complainer" in html  # goodwill from three employees
    assert "Ann saved week 0" in html and "You made our day &lt;3" in html  # the wins, escaped
    assert "The whole organisation" in html
    png = Path(os.environ.get("LEEWAY_REPORT_SCREENSHOT", tmp_path / "report.png"))
    screenshot(page, png)
    # The charts are on screen, in quantity: the bars of refunds and gifts (spend by kind, flower stats, budget
    # use) and the lines of the rates (the approval line only exists where something was escalated).
    assert colour_pixels(png, charts.KIND_COLOURS["REFUND"]) > 10_000
    assert colour_pixels(png, charts.KIND_COLOURS["GIFT"]) > 10_000
    assert colour_pixels(png, charts.RATE_COLOURS["reversal"]) > 300
    assert colour_pixels(png, charts.RATE_COLOURS["approval"]) > 100


def test_a_team_report_and_clear_errors(seeded: str, tmp_path: Path) -> None:
    page = tmp_path / "ops.html"
    done = run_report(seeded, page, "--team", "ops")
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert "Team ops" in html and "Olga" in html and "Ann saved" not in html
    missing = run_report(seeded, tmp_path / "x.html", "--team", "nobody-here")
    assert missing.returncode == 1 and "nobody-here" in missing.stderr and "Traceback" not in missing.stderr
    bad = subprocess.run([sys.executable, "-m", "leeway.cli", "report", "--start", "07/09/2026"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
