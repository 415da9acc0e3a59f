from __future__ import annotations

import pytest

from leeway.settings import DEFAULT_ADDRESS, DEFAULT_DATABASE_URL, Settings, SettingsError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.grpc_address == DEFAULT_ADDRESS == "127.0.0.1:50051"
    assert s.database_url == DEFAULT_DATABASE_URL
    assert s.max_workers == 32
    assert s.shutdown_grace_seconds == 10.0
    assert s.log_level == "info"
    assert s.log_format == "auto"
    assert s.reflection is True
    assert s.create_tables is True
    assert s.postgres_pool_size == 10


def test_how_requests_are_read() -> None:
    from datetime import timedelta

    from leeway.application.conventions import Conventions
    from leeway.domain.customers import CustomerIdForm

    assert Settings().conventions() == Conventions() == Conventions(CustomerIdForm.CASEFOLD, timedelta(days=30))
    s = Settings.from_env({"LEEWAY_CUSTOMER_ID_NORMALIZATION": "Trim", "LEEWAY_OCCUR_TIME_MAX_AGE_DAYS": "365"})
    assert s.conventions() == Conventions(CustomerIdForm.TRIM, timedelta(days=365))
    assert Settings.from_env({"LEEWAY_CUSTOMER_ID_NORMALIZATION": "exact"}).conventions().customer_ids == "exact"


def test_blank_values_mean_default() -> None:
    assert Settings.from_env({"LEEWAY_GRPC_MAX_WORKERS": "  ", "LEEWAY_LOG_LEVEL": ""}) == Settings()


def test_values_are_read() -> None:
    s = Settings.from_env(
        {
            "LEEWAY_GRPC_ADDRESS": "0.0.0.0:6000",
            "LEEWAY_GRPC_MAX_WORKERS": "8",
            "LEEWAY_LOG_LEVEL": "DEBUG",
            "LEEWAY_REFLECTION": "off",
            "LEEWAY_CREATE_TABLES": "no",
            "LEEWAY_SHUTDOWN_GRACE_SECONDS": "2.5",
        }
    )
    assert (s.grpc_address, s.max_workers, s.log_level, s.reflection, s.create_tables) == (
        "0.0.0.0:6000", 8, "debug", False, False
    )
    assert s.shutdown_grace_seconds == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEEWAY_GRPC_MAX_WORKERS", "many"),
        ("LEEWAY_OCCUR_TIME_MAX_AGE_DAYS", "0"),
        ("LEEWAY_CUSTOMER_ID_NORMALIZATION", "lower"),
        ("LEEWAY_OCCUR_TIME_MAX_AGE_DAYS", "a month"),
        ("LEEWAY_GRPC_MAX_WORKERS", "0"),
        ("LEEWAY_GRPC_MAX_WORKERS", "2.5"),
        ("LEEWAY_SHUTDOWN_GRACE_SECONDS", "-1"),
        ("LEEWAY_HEALTH_INTERVAL_SECONDS", "soon"),
        ("LEEWAY_POSTGRES_POOL_SIZE", "501"),
        ("LEEWAY_LOG_LEVEL", "verbose"),
        ("LEEWAY_LOG_FORMAT", "xml"),
        ("LEEWAY_LOG_FLUSH_SECONDS", "-0.1"),
        ("LEEWAY_LOG_FLUSH_SECONDS", "often"),
        ("LEEWAY_REFLECTION", "maybe"),
        ("LEEWAY_CREATE_TABLES", "2"),
        ("LEEWAY_POSTGRES_PREPARED_STATEMENTS", "sometimes"),
        ("LEEWAY_GRPC_ADDRESS", "localhost"),
        ("LEEWAY_GRPC_ADDRESS", "localhost:99999"),
        ("LEEWAY_GRPC_ADDRESS", ":50051"),
        ("LEEWAY_DATABASE_URL", "mysql://db/leeway"),
        ("LEEWAY_DATABASE_URL", "sqlite://"),
        ("LEEWAY_DATABASE_URL", "postgresql://user@host/"),
        ("LEEWAY_DATABASE_URL", "postgresql://user@host:port/db"),
        # operations
        ("LEEWAY_METRICS_ADDRESS", "9464"),
        ("LEEWAY_METRICS_ADDRESS", "localhost:http"),
        ("LEEWAY_GRPC_KEEPALIVE_TIME_SECONDS", "0"),
        ("LEEWAY_GRPC_MAX_CONNECTION_AGE_SECONDS", "soon"),
        ("LEEWAY_EXPIRY_INTERVAL_SECONDS", "-1"),
        # authentication abuse (the rest of it: tests/unit/test_auth_abuse.py)
        ("LEEWAY_JWT_MAX_LIFETIME_SECONDS", "0"),
        ("LEEWAY_JWT_MAX_LIFETIME_SECONDS", "forever"),
        ("LEEWAY_JWT_MAX_LIFETIME_SECONDS", str(10 * 365 * 24 * 3600)),
        ("LEEWAY_AUTH_FAILURE_PER_SECOND", "-1"),
        ("LEEWAY_AUTH_FAILURE_PER_SECOND", "often"),
        ("LEEWAY_AUTH_FAILURE_BURST", "0"),
        ("LEEWAY_AUTH_FAILURE_BURST", "2.5"),
        ("LEEWAY_AUTH_FAILURE_MAX_PEERS", "0"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)


