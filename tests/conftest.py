"""Fixtures shared by every test folder: a database per test (SQLite and PostgreSQL), a fake clock, apps."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


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


def _postgres_unavailable(message: str) -> None:
    if os.environ.get("LEEWAY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (LEEWAY_REQUIRE_POSTGRES=1) but {message}", pytrace=False)
    pytest.skip(f"PostgreSQL not available ({message}); set LEEWAY_TEST_POSTGRES_URL or start the server")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/leeway.sqlite"
        return
    import psycopg

    base = os.environ.get("LEEWAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    schema = f"t_{uuid.uuid4().hex}"
    try:
        conn = psycopg.connect(base, connect_timeout=3, autocommit=True)
    except psycopg.Error as error:
        _postgres_unavailable(f"cannot connect to {base}: {error}")
    try:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        conn.close()
    try:
        yield f"{base}?schema={schema}"
    finally:
        with psycopg.connect(base, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def app_factory(database_url: str, clock: FakeClock) -> Iterator[Callable[[], object]]:
    """Builds LeewayApplication instances on this test's database; closes them all at teardown."""
    from leeway.application import LeewayApplication
    from leeway.settings import Settings

    apps: list[LeewayApplication] = []

    def make() -> LeewayApplication:
        app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env(), clock=clock)
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        app.close()
