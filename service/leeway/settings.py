"""Service settings, read from environment variables and validated at start-up (see README, "Configuration")."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .adapters.keystore import FileMasterKey, GeneratedMasterKey, MasterKeySource, StaticMasterKey
from .application.conventions import Conventions
from .domain.customers import CustomerIdForm
from .auth import HMAC_ALGORITHMS, PUBLIC_KEY_ALGORITHMS, ApiKey, AuthFailureLimiter, Authenticator, JwtConfig

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///var/leeway.sqlite"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8080"
_OFF = ("off", "none", "false", "0", "")
#: `leeway projections run`'s own /metrics, /livez, /readyz (observability.serve_http).
DEFAULT_PROJECTIONS_METRICS_ADDRESS = "127.0.0.1:9465"


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
    #: JSON log lines below warning are written this often by a background thread (logs.py); 0: each at once.
    log_flush_seconds: float = 0.1
    reflection: bool = True
    health_interval_seconds: float = 5.0
    create_tables: bool = True
    postgres_pool_size: int = 10
    #: False behind a connection pooler in transaction mode that does not carry server-side prepared statements
    #: over (PgBouncer before 1.21, or without ``max_prepared_statements``): no statement is prepared.
    postgres_prepared_statements: bool = True
    expiry_interval_seconds: float = 5.0
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    #: Where `leeway projections run` (and the child of `leeway serve`) serves /metrics, /livez and /readyz.
    projections_metrics_address: str = DEFAULT_PROJECTIONS_METRICS_ADDRESS
    keepalive_time_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    max_connection_idle_seconds: float = 600.0
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float = 30.0
    # Security (README, "Security"). Secrets are kept out of repr().
    auth_required: bool = False
    jwt_algorithms: tuple[str, ...] = ()
    jwt_secret: str = field(default="", repr=False)
    jwt_public_key: str = field(default="", repr=False)
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway_seconds: float = 30.0
    #: The longest JWT lifetime (exp - iat) accepted.
    jwt_max_lifetime_seconds: float = 86400.0
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    max_message_bytes: int = 4 * 1024 * 1024
    #: Calls open at once, of every kind (idle streams and calls still waiting for their message included: on
    #: the asyncio server each is a coroutine, not a thread); beyond it RESOURCE_EXHAUSTED at once.
    max_concurrent_rpcs: int = 10_000
    max_deadline_seconds: float = 30.0
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 100
    #: Failed authentications per peer address (auth.AuthFailureLimiter): bursts of this many, then this many per
    #: second (0: no limit); at most this many peers remembered.
    auth_failure_per_second: float = 0.2
    auth_failure_burst: int = 10
    auth_failure_max_peers: int = 10_000
    # Group commit (README, "Performance"): commands per transaction (1: one save per request) and the
    # writer's aggregate cache (0: off).
    batch_max: int = 128
    write_cache_size: int = 2000
    #: "subprocess" (default): `leeway serve` runs the projections in a child process it supervises (another
    #: core, not the server's GIL); "inprocess": in threads of the server (the default for an in-memory SQLite
    #: database); "external": a separate `leeway projections run` does.
    projections: str = "subprocess"
    projection_wait_seconds: float = 5.0
    projection_poll_seconds: float = 0.5
    #: StreamEvents calls with follow open at once (each waits on the log head: memory, no thread).
    max_follow_streams: int = 1000
    #: Garbage-collector tuning for `leeway serve` and `leeway projections run` (runtime.py): freeze the objects
    #: built at start-up and collect less often (shorter, rarer pauses of every thread).
    gc_tuning: bool = True
    #: How far in the past a RecordAction's occur_time may be.
    occur_time_max_age_days: int = 30
    #: How customer ids become keys before any cap or index sees them: "casefold" (trim and case-fold), "trim",
    #: "exact" (domain/customers.py).
    customer_id_normalization: str = "casefold"
    #: The HTTP/JSON (Connect protocol) front's HOST:PORT, or "off" (http_api/).
    http_address: str = DEFAULT_HTTP_ADDRESS
    #: Origins of browser apps that may call the HTTP front (CORS): "https://crm.example.com", ... or "*".
    http_cors_origins: tuple[str, ...] = ()
    # -- personal data (issue 22; README "Personal data")
    #: LEEWAY_MASTER_KEY_FILE: the master key that wraps the data keys ("": see ``master_key_source``).
    master_key_file: str = ""
    #: LEEWAY_PERSONAL_DATA_RETENTION_DAYS: erase customers idle this long (0: off).
    personal_data_retention_days: int = 0

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

        def secret(name: str) -> str:
            """NAME, or the contents of the file named by NAME_FILE."""
            value = env.get(name, "").strip()
            path = env.get(f"{name}_FILE", "").strip()
            if value and path:
                problems.append(f"{name} and {name}_FILE: set only one")
            if path:
                try:
                    return Path(path).read_text().strip()
                except OSError as error:
                    problems.append(f"{name}_FILE={path!r}: cannot read it ({error.strerror})")
            return value

        auth = choice("LEEWAY_AUTH", "off", ("required", "off"))
        keys_text = secret("LEEWAY_API_KEYS")
        settings = cls(
            grpc_address=text("LEEWAY_GRPC_ADDRESS", DEFAULT_ADDRESS),
            database_url=text("LEEWAY_DATABASE_URL", DEFAULT_DATABASE_URL),
            max_workers=int(number("LEEWAY_GRPC_MAX_WORKERS", 32, int, 1, 1024)),
            shutdown_grace_seconds=number("LEEWAY_SHUTDOWN_GRACE_SECONDS", 10.0, float, 0, 3600),
            log_level=choice("LEEWAY_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=choice("LEEWAY_LOG_FORMAT", "auto", ("auto", "json", "console")),
            log_flush_seconds=number("LEEWAY_LOG_FLUSH_SECONDS", 0.1, float, 0, 10),
            reflection=flag("LEEWAY_REFLECTION", True),
            gc_tuning=flag("LEEWAY_GC_TUNING", True),
            health_interval_seconds=number("LEEWAY_HEALTH_INTERVAL_SECONDS", 5.0, float, 0.1, 3600),
            expiry_interval_seconds=number("LEEWAY_EXPIRY_INTERVAL_SECONDS", 5.0, float, 0, 3600),
            create_tables=flag("LEEWAY_CREATE_TABLES", True),
            postgres_prepared_statements=flag("LEEWAY_POSTGRES_PREPARED_STATEMENTS", True),
            postgres_pool_size=int(number("LEEWAY_POSTGRES_POOL_SIZE", 10, int, 1, 500)),
            metrics_address=text("LEEWAY_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS),
            projections_metrics_address=text("LEEWAY_PROJECTIONS_METRICS_ADDRESS", DEFAULT_PROJECTIONS_METRICS_ADDRESS),
            keepalive_time_seconds=number("LEEWAY_GRPC_KEEPALIVE_TIME_SECONDS", 60.0, float, 1, 86400),
            keepalive_timeout_seconds=number("LEEWAY_GRPC_KEEPALIVE_TIMEOUT_SECONDS", 20.0, float, 1, 3600),
            max_connection_idle_seconds=number("LEEWAY_GRPC_MAX_CONNECTION_IDLE_SECONDS", 600.0, float, 1, 86400 * 7),
            max_connection_age_seconds=number("LEEWAY_GRPC_MAX_CONNECTION_AGE_SECONDS", 300.0, float, 1, 86400 * 7),
            max_connection_age_grace_seconds=number(
                "LEEWAY_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", 30.0, float, 0, 86400
            ),
            auth_required=auth == "required",
            jwt_algorithms=tuple(a.strip() for a in env.get("LEEWAY_JWT_ALGORITHMS", "").split(",") if a.strip()),
            jwt_secret=secret("LEEWAY_JWT_SECRET"),
            jwt_public_key=secret("LEEWAY_JWT_PUBLIC_KEY"),
            jwt_audience=text("LEEWAY_JWT_AUDIENCE", ""),
            jwt_issuer=text("LEEWAY_JWT_ISSUER", ""),
            jwt_leeway_seconds=number("LEEWAY_JWT_LEEWAY_SECONDS", 30.0, float, 0, 600),
            jwt_max_lifetime_seconds=number("LEEWAY_JWT_MAX_LIFETIME_SECONDS", 86400.0, float, 1, 366 * 86400),
            api_keys=tuple(e.strip() for e in keys_text.replace("\n", ",").split(",") if e.strip()),
            tls_cert_file=text("LEEWAY_TLS_CERT_FILE", ""),
            tls_key_file=text("LEEWAY_TLS_KEY_FILE", ""),
            tls_client_ca_file=text("LEEWAY_TLS_CLIENT_CA_FILE", ""),
            max_message_bytes=int(number("LEEWAY_GRPC_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, int, 1024, 64 * 1024 * 1024)),
            max_concurrent_rpcs=int(number("LEEWAY_GRPC_MAX_CONCURRENT_RPCS", 10_000, int, 1, 1_000_000)),
            max_deadline_seconds=number("LEEWAY_MAX_DEADLINE_SECONDS", 30.0, float, 0.1, 3600),
            rate_limit_per_second=number("LEEWAY_RATE_LIMIT_PER_SECOND", 50.0, float, 0, 1_000_000),
            rate_limit_burst=int(number("LEEWAY_RATE_LIMIT_BURST", 100, int, 1, 1_000_000)),
            auth_failure_per_second=number("LEEWAY_AUTH_FAILURE_PER_SECOND", 0.2, float, 0, 1_000_000),
            auth_failure_burst=int(number("LEEWAY_AUTH_FAILURE_BURST", 10, int, 1, 1_000_000)),
            auth_failure_max_peers=int(number("LEEWAY_AUTH_FAILURE_MAX_PEERS", 10_000, int, 1, 10_000_000)),
            batch_max=int(number("LEEWAY_BATCH_MAX", 128, int, 1, 10_000)),
            write_cache_size=int(number("LEEWAY_WRITE_CACHE_SIZE", 2000, int, 0, 1_000_000)),
            projections=choice("LEEWAY_PROJECTIONS", "subprocess", ("inprocess", "subprocess", "external")),
            projection_wait_seconds=number("LEEWAY_PROJECTION_WAIT_SECONDS", 5.0, float, 0, 600),
            projection_poll_seconds=number("LEEWAY_PROJECTION_POLL_SECONDS", 0.5, float, 0.01, 3600),
            max_follow_streams=int(number("LEEWAY_MAX_FOLLOW_STREAMS", 1000, int, 1, 1_000_000)),
            occur_time_max_age_days=int(number("LEEWAY_OCCUR_TIME_MAX_AGE_DAYS", 30, int, 1, 36_500)),
            customer_id_normalization=choice(
                "LEEWAY_CUSTOMER_ID_NORMALIZATION", "casefold", ("casefold", "trim", "exact")
            ),
            http_address=text("LEEWAY_HTTP_ADDRESS", DEFAULT_HTTP_ADDRESS),
            http_cors_origins=tuple(
                o.strip().rstrip("/") for o in env.get("LEEWAY_HTTP_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            master_key_file=text("LEEWAY_MASTER_KEY_FILE", ""),
            personal_data_retention_days=int(number("LEEWAY_PERSONAL_DATA_RETENTION_DAYS", 0, int, 0, 36_500)),
        )
        # Reflection is on by default only while authentication is off (quick start); say so to turn it on.
        if not env.get("LEEWAY_REFLECTION", "").strip() and settings.auth_required:
            settings = replace(settings, reflection=False)
        try:
            settings.authenticator()
        except SettingsError as error:
            problems.append(str(error))
        problems += settings._tls_problems()
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
        problems += settings._http_problems()
        if _enabled(settings.projections_metrics_address):
            host, sep, port = settings.projections_metrics_address.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                problems.append(
                    f"LEEWAY_PROJECTIONS_METRICS_ADDRESS={settings.projections_metrics_address!r}: must be HOST:PORT "
                    f"(e.g. {DEFAULT_PROJECTIONS_METRICS_ADDRESS}) or off"
                )
        try:
            settings.eventsourcing_env()
        except SettingsError as error:
            problems.append(str(error))
        if ":memory:" in settings.database_url and not env.get("LEEWAY_PROJECTIONS", "").strip():
            # The default (a child process) cannot read a private in-memory database: keep them in the server.
            settings = replace(settings, projections="inprocess")
        if settings.projections != "inprocess" and ":memory:" in settings.database_url:
            problems.append(
                f"LEEWAY_PROJECTIONS={settings.projections}: another process cannot read an in-memory SQLite "
                "database; use a file or PostgreSQL, or LEEWAY_PROJECTIONS=inprocess"
            )
        if problems:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems))
        return settings

    def master_key_source(self) -> MasterKeySource | None:
        """Where the master key of crypto-shredding comes from (issue 22): ``LEEWAY_MASTER_KEY_FILE`` if set;
        otherwise, on SQLite (the embedded/dev mode), a key generated once next to the database file (mode 0600,
        with a warning: whoever reads the data directory reads the key too); in memory, a random key for the
        process's life. On PostgreSQL without a key file: None (personal data is stored unencrypted, as before,
        and erasure is refused; the server warns at start)."""
        if self.master_key_file:
            return FileMasterKey(Path(self.master_key_file))
        env = self.eventsourcing_env()
        if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
            path = env["SQLITE_DBNAME"]
            if ":memory:" in path or path.startswith("file:"):
                return StaticMasterKey(secrets.token_bytes(32), "a random key for this process (in-memory database)")
            return GeneratedMasterKey(Path(path).with_name(Path(path).name + ".master-key"))
        return None

    def conventions(self) -> Conventions:
        """How the application reads requests (customer ids, occur_time's horizon)."""
        return Conventions(
            customer_ids=CustomerIdForm(self.customer_id_normalization),
            occur_time_max_age=timedelta(days=self.occur_time_max_age_days),
        )

    def authenticator(self) -> Authenticator:
        """The configured Authenticator (raises SettingsError naming every bad LEEWAY_JWT_* / LEEWAY_API_KEYS value)."""
        problems: list[str] = []
        jwt_config = None
        if self.jwt_algorithms or self.jwt_secret or self.jwt_public_key:
            algorithms = self.jwt_algorithms
            known = HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS
            if not algorithms:
                problems.append("LEEWAY_JWT_ALGORITHMS: required with a JWT key (e.g. RS256, EdDSA or HS256)")
            elif any(a not in known for a in algorithms):
                problems.append(f"LEEWAY_JWT_ALGORITHMS={','.join(algorithms)!r}: use only {', '.join(known)}")
            hmac_algs = [a for a in algorithms if a in HMAC_ALGORITHMS]
            if hmac_algs and len(hmac_algs) != len(algorithms):
                problems.append("LEEWAY_JWT_ALGORITHMS: do not mix HMAC (HS*) with public-key algorithms")
            key: str = ""
            if hmac_algs:
                key = self.jwt_secret
                if len(key.encode()) < 32:
                    problems.append("LEEWAY_JWT_SECRET: required for HS* and at least 32 bytes long")
            elif algorithms:
                key = self.jwt_public_key
                if "-----BEGIN PUBLIC KEY-----" not in key and "-----BEGIN CERTIFICATE-----" not in key:
                    problems.append("LEEWAY_JWT_PUBLIC_KEY(_FILE): a PEM public key is required for " + ",".join(algorithms))
            if not self.jwt_audience:
                problems.append("LEEWAY_JWT_AUDIENCE: required with JWT authentication")
            if not self.jwt_issuer:
                problems.append("LEEWAY_JWT_ISSUER: required with JWT authentication")
            jwt_config = JwtConfig(
                algorithms, key, self.jwt_audience, self.jwt_issuer, self.jwt_leeway_seconds, self.jwt_max_lifetime_seconds
            )
        keys = []
        for entry in self.api_keys:
            try:
                keys.append(ApiKey.parse(entry))
            except ValueError as error:
                problems.append(f"LEEWAY_API_KEYS: {error}")
        if self.auth_required and jwt_config is None and not keys:
            problems.append("LEEWAY_AUTH=required: configure LEEWAY_JWT_* and/or LEEWAY_API_KEYS (or LEEWAY_AUTH=off)")
        if problems:
            raise SettingsError("\n  ".join(problems))
        failures = AuthFailureLimiter(
            self.auth_failure_per_second, self.auth_failure_burst, max_peers=self.auth_failure_max_peers
        )
        return Authenticator(jwt_config=jwt_config, api_keys=keys, failures=failures)

    def _tls_problems(self) -> list[str]:
        problems = []
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append("LEEWAY_TLS_CERT_FILE and LEEWAY_TLS_KEY_FILE: set both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            problems.append("LEEWAY_TLS_CLIENT_CA_FILE: mutual TLS needs LEEWAY_TLS_CERT_FILE and LEEWAY_TLS_KEY_FILE")
        for name, path in (
            ("LEEWAY_TLS_CERT_FILE", self.tls_cert_file),
            ("LEEWAY_TLS_KEY_FILE", self.tls_key_file),
            ("LEEWAY_TLS_CLIENT_CA_FILE", self.tls_client_ca_file),
        ):
            if path and not Path(path).is_file():
                problems.append(f"{name}={path!r}: no such file")
        return problems

    def _http_problems(self) -> list[str]:
        problems = []
        if self.http_enabled:
            host, sep, port = self.http_address.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                problems.append(
                    f"LEEWAY_HTTP_ADDRESS={self.http_address!r}: must be HOST:PORT (e.g. {DEFAULT_HTTP_ADDRESS}) or off"
                )
        for origin in self.http_cors_origins:
            scheme, sep, rest = origin.partition("://")
            if origin != "*" and (scheme not in ("http", "https") or not sep or not rest or "/" in rest):
                problems.append(
                    f"LEEWAY_HTTP_CORS_ORIGINS: {origin!r} is not an origin: use scheme://host[:port] "
                    "(e.g. https://crm.example.com), comma-separated, or *"
                )
        return problems

    @property
    def http_enabled(self) -> bool:
        return self.http_address.lower() not in _OFF

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def metrics_enabled(self) -> bool:
        return _enabled(self.metrics_address)

    @property
    def projections_metrics_enabled(self) -> bool:
        return _enabled(self.projections_metrics_address)

    def grpc_options(self) -> list[tuple[str, int]]:
        """Keepalive and connection-age options for running behind a load balancer."""
        ms = lambda seconds: int(seconds * 1000)  # noqa: E731
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
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
                # A fixed number of connections, all opened at start (adapters/storegate.open_pools): a pool that
                # grows under a burst opens connections on callers' paths (tens of ms each, on a busy machine
                # up to ~100), and one that may double makes a replica's connection count hard to budget.
                "POSTGRES_POOL_SIZE": str(self.postgres_pool_size),
                "POSTGRES_MAX_OVERFLOW": "0",
                # How long one attempt waits for a pool connection. Short on purpose: the library retries an
                # operation up to 10 times, and between attempts the store gate (storegate.py) can stop a call
                # at once when the database is down instead of letting it wait out the caller's deadline.
                "POSTGRES_CONNECT_TIMEOUT": "1",
                # Not on every checkout: storegate.check_idle_connections checks connections that sat idle.
                "POSTGRES_PRE_PING": "n",
                # The library's recorder, inserting each batch in one statement (adapters/pgrecorder.py).
                "APPLICATION_RECORDER_TOPIC": "leeway.adapters.pgrecorder:LeewayPostgresRecorder",
                "CREATE_TABLE": create,
                # Leeway's own key (storegate.tune_factory): "n" behind PgBouncer in transaction mode.
                "POSTGRES_PREPARED_STATEMENTS": "y" if self.postgres_prepared_statements else "n",
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


def _enabled(address: str) -> bool:
    """False for an address setting that says off."""
    return address.lower() not in ("off", "none", "false", "0", "")
