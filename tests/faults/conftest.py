"""Fixtures for the fault scenarios: a fresh PostgreSQL schema per test (skipped without PostgreSQL, a failure
under LEEWAY_REQUIRE_POSTGRES=1, as everywhere else) and the scale of the scenarios (LEEWAY_FAULTS_*)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from builders import database

from .harness import Scale


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with database("postgres", prefix="faults") as url:
        yield url


@pytest.fixture(scope="session")
def scale() -> Scale:
    return Scale.from_env()
