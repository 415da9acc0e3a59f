"""The ``leeway`` command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import structlog

from .cli_audit import add_commands as add_audit_commands
from .cli_keys import add_commands as add_key_commands
from .cli_report import add_report_command
from .listening import ListenError, check_listen
from .logs import capture_native_stderr, configure_logging, flush_logs, json_logging, renders_json
from .runtime import tune_garbage_collector, watch_gc_pauses
from .settings import Settings, SettingsError


def _config_error(message: str, fmt: str | None = None, event: str = "config.invalid", **fields: Any) -> int:
    """A configuration error: one line on stderr (a JSON line when the logs are JSON lines); exit status 2."""
    fmt = fmt if fmt is not None else os.environ.get("LEEWAY_LOG_FORMAT", "auto").strip().lower()
    if renders_json(fmt):
        configure_logging("info", "json", 0)
        structlog.get_logger("leeway").error(event, message=message, **fields)
        flush_logs()
    else:
        print(f"leeway: {message}", file=sys.stderr)
    return 2


def _settings_error(error: SettingsError) -> int:
    problems = [line.strip() for line in str(error).splitlines()[1:] if line.strip()] or [str(error)]
    if renders_json(os.environ.get("LEEWAY_LOG_FORMAT", "auto").strip().lower()):
        return _config_error("invalid configuration: " + "; ".join(problems), problems=problems)
    print(f"leeway: {error}", file=sys.stderr)  # one problem a line, as always
    return 2


def _listen_addresses(settings: Settings) -> list[tuple[str, str, str]]:
    """(address, what, setting) of every listener `leeway serve` will open. A new listener adds its row here."""
    addresses = [(settings.grpc_address, "gRPC", "LEEWAY_GRPC_ADDRESS")]
    if settings.metrics_enabled:
        addresses.append((settings.metrics_address, "metrics", "LEEWAY_METRICS_ADDRESS"))
    if settings.http_enabled:
        addresses.append((settings.http_address, "HTTP", "LEEWAY_HTTP_ADDRESS"))
    return addresses


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        return _settings_error(error)
    if renders_json(settings.log_format):
        capture_native_stderr()  # gRPC core's own lines and the projections child's, as JSON lines too
    configure_logging(settings.log_level, settings.log_format, settings.log_flush_seconds)
    log = structlog.get_logger("leeway")
    from .envcheck import warn_unknown_variables
    from . import tracing
    from .adapters.keystore import KeyStoreError
    from .domain.errors import Unavailable
    from .server import create_server

    warn_unknown_variables(os.environ, log)
    try:
        traced = tracing.configure_from_env()  # off unless OTEL_* say otherwise (README, "Observability")
    except tracing.TracingError as error:
        return _config_error(str(error), settings.log_format, "config.tracing")
    try:
        for address, what, setting in _listen_addresses(settings):
            check_listen(address, what, setting)
        server, port = create_server(settings)
    except ListenError as error:
        return _config_error(str(error), settings.log_format, "config.cannot_listen", address=error.address)
    except KeyStoreError as error:  # a wrong master key, or none for a database that has a key store
        return _config_error(str(error), settings.log_format, "config.master_key")
    except Unavailable as error:
        log.error("startup.store_unavailable", database=settings.redacted_url(), error=str(error.__cause__ or error))
        return 1
    except OSError as error:
        log.error("startup.bind_failed", address=settings.grpc_address, error=str(error))
        return 1
    try:
        server.app.ping()
    except Unavailable as error:
        hint = "" if settings.create_tables else " (LEEWAY_CREATE_TABLES=false: run `leeway migrate` first)"
        log.error(
            "startup.store_unavailable",
            database=settings.redacted_url(),
            error=str(error.__cause__ or error) + hint,
        )
        server.app.close()
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("shutdown.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except ListenError as error:  # taken between the check and the bind
        server.stop(0)
        return _config_error(str(error), settings.log_format, "config.cannot_listen", address=error.address)
    if settings.gc_tuning:
        tune_garbage_collector()
    # Every thread stops while the cyclic collector runs: a long pause shows in every call's latency.
    watch_gc_pauses(lambda generation, seconds, collected: log.warning(
        "gc.pause", generation=generation, ms=round(seconds * 1000, 1), collected=collected))
    host = settings.grpc_address.rpartition(":")[0]
    metrics = f"{settings.metrics_address.rpartition(':')[0]}:{server.metrics_port}" if server.metrics_port else "off"
    if not settings.auth_required:
        log.warning(
            "security.off",
            message="AUTHENTICATION IS OFF: every caller may do everything. Fine for a local try-out only; "
            "set LEEWAY_AUTH=required with LEEWAY_JWT_* or LEEWAY_API_KEYS (README, Security).",
        )
    if not settings.tls_enabled:
        log.warning("security.plaintext", message="TLS is off: use LEEWAY_TLS_CERT_FILE/KEY_FILE outside a trusted network")
    log.info(
        "serving",
        address=f"{host}:{port}",
        metrics=metrics,
        database=settings.redacted_url(),
        reflection=settings.reflection,
        auth="required" if settings.auth_required else "off",
        tls="mutual" if settings.tls_client_ca_file else ("on" if settings.tls_enabled else "off"),
        gc_tuning=settings.gc_tuning,
        http=f"{settings.http_address.rpartition(':')[0]}:{server.http.port}" if server.http is not None else "off",
        cors=",".join(settings.http_cors_origins) or "off",
        tracing="on" if traced else "off",
    )
    flush_logs()  # the start-up lines, at once: supervisors and operators wait for "serving"
    # The HTTP port first: a supervisor that waits for --port-file finds both.
    if args.http_port_file and server.http is not None:
        Path(args.http_port_file).write_text(f"{server.http.port}\n")
    if args.port_file:
        Path(args.port_file).write_text(f"{port}\n")
    _wait_in_main_thread(stop)
    log.info("shutdown.start", grace_seconds=settings.shutdown_grace_seconds)
    server.stop()
    tracing.shutdown()  # exports the spans still buffered
    log.info("shutdown.done")
    return 0


def _settings(**overrides: str) -> Settings | None:
    try:
        return Settings.from_env({**os.environ, **overrides})
    except SettingsError as error:
        _settings_error(error)
        return None


def _migrate(args: argparse.Namespace) -> int:
    """Creates the event store's tables (for deployments whose service role may not create tables) and notes customer
    ids stored under older spellings (application/customers.py)."""
    settings = _settings(LEEWAY_AUTH="off")  # serves nothing: credentials settings do not matter here
    if settings is None:
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.log_flush_seconds)
    log = structlog.get_logger("leeway")
    from dataclasses import replace

    from .domain.errors import Unavailable
    from .server import build_application

    from eventsourcing.persistence import PersistenceError

    from .projections.store import open_view_store

    try:
        app = build_application(replace(settings, create_tables=True))
    except Unavailable as error:
        log.error("migrate.store_unavailable", database=settings.redacted_url(), error=str(error.__cause__ or error))
        return 1
    try:
        # The read models' tables and their tracking table too (the service may not create them either).
        open_view_store(dict(app.env)).datastore.close()
        # Customer ids stored before they were normalised (the server does this at start-up too).
        app.scan_customer_spellings()
    except (PersistenceError, Unavailable) as error:
        log.error("migrate.store_unavailable", database=settings.redacted_url(), error=str(error))
        return 1
    finally:
        app.close()
    log.info("migrate.done", database=settings.redacted_url())
    return 0


def _health(args: argparse.Namespace) -> int:
    """Asks a running server's grpc.health.v1 service; exit 0 only if it answers SERVING (a container HEALTHCHECK).

    TLS is used when the server's settings say so (LEEWAY_TLS_CERT_FILE, as in the container the check runs in) or
    any TLS option is given; mutual TLS with a client certificate and key. Exit 1: not serving or not reachable;
    2: the check itself is misconfigured (a file missing, a client certificate without its key)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .healthcheck import HealthTls, HealthTlsError, local_target

    address = args.address or os.environ.get("LEEWAY_GRPC_ADDRESS", "").strip()
    if not address:
        settings = _settings()
        if settings is None:
            return 2
        address = settings.grpc_address
    target = local_target(address)
    try:
        tls = HealthTls.from_options(args, os.environ, target)
    except HealthTlsError as error:
        print(f"leeway health: {error}", file=sys.stderr)
        return 2
    try:
        channel = tls.channel(target) if tls is not None else grpc.insecure_channel(target)
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as error:
        hint = tls.hint(error) if tls is not None else ""
        print(f"leeway health: {target}: {error.code().name}: {error.details()}{hint}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}" + (f" ({tls.describe()})" if tls is not None else ""))
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _api_key(args: argparse.Namespace) -> int:
    """Makes a new API key; prints it once, and the LEEWAY_API_KEYS entry (which holds only its hash)."""
    from .auth import ROLES, hash_api_key, new_api_key

    roles = [r for r in args.roles.split("+") if r]
    if not roles or any(r not in ROLES for r in roles):
        print(f"leeway api-key: roles are {'+'.join(ROLES)} (join several with +)", file=sys.stderr)
        return 2
    key = new_api_key()
    entry = f"{args.name}:{'+'.join(roles)}:{hash_api_key(key)}" + (f":{args.teams}" if args.teams else "")
    print(f"key (give it to the client, shown only now): {key}")
    print(f"LEEWAY_API_KEYS entry (for the server): {entry}")
    return 0


