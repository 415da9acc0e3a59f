"""The HTTP/JSON front's server: uvicorn, running in the gRPC server's event loop (no thread of its own).

Its socket is bound when the server is built (``create_server``), like the gRPC port, so that a port in use is a
start-up error and port 0 is known before serving. ``start`` and ``stop`` run on the event loop; ``stop`` stops
accepting, lets calls in flight finish for the shutdown grace (following streams end at once: the log head is
closed first) and then cancels what is left.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("leeway.http")

#: Seconds an idle keep-alive connection is kept open (a CRM's connection pool reuses it meanwhile).
KEEP_ALIVE_SECONDS = 30
#: Seconds a connection has to send a request's headers, from its opening (after TLS) or from the first byte of
#: its next request.
HEADERS_SECONDS = 10.0


def bind(address: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` (``[::]:8080`` for IPv6; ``::`` takes IPv4 too). Raises OSError.

    Made with protocol IPPROTO_TCP (not 0, as ``socket.create_server`` makes it): asyncio turns Nagle's algorithm
    off only on connections of such sockets, and with it on, every answer on a kept-alive connection after the
    first waited ~40 ms for the client's delayed ACK (a response is written in several pieces)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, int(port), type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            dualstack = host in ("::", "") and socket.has_dualstack_ipv6()
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack else 1)
        sock.bind(sockaddr)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with a deadline for a request's headers: a connection that opens
    and sends nothing, or trickles its headers (slow loris), is closed after ``headers_seconds`` instead of being
    held for ever (uvicorn times out an idle connection only after a first request)."""

    headers_seconds = HEADERS_SECONDS
    _headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_timer is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._headers_timer = self.loop.call_later(self.headers_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _too_slow(self) -> None:
        self._headers_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class _ToStructlog(logging.Handler):
    """uvicorn's own log lines (connection errors, the shutdown's cancellations ...) as structured log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING else "info"
        fields: dict[str, Any] = {"message": record.getMessage(), "logger": record.name}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        getattr(log, level)("http.server", **fields)


def _route_uvicorn_logs() -> None:
    logger = logging.getLogger("uvicorn")
    if not any(isinstance(h, _ToStructlog) for h in logger.handlers):
        logger.addHandler(_ToStructlog())
    logger.propagate = False


class HttpFront:
    """uvicorn serving ``application`` on an already bound socket."""

    def __init__(
        self,
        application: Any,
        sock: socket.socket,
        *,
        max_connections: int,
        tls: tuple[str, str, str] | None = None,
    ):
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        cert, key, client_ca = tls or ("", "", "")
        _route_uvicorn_logs()
        self.config = uvicorn.Config(
            application,
            http=_Protocol,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,  # every call has its own "rpc" line already
            proxy_headers=False,  # the peer is the TCP peer, as over gRPC (the failed-authentication limit keys on it)
            server_header=False,
            # Beyond it new connections get 503 at once (LEEWAY_GRPC_MAX_CONCURRENT_RPCS bounds gRPC's calls alike).
            limit_concurrency=max_connections,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            ssl_certfile=cert or None,
            ssl_keyfile=key or None,
            ssl_ca_certs=client_ca or None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
        )
        self.server = uvicorn.Server(self.config)
        self._task: asyncio.Task[None] | None = None

    @property
    def tls(self) -> bool:
        return bool(self.config.ssl_certfile)

    async def start(self) -> None:
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=[self.socket])
        self._task = asyncio.get_running_loop().create_task(self.server.main_loop(), name="leeway-http")

    async def stop(self, grace: float) -> None:
        """Stops accepting, waits up to ``grace`` seconds for the calls in flight, then cancels the rest."""
        if self._task is None:
            self.socket.close()
            return
        self.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]  # asyncio.timeout takes a float
        self.server.should_exit = True
        await self._task
        await self.server.shutdown(sockets=[self.socket])