def test_prepared_statements_can_be_turned_off_for_pgbouncer() -> None:
    """LEEWAY_POSTGRES_PREPARED_STATEMENTS=false reaches the library's environment as Leeway's own key (read by
    storegate.tune_factory), the projections child and the connections' prepare_threshold (None: never prepare)."""
    from leeway.adapters.storegate import tune_factory
    from leeway.server import projection_child_environ

    url = "postgresql://postgres@127.0.0.1:5432/test"
    on = Settings.from_env({"LEEWAY_DATABASE_URL": url})
    off = Settings.from_env({"LEEWAY_DATABASE_URL": url, "LEEWAY_POSTGRES_PREPARED_STATEMENTS": "false"})
    assert (on.postgres_prepared_statements, off.postgres_prepared_statements) == (True, False)
    assert on.eventsourcing_env()["POSTGRES_PREPARED_STATEMENTS"] == "y"
    assert off.eventsourcing_env()["POSTGRES_PREPARED_STATEMENTS"] == "n"
    assert projection_child_environ(off)["LEEWAY_POSTGRES_PREPARED_STATEMENTS"] == "false"
    assert Settings.from_env(projection_child_environ(off)).postgres_prepared_statements is False

    class Pool:
        def __init__(self) -> None:
            self.kwargs: dict[str, object] = {"dbname": "test"}

    class Factory:
        def __init__(self) -> None:
            self.datastore = type("Datastore", (), {})()
            self.datastore.pool = Pool()

    kept, tuned = tune_factory(Factory(), on.eventsourcing_env()), tune_factory(Factory(), off.eventsourcing_env())
    assert "prepare_threshold" not in kept.datastore.pool.kwargs
    assert tuned.datastore.pool.kwargs == {"dbname": "test", "prepare_threshold": None}
    assert tune_factory(object(), off.eventsourcing_env()) is not None  # SQLite: no pool, nothing to do


def test_every_problem_is_reported() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"LEEWAY_GRPC_MAX_WORKERS": "x", "LEEWAY_LOG_FORMAT": "xml"})
    assert "LEEWAY_GRPC_MAX_WORKERS" in str(info.value)
    assert "LEEWAY_LOG_FORMAT" in str(info.value)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/leeway.sqlite", "var/leeway.sqlite"),
        ("sqlite:////tmp/abs.sqlite", "/tmp/abs.sqlite"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///dir%20name/x.sqlite", "dir name/x.sqlite"),
    ],
)
def test_sqlite_env(url: str, path: str) -> None:
    env = Settings(database_url=url).eventsourcing_env()
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"
    assert env["SQLITE_DBNAME"] == path
    assert env["CREATE_TABLE"] == "y"


def test_create_tables_false_maps_to_n() -> None:
    assert Settings(database_url="sqlite:///x.sqlite", create_tables=False).eventsourcing_env()["CREATE_TABLE"] == "n"


def test_postgres_env() -> None:
    env = Settings(
        database_url="postgresql://leeway:s%40cret@db.example:6543/leeway_db?schema=tenant1", postgres_pool_size=7
    ).eventsourcing_env()
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    assert env["POSTGRES_DBNAME"] == "leeway_db"
    assert env["POSTGRES_HOST"] == "db.example"
    assert env["POSTGRES_PORT"] == "6543"
    assert env["POSTGRES_USER"] == "leeway"
    assert env["POSTGRES_PASSWORD"] == "s@cret"
    assert env["POSTGRES_SCHEMA"] == "tenant1"
    assert env["POSTGRES_POOL_SIZE"] == "7"
    assert env["CREATE_TABLE"] == "y"


def test_postgres_defaults() -> None:
    env = Settings(database_url="postgres://db/leeway").eventsourcing_env()
    assert env["POSTGRES_PORT"] == "5432"
    assert env["POSTGRES_USER"] == "postgres"
    assert env["POSTGRES_PASSWORD"] == ""
    assert "POSTGRES_SCHEMA" not in env


def test_password_is_redacted() -> None:
    s = Settings(database_url="postgresql://leeway:hunter2@db:5432/leeway")
    assert s.redacted_url() == "postgresql://leeway:***@db:5432/leeway"
    assert Settings(database_url="postgresql://leeway@db/leeway").redacted_url() == "postgresql://leeway@db/leeway"


