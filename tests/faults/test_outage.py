"""Scenario 2 (issue 8): PostgreSQL goes away for a few seconds under load, without a service restart.

The machine's PostgreSQL is shared with other tests, so the outage is made by a TcpProxy (tests/faults/proxy.py)
between the service and PostgreSQL: every live connection is cut and new ones are refused, then it listens
again. During the outage every call ends within its deadline with UNAVAILABLE carrying a leeway ErrorInfo
(never INTERNAL/UNKNOWN), and health reports NOT_SERVING; afterwards the service recovers by itself and the
invariants of the crash scenario hold."""

from __future__ import annotations

from .harness import database_outage


def test_database_outage_answers_unavailable_and_recovers(postgres_url, scale, tmp_path):
    result = database_outage(postgres_url, tmp_path, scale)
    print("\n" + result.describe())
    assert result.outage_statuses.get("UNAVAILABLE"), result.describe()
    assert result.ok, result.describe()
