"""The ``leeway`` command."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import structlog

from .logs import configure_logging
from .settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"leeway: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("leeway")
    from .domain.errors import Unavailable
    from .server import create_server

    try:
        server, port = create_server(settings)
    except Unavailable as error:
        log.error("startup.store_unavailable", database=settings.redacted_url(), error=str(error.__cause__ or error))
        return 1
    except OSError as error:
        log.error("startup.bind_failed", address=settings.grpc_address, error=str(error))
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("shutdown.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    host = settings.grpc_address.rpartition(":")[0]
    log.info("serving", address=f"{host}:{port}", database=settings.redacted_url(), reflection=settings.reflection)
    if args.port_file:
        Path(args.port_file).write_text(f"{port}\n")
    stop.wait()
    log.info("shutdown.start", grace_seconds=settings.shutdown_grace_seconds)
    server.stop()
    log.info("shutdown.done")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="leeway", description="Leeway: empowered customer service budgets over gRPC.")
    parser.add_argument("--version", action="version", version=f"leeway {version('leeway')}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the gRPC service (settings from LEEWAY_* environment variables)")
    serve.add_argument("--port-file", help="write the bound port to this file once serving (useful with port 0)")
    serve.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