def _dev_certs(args: argparse.Namespace) -> int:
    """A local CA, a server certificate (localhost, 127.0.0.1) and a client certificate, to try (m)TLS."""
    from .devcerts import write_dev_certs

    paths = write_dev_certs(Path(args.directory), client_name=args.client)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(
        "\nserver: LEEWAY_TLS_CERT_FILE={server_cert} LEEWAY_TLS_KEY_FILE={server_key} "
        "LEEWAY_TLS_CLIENT_CA_FILE={ca_cert}".format(**paths)
    )
    return 0


def _projections(args: argparse.Namespace) -> int:
    """`leeway projections status|rebuild [NAME]|run`: the read models built from the event log."""
    settings = _settings(LEEWAY_AUTH="off")  # serves nothing: credentials settings do not matter here
    if settings is None:
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.log_flush_seconds)
    from eventsourcing.persistence import PersistenceError

    from .domain.errors import Unavailable
    from .projections.runner import Projections
    from .projections.views import PROJECTIONS
    from .server import build_application

    names = tuple(getattr(args, "names", None) or ())
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        known = ", ".join(PROJECTIONS)
        print(f"leeway projections: unknown projection {', '.join(unknown)} (known: {known})", file=sys.stderr)
        return 2
    try:
        app = build_application(settings)
    except (Unavailable, PersistenceError) as error:
        return _projections_failed(settings, error)
    projections = None
    try:
        projections = Projections(app, names=names)
        if args.action == "status":
            return _projections_status(projections)
        if args.action == "rebuild":
            return _projections_rebuild(projections)
        return _projections_run(
            projections,
            settings.projection_poll_seconds,
            wake_on_stdin=getattr(args, "wake_on_stdin", False),
            gc_tuning=settings.gc_tuning,
            metrics_address=settings.projections_metrics_address if settings.projections_metrics_enabled else "",
        )
    except (Unavailable, PersistenceError) as error:
        return _projections_failed(settings, error)
    finally:
        if projections is not None:
            projections.close()
        app.close()


