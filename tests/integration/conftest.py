"""Fixtures shared by the integration tests (each runs on SQLite and on PostgreSQL: ``database_url``)."""

from __future__ import annotations

import pytest
from stored_rows import StoredRows


@pytest.fixture
def app(app_factory):
    """A LeewayApplication on this test's database (a module with more to set up defines its own)."""
    return app_factory()


@pytest.fixture
def rows(database_url) -> StoredRows:
    """The stored rows of this test's database, read and tampered with as an attacker with database access would."""
    return StoredRows(database_url)
