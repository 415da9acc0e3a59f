"""The pieces of /metrics that need no server: the build revision's sources, the pending/overdue collector, the
projections' collector when the store is down, the projections' metrics address setting and its HTTP paths."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from leeway import observability
from leeway.observability import Metrics, ProjectionMetrics, build_revision, serve_http
from leeway.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_revision() -> None:
    build_revision.cache_clear()
    yield
    build_revision.cache_clear()


def test_build_revision_comes_from_the_environment_then_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEEWAY_BUILD_REVISION", "  4f1c2d9  ")
    assert build_revision() == "4f1c2d9"
    build_revision.cache_clear()
    monkeypatch.delenv("LEEWAY_BUILD_REVISION")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert build_revision() == head and len(head) == 40


def test_build_revision_is_unknown_without_either(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LEEWAY_BUILD_REVISION", raising=False)
    monkeypatch.setattr(observability, "__file__", str(tmp_path / "service" / "leeway" / "observability.py"))
    assert build_revision() == "unknown"


def test_build_info_and_runtime_collectors_are_on_every_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEEWAY_BUILD_REVISION", "abc")
    text = generate_latest(Metrics().registry).decode()
    assert 'leeway_build_info{revision="abc",version="0.1.0"} 1.0' in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info", "python_gc_collections_total"):
        assert f"\n{name}" in text


def test_pending_and_overdue_approvals_are_read_at_scrape_time() -> None:
    metrics = Metrics(CollectorRegistry())
    counts = iter([(3, 2), RuntimeError("store down")])

    def read() -> tuple[int, int]:
        value = next(counts)
        if isinstance(value, Exception):
            raise value
        return value

    metrics.watch_pending(read)
    text = generate_latest(metrics.registry).decode()
    assert "leeway_pending_approvals 3.0" in text and "leeway_approvals_overdue 2.0" in text
    text = generate_latest(metrics.registry).decode()  # the store is down: the scrape still works, without them
    assert "leeway_pending_approvals " not in text and "leeway_build_info" in text


def test_projection_metrics_report_the_store_and_readiness() -> None:
    up = [True]

    def status() -> list[SimpleNamespace]:
        if not up[0]:
            raise ConnectionError("database unreachable")
        return [SimpleNamespace(name="insights", position=7, lag=3)]

    metrics = ProjectionMetrics(status)
    server = serve_http("127.0.0.1:0", metrics.registry, metrics.ready)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        text = urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert "leeway_event_store_up 1.0" in text
        assert 'leeway_projection_lag_events{projection="insights"} 3.0' in text
        assert urlopen(f"{base}/readyz", timeout=5).status == 200
        up[0] = False
        text = urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert "leeway_event_store_up 0.0" in text and "leeway_projection_lag_events{" not in text
        with pytest.raises(HTTPError) as unready:
            urlopen(f"{base}/readyz", timeout=5)
        assert unready.value.code == 503
        assert urlopen(f"{base}/livez", timeout=5).status == 200, "a database outage does not make it unlive"
    finally:
        server.shutdown()
        server.server_close()


def test_projections_metrics_address_setting() -> None:
    assert Settings().projections_metrics_address == "127.0.0.1:9465", "loopback unless told otherwise"
    assert Settings.from_env({"LEEWAY_PROJECTIONS_METRICS_ADDRESS": "0.0.0.0:9100"}).projections_metrics_enabled
    for off in ("off", "OFF", "none"):
        assert not Settings.from_env({"LEEWAY_PROJECTIONS_METRICS_ADDRESS": off}).projections_metrics_enabled
    for bad in ("9465", "localhost:http", ":9465", "host:99999"):
        with pytest.raises(SettingsError, match="LEEWAY_PROJECTIONS_METRICS_ADDRESS"):
            Settings.from_env({"LEEWAY_PROJECTIONS_METRICS_ADDRESS": bad})


def test_the_projections_child_gets_the_servers_metrics_address() -> None:
    from leeway.server import projection_child_environ

    child = projection_child_environ(Settings(projections_metrics_address="off"))
    assert not Settings.from_env(child).projections_metrics_enabled
    child = projection_child_environ(Settings(projections_metrics_address="127.0.0.1:0"))
    assert Settings.from_env(child).projections_metrics_address == "127.0.0.1:0"
