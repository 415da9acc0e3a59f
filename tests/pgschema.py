"""A fresh PostgreSQL schema per test or module; skip, or fail under LEEWAY_REQUIRE_POSTGRES=1, without a server."""

from __future__ import annotations

import os
import uuid

import pytest

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_unavailable(message: str) -> None:
    """Skip (or fail, with LEEWAY_REQUIRE_POSTGRES=1) when PostgreSQL cannot be used."""
    if os.environ.get("LEEWAY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (LEEWAY_REQUIRE_POSTGRES=1) but {message}", pytrace=False)
    pytest.skip(f"PostgreSQL not available ({message}); set LEEWAY_TEST_POSTGRES_URL or start the server")


class PostgresSchema:
    """A fresh schema in the test database (LEEWAY_TEST_POSTGRES_URL), dropped by ``drop()``."""

    def __init__(self, prefix: str = "t") -> None:
        import psycopg

        self.base = os.environ.get("LEEWAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        self.name = f"{prefix}_{uuid.uuid4().hex}"
        try:
            conn = psycopg.connect(self.base, connect_timeout=3, autocommit=True)
        except psycopg.Error as error:
            postgres_unavailable(f"cannot connect to {self.base}: {error}")
        try:
            conn.execute(f'CREATE SCHEMA "{self.name}"')
        finally:
            conn.close()

    @property
    def url(self) -> str:
        return f"{self.base}?schema={self.name}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.base, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