def test_password_not_in_errors() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"LEEWAY_DATABASE_URL": "postgresql://leeway:hunter2@db:notaport/leeway"})
    assert "hunter2" not in str(info.value)
    assert "LEEWAY_DATABASE_URL" in str(info.value)
    with pytest.raises(SettingsError) as info:
        Settings(database_url="mysql://leeway:hunter2@db/leeway").eventsourcing_env()
    assert "hunter2" not in str(info.value)


def test_operations_settings_defaults_and_values() -> None:
    s = Settings.from_env({})
    assert s.metrics_address == "127.0.0.1:9464" and s.metrics_enabled
    assert s.expiry_interval_seconds == 5.0
    assert (s.keepalive_time_seconds, s.max_connection_age_seconds, s.max_connection_idle_seconds) == (60, 300, 600)
    s = Settings.from_env(
        {
            "LEEWAY_METRICS_ADDRESS": "0.0.0.0:9100",
            "LEEWAY_EXPIRY_INTERVAL_SECONDS": "0",
            "LEEWAY_GRPC_KEEPALIVE_TIME_SECONDS": "15",
            "LEEWAY_GRPC_KEEPALIVE_TIMEOUT_SECONDS": "5",
            "LEEWAY_GRPC_MAX_CONNECTION_IDLE_SECONDS": "120",
            "LEEWAY_GRPC_MAX_CONNECTION_AGE_SECONDS": "900",
            "LEEWAY_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "10",
        }
    )
    assert s.metrics_address == "0.0.0.0:9100" and s.expiry_interval_seconds == 0
    options = dict(s.grpc_options())
    assert options["grpc.keepalive_time_ms"] == 15_000 and options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.max_connection_idle_ms"] == 120_000 and options["grpc.max_connection_age_ms"] == 900_000
    assert options["grpc.max_connection_age_grace_ms"] == 10_000


@pytest.mark.parametrize("value", ["off", "OFF", "none", "false", "0"])
def test_metrics_can_be_switched_off(value: str) -> None:
    assert not Settings.from_env({"LEEWAY_METRICS_ADDRESS": value}).metrics_enabled




@pytest.mark.parametrize("mode", ["inprocess", "subprocess", "external"])
def test_projection_modes(mode: str) -> None:
    assert Settings.from_env({"LEEWAY_PROJECTIONS": mode}).projections == mode


def test_projections_run_in_a_child_by_default_except_in_memory() -> None:
    assert Settings().projections == Settings.from_env({}).projections == "subprocess"
    assert Settings.from_env({"LEEWAY_DATABASE_URL": "sqlite:///:memory:"}).projections == "inprocess"


@pytest.mark.parametrize("mode", ["subprocess", "external"])
def test_projections_in_another_process_need_a_database_it_can_read(mode: str) -> None:
    with pytest.raises(SettingsError, match="in-memory SQLite"):
        Settings.from_env({"LEEWAY_PROJECTIONS": mode, "LEEWAY_DATABASE_URL": "sqlite:///:memory:"})
    assert Settings.from_env({"LEEWAY_PROJECTIONS": "inprocess", "LEEWAY_DATABASE_URL": "sqlite:///:memory:"})


def test_the_projections_child_gets_the_servers_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child of `leeway serve` reads its settings from its environment: it gets the ones the server was built
    with, also when they did not come from the environment (create_server(Settings(...)) in tests)."""
    from leeway.server import projection_child_environ

    monkeypatch.setenv("LEEWAY_DATABASE_URL", "sqlite:///somewhere-else.sqlite")
    settings = Settings(
        database_url="postgresql://leeway:s3cret@db.example/leeway", projection_poll_seconds=2.5, log_level="warning"
    )
    child = Settings.from_env(projection_child_environ(settings))
    assert child.database_url == "postgresql://leeway:s3cret@db.example/leeway"
    assert child.projection_poll_seconds == 2.5 and child.log_level == "warning"
    assert child.gc_tuning is True
    assert child.log_flush_seconds == 0.1
    assert Settings.from_env(projection_child_environ(Settings(log_flush_seconds=0))).log_flush_seconds == 0
    monkeypatch.setenv("LEEWAY_GC_TUNING", "true")
    assert Settings.from_env(projection_child_environ(Settings(gc_tuning=False))).gc_tuning is False


def test_gc_tuning_is_on_by_default_and_can_be_turned_off() -> None:
    assert Settings.from_env({}).gc_tuning is True
    assert Settings.from_env({"LEEWAY_GC_TUNING": "false"}).gc_tuning is False
    with pytest.raises(SettingsError, match="LEEWAY_GC_TUNING"):
        Settings.from_env({"LEEWAY_GC_TUNING": "sometimes"})