def _projections_failed(settings: Settings, error: BaseException) -> int:
    cause = str(error.__cause__ or error)
    if json_logging():
        structlog.get_logger("leeway").error("projections.store_unavailable", database=settings.redacted_url(), error=cause)
    else:
        print(f"leeway projections: the store is unavailable: {cause}", file=sys.stderr)
    return 1


def _projections_status(projections: Any) -> int:
    print(f"{'projection':<12} {'position':>10} {'log head':>10} {'lag':>8}  error")
    for item in projections.status():
        print(f"{item.name:<12} {item.position:>10} {item.head:>10} {item.lag:>8}  {item.error}")
    return 0


def _projections_rebuild(projections: Any) -> int:
    from tqdm import tqdm

    head = projections.head()
    for name in projections.runners:
        with tqdm(total=head, desc=f"rebuild {name}", unit="ev", unit_scale=True, file=sys.stderr) as bar:
            started = time.perf_counter()
            done = projections.rebuild(name, progress=bar.update)
            seconds = time.perf_counter() - started
        rate = f"{done / seconds:,.0f} events/s" if seconds > 0 else ""
        print(f"leeway projections: rebuilt {name} from {done} events in {seconds:.1f} s {rate}", file=sys.stderr)
    return 0


def _projections_run(
    projections: Any,
    poll_seconds: float,
    *,
    wake_on_stdin: bool = False,
    gc_tuning: bool = False,
    metrics_address: str = "",
) -> int:
    """Keeps every projection up to date until SIGTERM / SIGINT (a separate process beside `leeway serve`), or,
    with ``--wake-on-stdin`` (the child `leeway serve` starts with LEEWAY_PROJECTIONS=subprocess), until stdin
    ends; every byte read wakes the runners. Serves /metrics, /livez and /readyz on ``metrics_address``
    (LEEWAY_PROJECTIONS_METRICS_ADDRESS) unless it is empty: a standalone run that cannot bind it fails; the
    child of `leeway serve` runs on without (its server exports the projections' lag too) and says so."""
    from .observability import ProjectionMetrics, serve_http
    from .projections.child import listen_for_wakes

    log = structlog.get_logger("leeway.projections")
    http = None
    if metrics_address:
        metrics = ProjectionMetrics(projections.status)
        try:
            http = serve_http(metrics_address, metrics.registry, metrics.ready)
        except OSError as error:
            if not wake_on_stdin:
                print(f"leeway projections: cannot serve metrics on {metrics_address}: {error}", file=sys.stderr)
                return 1
            log.warning("projections.metrics_unavailable", address=metrics_address, error=str(error))
        else:
            host = metrics_address.rpartition(":")[0]
            log.info("projections.metrics_serving", address=f"{host}:{http.server_port}", pid=os.getpid())
            flush_logs()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    projections.start(poll_seconds)
    if gc_tuning:
        tune_garbage_collector()
    if wake_on_stdin:
        # A child of `leeway serve`: Ctrl-C in a terminal reaches the whole process group, but the server decides
        # when its child stops (it closes our stdin).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        listen_for_wakes(sys.stdin.buffer, projections.wake, projections.hurry, stop)
    if json_logging():
        structlog.get_logger("leeway").info("projections.running", projections=list(projections.runners), child=wake_on_stdin)
    else:
        print(f"leeway projections: running {', '.join(projections.runners)}", file=sys.stderr)
    _wait_in_main_thread(stop)
    if http is not None:
        http.shutdown()
        http.server_close()
    return 0


