"""Service settings, read from environment variables and validated at start-up (see README, "Configuration")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///var/leeway.sqlite"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"


class SettingsError(ValueError):
    """One or more settings are invalid; the message names each variable and what is wrong."""


@dataclass(frozen=True)
class Settings:
    grpc_address: str = DEFAULT_ADDRESS
    database_url: str = DEFAULT_DATABASE_URL
    max_workers: int = 32
    shutdown_grace_seconds: float = 10.0
    log_level: str = "info"
    log_format: str = "auto"
    reflection: bool = True
    health_interval_seconds: float = 5.0
    create_tables: bool = True
    postgres_pool_size: int = 10
    expiry_interval_seconds: float = 5.0
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    keepalive_time_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    max_connection_idle_seconds: float = 600.0
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def text(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        def number(name: str, default: float, kind: type, low: float, high: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{name}={raw!r}: not a{'n integer' if kind is int else ' number'}")
                return default
            if not low <= value <= high:
                problems.append(f"{name}={raw!r}: must be between {low} and {high}")
                return default
            return value

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name, "").strip().lower()
            if not raw:
                return default
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off"):
                return False
            problems.append(f"{name}={raw!r}: must be true or false")
            return default

        def choice(name: str, default: str, options: tuple[str, ...]) -> str:
            value = text(name, default).lower()
            if value not in options:
                problems.append(f"{name}={value!r}: must be one of {', '.join(options)}")
                return default
            return value

        settings = cls(
            grpc_address=text("LEEWAY_GRPC_ADDRESS", DEFAULT_ADDRESS),
            database_url=text("LEEWAY_DATABASE_URL", DEFAULT_DATABASE_URL),
            max_workers=int(number("LEEWAY_GRPC_MAX_WORKERS", 32, int, 1, 1024)),
            shutdown_grace_seconds=number("LEEWAY_SHUTDOWN_GRACE_SECONDS", 10.0, float, 0, 3600),
            log_level=choice("LEEWAY_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=choice("LEEWAY_LOG_FORMAT", "auto", ("auto", "json", "console")),
            reflection=flag("LEEWAY_REFLECTION", True),
            health_interval_seconds=number("LEEWAY_HEALTH_INTERVAL_SECONDS", 5.0, float, 0.1, 3600),
            expiry_interval_seconds=number("LEEWAY_EXPIRY_INTERVAL_SECONDS", 5.0, float, 0, 3600),
            create_tables=flag("LEEWAY_CREATE_TABLES", True),
            postgres_pool_size=int(number("LEEWAY_POSTGRES_POOL_SIZE", 10, int, 1, 500)),
            metrics_address=text("LEEWAY_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS),
            keepalive_time_seconds=number("LEEWAY_GRPC_KEEPALIVE_TIME_SECONDS", 60.0, float, 1, 86400),
            keepalive_timeout_seconds=number("LEEWAY_GRPC_KEEPALIVE_TIMEOUT_SECONDS", 20.0, float, 1, 3600),
            max_connection_idle_seconds=number("LEEWAY_GRPC_MAX_CONNECTION_IDLE_SECONDS", 600.0, float, 1, 86400 * 7),
            max_connection_age_seconds=number("LEEWAY_GRPC_MAX_CONNECTION_AGE_SECONDS", 300.0, float, 1, 86400 * 7),
            max_connection_age_grace_seconds=number(
                "LEEWAY_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", 30.0, float, 0, 86400
            ),
        )
        host, sep, port = settings.grpc_address.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            problems.append(f"LEEWAY_GRPC_ADDRESS={settings.grpc_address!r}: must be HOST:PORT, e.g. {DEFAULT_ADDRESS}")
        if settings.metrics_enabled:
            host, sep, port = settings.metrics_address.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                problems.append(
                    f"LEEWAY_METRICS_ADDRESS={settings.metrics_address!r}: must be HOST:PORT "
                    f"(e.g. {DEFAULT_METRICS_ADDRESS}) or off"
                )
        try:
            settings.eventsourcing_env()
        except SettingsError as error:
            problems.append(str(error))
        if problems:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems))
        return settings

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_address.lower() not in ("off", "none", "false", "0", "")

    def grpc_options(self) -> list[tuple[str, int]]:
        """Keepalive and connection-age options for running behind a load balancer."""
        ms = lambda seconds: int(seconds * 1000)  # noqa: E731
        return [
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time_seconds)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_seconds)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Clients may ping every 10 s (e.g. to keep idle connections through a NAT) without being cut off.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle_seconds)),
            # Connections are recycled so that a load balancer spreads clients over new replicas.
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_seconds)),
        ]

    def eventsourcing_env(self) -> dict[str, str]:
        """The eventsourcing library's environment for LEEWAY_DATABASE_URL."""
        url = self.database_url
        parts = urlsplit(url)
        create = "y" if self.create_tables else "n"
        if parts.scheme == "sqlite":
            path = unquote(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else ""
            if not path:
                raise SettingsError(
                    f"LEEWAY_DATABASE_URL={url!r}: a SQLite URL is sqlite:///relative/path.sqlite, "
                    "sqlite:////absolute/path.sqlite or sqlite:///:memory:"
                )
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": path,
                "SQLITE_LOCK_TIMEOUT": "10",
                "CREATE_TABLE": create,
            }
        if parts.scheme in ("postgres", "postgresql"):
            dbname = unquote(parts.path.lstrip("/"))
            if not parts.hostname or not dbname:
                raise SettingsError(
                    f"LEEWAY_DATABASE_URL={self.redacted_url()!r}: a PostgreSQL URL is "
                    "postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?schema=NAME]"
                )
            query = parse_qs(parts.query)
            try:
                port = parts.port or 5432
            except ValueError:
                raise SettingsError(f"LEEWAY_DATABASE_URL={self.redacted_url()!r}: the port is not a number") from None
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": dbname,
                "POSTGRES_HOST": parts.hostname,
                "POSTGRES_PORT": str(port),
                "POSTGRES_USER": unquote(parts.username or "postgres"),
                "POSTGRES_PASSWORD": unquote(parts.password or ""),
                "POSTGRES_POOL_SIZE": str(self.postgres_pool_size),
                "POSTGRES_MAX_OVERFLOW": str(self.postgres_pool_size),
                "POSTGRES_CONNECT_TIMEOUT": "5",
                "POSTGRES_PRE_PING": "y",
                "CREATE_TABLE": create,
            }
            if "schema" in query:
                env["POSTGRES_SCHEMA"] = query["schema"][0]
            return env
        raise SettingsError(
            f"LEEWAY_DATABASE_URL={self.redacted_url()!r}: unsupported scheme {parts.scheme!r} (use sqlite or postgresql)"
        )

    def redacted_url(self) -> str:
        """The database URL without its password, for logs and error messages."""
        parts = urlsplit(self.database_url)
        if parts.password:
            return self.database_url.replace(f":{parts.password}@", ":***@", 1)
        return self.database_url

    def prepare(self) -> None:
        """Creates the directory of a SQLite file if needed."""
        env = self.eventsourcing_env()
        path = env.get("SQLITE_DBNAME", "")
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
