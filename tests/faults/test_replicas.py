"""Scenario 3 (issue 8): two `leeway serve` replicas on one PostgreSQL schema, client threads alternating between
them, all spending concurrently on the same three small budgets: no overspend, no duplicate, nothing lost."""

from __future__ import annotations

from .harness import two_replicas


def test_two_replicas_never_overspend(postgres_url, scale, tmp_path):
    result = two_replicas(postgres_url, tmp_path, scale)
    print("\n" + result.describe())
    assert result.report.acknowledged > 0 and result.report.refused > 0, result.describe()
    assert result.ok, result.describe()