def _wait_in_main_thread(stop: threading.Event, tick: float = 0.2) -> None:
    """Waits for ``stop`` (set by the signal handlers), waking every ``tick`` seconds. The kernel may hand SIGTERM
    to any thread that does not block it; CPython then only flags it, and runs the Python handler when the main
    thread next runs Python code. A main thread blocked in ``Event.wait()`` without a timeout would never do so:
    the process ignored that SIGTERM (seen in CI; `tests/e2e/test_operations.py` sends one to another thread)."""
    while not stop.wait(tick):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="leeway", description="Leeway: empowered customer service budgets over gRPC.")
    parser.add_argument("--version", action="version", version=f"leeway {version('leeway')}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the gRPC service (settings from LEEWAY_* environment variables)")
    serve.add_argument("--port-file", help="write the bound port to this file once serving (useful with port 0)")
    serve.add_argument(
        "--http-port-file",
        help="write the HTTP/JSON (Connect) front's bound port to this file once serving (not written when "
        "LEEWAY_HTTP_ADDRESS=off)",
    )
    serve.set_defaults(func=_serve)
    migrate = commands.add_parser(
        "migrate", help="create the event store's tables and exit (when the service runs with LEEWAY_CREATE_TABLES=false)"
    )
    migrate.set_defaults(func=_migrate)
    health = commands.add_parser("health", help="check a running server's gRPC health; exit 0 only if SERVING")
    health.add_argument("--address", default="", help="HOST:PORT (default: LEEWAY_GRPC_ADDRESS)")
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    tls = health.add_argument_group(
        "TLS", "used when LEEWAY_TLS_CERT_FILE is set (the server's own settings) or any of these is given"
    )
    tls.add_argument("--tls", action="store_true", help="use TLS (trusting the system's CAs unless --ca-file)")
    tls.add_argument("--plaintext", action="store_true", help="no TLS, whatever the settings say")
    tls.add_argument(
        "--ca-file", default=None,
        help="PEM of the CA that signed the server's certificate (default: LEEWAY_HEALTH_CA_FILE, else the CA in "
        "LEEWAY_TLS_CERT_FILE's chain if it holds one, else the system's)",
    )
    tls.add_argument(
        "--cert-file", default=None,
        help="client certificate (PEM) for a mutual-TLS server (default: LEEWAY_HEALTH_CERT_FILE)",
    )
    tls.add_argument("--key-file", default=None, help="its private key (default: LEEWAY_HEALTH_KEY_FILE)")
    tls.add_argument(
        "--server-name", default=None,
        help="the name to check the server's certificate against (default: LEEWAY_HEALTH_SERVER_NAME, else the "
        "address, else a name of LEEWAY_TLS_CERT_FILE's certificate when it does not cover the address)",
    )
    health.set_defaults(func=_health)
    add_audit_commands(commands)  # export, verify, checkpoint
    add_report_command(commands)
    api_key = commands.add_parser("api-key", help="make an API key for a service account (prints the key and its entry)")
    api_key.add_argument("name", help="the service account's name, e.g. crm-main")
    api_key.add_argument("roles", help="roles joined with +, e.g. crm or supervisor+auditor")
    api_key.add_argument("--teams", default="", help="teams joined with + (for supervisor keys)")
    api_key.set_defaults(func=_api_key)
    dev_certs = commands.add_parser("dev-certs", help="make a local CA and server/client certificates to try mTLS")
    dev_certs.add_argument("directory", help="where to write the PEM files")
    dev_certs.add_argument("--client", default="leeway-client", help="the client certificate's common name")
    dev_certs.set_defaults(func=_dev_certs)
    projections = commands.add_parser("projections", help="read models built from the event log: status, rebuild, run")
    actions = projections.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="each projection's position in the log and how far it lags")
    rebuild = actions.add_parser("rebuild", help="empty read models and replay the whole log into them (progress bar)")
    rebuild.add_argument("names", nargs="*", help="projections to rebuild (default: all)")
    run = actions.add_parser("run", help="run the projections in this process (with LEEWAY_PROJECTIONS=external on serve)")
    run.add_argument(
        "--wake-on-stdin", action="store_true",
        help="wake on every byte read from stdin and stop at its end (how `leeway serve` runs its child)",
    )
    projections.set_defaults(func=_projections)
    add_key_commands(commands)  # issue 22: `leeway keys`
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
