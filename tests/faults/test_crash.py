"""Scenario 1 (issue 8): crash under load. Client threads record actions, each with its own request_id and
retrying it on UNAVAILABLE / DEADLINE_EXCEEDED / connection errors against whatever port the server has now,
while the server is SIGKILLed and restarted on the same PostgreSQL schema. Afterwards the log holds every
acknowledged action exactly once, no request_id twice, and every budget agrees with its events."""

from __future__ import annotations

from .harness import crash_under_load


def test_sigkill_under_load_loses_and_duplicates_nothing(postgres_url, scale, tmp_path):
    result = crash_under_load(postgres_url, tmp_path, scale)
    print("\n" + result.describe())
    assert result.report.acknowledged > 0, result.describe()
    assert result.ok, result.describe()
