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


#: The master key of the tests of personal data (issue 22).
MASTER_KEY = bytes(range(32))


@pytest.fixture
def make_keyed(database_url, clock):
    """Builds LeewayApplication instances with a key store (``master``: a MasterKeySource, None for none: the
    format of logs written before encryption) on this test's database; closes them all at teardown."""
    from leeway.adapters.keystore import StaticMasterKey
    from leeway.application import LeewayApplication
    from leeway.settings import Settings

    apps: list[LeewayApplication] = []

    def build(master=StaticMasterKey(MASTER_KEY), **kwargs):
        kwargs.setdefault("clock", clock)
        app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env(), master_key=master,
                                **kwargs)
        apps.append(app)
        return app

    yield build
    for app in reversed(apps):
        app.close()
