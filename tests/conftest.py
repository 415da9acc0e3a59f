"""Fixtures shared by every test folder: a database per test (SQLite and PostgreSQL), a fake clock, apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from builders import database



class FakeClock:
    """A clock the tests move by hand. Call it to read the time (what LeewayApplication expects)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now = self.now + delta
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path, prefix="t") as url:
        yield url


@pytest.fixture
def app_factory(database_url: str, clock: FakeClock) -> Iterator[Callable[..., Any]]:
    """Builds LeewayApplication instances (or instances of a subclass ``cls``) on this test's database; closes
    them all at teardown."""
    from leeway.application import LeewayApplication
    from leeway.settings import Settings

    apps: list[LeewayApplication] = []

    def make(cls: type[LeewayApplication] = LeewayApplication) -> Any:
        app = cls(env=Settings(database_url=database_url).eventsourcing_env(), clock=clock)
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        app.close()
