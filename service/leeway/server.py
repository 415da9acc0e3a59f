"""Composition root: builds the application and the gRPC server from settings."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1.health import aio as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from .application import LeewayApplication
from .application.commands import (
    CloseBudget,
    Command,
    DecideAction,
    DocumentWin,
    ExpireAction,
    ExpiryResult,
    RecordAction,
    RecordResult,
    ReverseAction,
)
from .auth import RateLimiter
from .listening import listen_error
from .grpc_api.front import Front, LogHead
from .grpc_api.interceptors import AuthInterceptor
from .observability import Metrics, ServerInterceptor
from .domain.errors import Unavailable
from .domain.errors import LeewayError
from .grpc_api.servicers import SERVICE_NAMES, add_services
from .grpc_api.privacy_servicer import add_privacy_service
from .application.privacy import Privacy
from .application.insights import Insights
from .projections.child import ProjectionProcess
from .projections.runner import Projections
from .adapters import storegate
from .adapters.storegate import StoreGate
from .adapters.keystore import KeyStoreError
from .settings import Settings
from .runtime import name_os_thread
from .http_api.connect import create_application
from .http_api.front import HttpFront, bind

log = structlog.get_logger("leeway.server")

#: Health service name for liveness probes: SERVING until shutdown, even while the event store is down.
LIVENESS_SERVICE = "liveness"
#: How often following StreamEvents calls look at the log head for other replicas' commits (this replica's own
#: commits wake them at once).
FOLLOW_POLL_SECONDS = 0.2
#: Retention (issue 22): the first sweep a minute after start, then one an hour.
RETENTION_FIRST_SWEEP_SECONDS = 60.0
RETENTION_SWEEP_SECONDS = 3600.0
RETENTION_MAX_ROUNDS = 100
#: Pending approvals expired per store round before checking for shutdown.
EXPIRY_BATCH = 100

def build_application(settings: Settings, *, read_only: bool = False) -> LeewayApplication:
    """The application the settings describe. ``read_only`` (the audit tools: export, checkpoint): it writes
    nothing, so a database with a key store may be read without the master key (sealed fields read as sealed)."""
    settings.prepare()
    master_key = settings.master_key_source()
    if master_key is None:
        log.warning("privacy.not_encrypted", hint="set LEEWAY_MASTER_KEY_FILE: without it personal data is stored "
                    "unencrypted and cannot be erased (README: Personal data)")
    app = LeewayApplication(
        env=settings.eventsourcing_env(),
        batch_max=settings.batch_max,
        write_cache_size=settings.write_cache_size,
        conventions=settings.conventions(),
        master_key=master_key,
    )
    if master_key is None and not read_only and app.key_store_found():
        # Without its master key the service would store personal data in clear and miss the customers' keyed
        # ledgers (their caps would start again from zero): refuse, as for a wrong master key.
        app.close()
        raise KeyStoreError(
            "this database has a key store (personal data encrypted, customer ledgers named by keyed ids): set "
            "LEEWAY_MASTER_KEY_FILE to its master key"
        )
    return app


@dataclass(eq=False, repr=False)
class LeewayServer:
    """The running service: the asyncio gRPC server (on its own event-loop thread), health reporting and the
    application behind them. Its methods are called from ordinary threads (the CLI's main thread, tests)."""

    settings: Settings
    app: LeewayApplication
    loop: asyncio.AbstractEventLoop
    grpc_server: grpc.aio.Server
    health: health_async.HealthServicer
    metrics: Metrics
    front: Front
    head: LogHead
    projections: Projections | None = None
    #: PostgreSQL only: probes the database directly and makes store calls fail fast while it is away.
    gate: StoreGate | None = None
    #: LEEWAY_PROJECTIONS=subprocess: the child process that runs the projections.
    projection_process: ProjectionProcess | None = None
    #: The HTTP/JSON (Connect) front, in the same event loop (None with LEEWAY_HTTP_ADDRESS=off).
    http: HttpFront | None = None
    #: Erasures and retention (issue 22).
    privacy: Privacy | None = None

    def __post_init__(self) -> None:
        if self.gate is not None:
            self.gate.on_change = self._store_changed
        self.metrics_port: int | None = None
        self._metrics_http: Any = None
        # Set when the server stops: background tasks end.
        self._stopping = threading.Event()
        self._terminated = threading.Event()
        #: The serving status last published to the health service, and the lock that orders publications: a
        #: status is published when it changes, not every interval (each publication wakes every Watch stream).
        self._published: int | None = None
        self._publish_lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch_store, name="leeway-health", daemon=True)
        self._expirer = threading.Thread(target=self._expire_holds, name="leeway-expiry", daemon=True)
        self._retention = threading.Thread(target=self._sweep_retention, name="leeway-retention", daemon=True)

    def _on_loop(self, coroutine: Any, timeout: float | None = None) -> Any:
        """Runs ``coroutine`` on the server's event loop and waits for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        # Before serving: customer ids stored under older spellings than their keys count from the first request.
        self.app.scan_customer_spellings()
        self._update_health()
        if self.settings.metrics_enabled:
            host, _, port = self.settings.metrics_address.rpartition(":")
            try:
                self._metrics_http, _thread = start_http_server(int(port), addr=host, registry=self.metrics.registry)
            except OSError as error:
                raise listen_error(self.settings.metrics_address, "metrics", "LEEWAY_METRICS_ADDRESS", error) from None
            self.metrics_port = self._metrics_http.server_port
        if self.projections is not None and self.settings.projections == "inprocess":
            self.projections.start(self.settings.projection_poll_seconds)
        if self.projection_process is not None:
            self.projection_process.start()
            self.app.save_listeners.append(self.projection_process.wake)
        self.app.save_listeners.append(self.head.nudge)
        self._on_loop(self.grpc_server.start())
        if self.http is not None:
            self._on_loop(self.http.start())
        self._watcher.start()
        if self.settings.expiry_interval_seconds > 0:
            self._expirer.start()
        if self.settings.personal_data_retention_days > 0 and self.privacy is not None:
            self._retention.start()

    def _sweep_retention(self) -> None:
        """Erases customers idle for LEEWAY_PERSONAL_DATA_RETENTION_DAYS (``Privacy.sweep_retention``): a minute
        after start, then hourly. Every replica may run it: each erasure is idempotent."""
        name_os_thread()
        assert self.privacy is not None
        wait = RETENTION_FIRST_SWEEP_SECONDS
        while not self._stopping.wait(wait):
            wait = RETENTION_SWEEP_SECONDS
            try:
                for _ in range(RETENTION_MAX_ROUNDS):  # 100 subjects a round; bounded, whatever happens
                    if self._stopping.is_set() or not self.privacy.sweep_retention(
                        self.settings.personal_data_retention_days
                    ):
                        break
            except LeewayError as error:
                log.warning("retention.skipped", reason=error.reason, error=error.message)
            except Exception:
                log.exception("retention.error")

    def _expire_holds(self) -> None:
        """Expires pending approvals past their timeout, without a client asking. Several replicas may run
        this at once: each expiry is an idempotent command (request_id ``expire:<action_id>``)."""
        name_os_thread()
        while not self._stopping.wait(self.settings.expiry_interval_seconds):
            try:
                expired = 0
                while not self._stopping.is_set():
                    batch = self.app.expire_due(limit=EXPIRY_BATCH)
                    expired += batch
                    if batch < EXPIRY_BATCH:
                        break
            except LeewayError as error:
                log.warning("expiry.skipped", reason=error.reason, error=error.message)
            except Exception:
                log.exception("expiry.error")
            else:
                if expired:
                    log.info("expiry.done", expired=expired)

    async def _set_all(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        # Liveness: SERVING while the process runs, whatever the event store does (a liveness probe that
        # failed with the database would restart every replica during a database outage).
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    def _update_health(self) -> bool:
        if self.gate is not None:
            serving = self.gate.probe()  # its own connection with short timeouts: never stuck behind the pool
        else:
            try:
                self.app.ping()
                serving = True
            except Unavailable:
                serving = False
        self._store_changed(serving)
        return serving

    def _store_changed(self, serving: bool) -> None:
        """Called from the health and gate threads: the health service is updated on the event loop."""
        if self._stopping.is_set():
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        with self._publish_lock:  # one order of publications for the health and gate threads
            if status != self._published:
                self._published = status
                asyncio.run_coroutine_threadsafe(self._set_all(status), self.loop)
        self.metrics.store_up.set(1 if serving else 0)

    def _watch_store(self) -> None:
        name_os_thread()
        serving = True
        while not self._stopping.wait(self.settings.health_interval_seconds):
            now_serving = self._update_health()
            if now_serving != serving:
                log.warning("health.changed", serving=now_serving)
                serving = now_serving

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING first, new calls refused, in-flight calls get ``grace`` seconds to
        finish (following streams end at once), then the writer drains its queue and the store closes."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.gate is not None:
            self.gate.stop()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace

        async def shut() -> None:
            await self.health.enter_graceful_shutdown()
            await self.head.close()
            # Both fronts stop accepting at once and drain their calls in flight for the same grace.
            await asyncio.gather(
                self.grpc_server.stop(grace), *([self.http.stop(grace)] if self.http is not None else [])
            )

        try:
            self._on_loop(shut())
        finally:
            self.front.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._terminated.set()
        if self._expirer.is_alive():
            self._expirer.join(timeout=max(grace, 1.0))
        if self.projection_process is not None:
            self.projection_process.stop()
        if self.projections is not None:
            self.projections.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self.app.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """True once the server has stopped (False if ``timeout`` passed first)."""
        return self._terminated.wait(timeout)


def _event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop running in its own daemon thread ("leeway-grpc"): the asyncio server lives there."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        name_os_thread()
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()

    threading.Thread(target=run, name="leeway-grpc", daemon=True).start()
    started.wait()
    return loop


def create_server(settings: Settings | None = None, app: LeewayApplication | None = None) -> tuple[LeewayServer, int]:
    """Builds (but does not start) the server; returns it and the port it is bound to (use port 0 in tests)."""
    settings = settings or Settings.from_env()
    app = app or build_application(settings)
    loop = _event_loop()
    try:
        return asyncio.run_coroutine_threadsafe(_build(settings, app, loop), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise


async def _build(settings: Settings, app: LeewayApplication, loop: asyncio.AbstractEventLoop) -> tuple[LeewayServer, int]:
    """The server, built on its event loop (grpc.aio binds a server to the loop it is made on)."""
    metrics = Metrics()
    metrics.watch_pending(app.pending_counts)
    metrics.watch_writer(app)
    app.commit_listeners.append(_domain_metrics(metrics))
    front = Front(app, read_threads=settings.max_workers)
    head = LogHead(front, loop, poll_seconds=FOLLOW_POLL_SECONDS)
    authz = AuthInterceptor(
        front,
        settings.authenticator(),
        required=settings.auth_required,
        reflection=settings.reflection,
        limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        max_deadline_seconds=settings.max_deadline_seconds,
    )
    server = grpc.aio.server(
        # Metrics outermost, so that refused calls are counted too.
        interceptors=[ServerInterceptor(metrics), authz],
        options=settings.grpc_options(),
        # Calls open at once, idle streams included (each is a coroutine, not a thread); beyond it grpc answers
        # RESOURCE_EXHAUSTED at once.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    projections = Projections(app)
    gate = storegate.install(app, projections.store.datastore)
    if not await loop.run_in_executor(None, storegate.open_pools, app.recorder.datastore, projections.store.datastore):
        log.warning("postgres.pool_not_full", detail="the database did not give every pooled connection in time; "
                    "the pools go on filling in the background")
    metrics.watch_projections(projections.status)
    insights = Insights(projections, wait_seconds=settings.projection_wait_seconds, clock=app.clock, subjects=app)
    servicers = add_services(server, front, insights, head, metrics, max_follow_streams=settings.max_follow_streams)
    privacy = Privacy(app, projections)
    servicers.update(add_privacy_service(server, front, privacy, metrics))  # issue 22
    health_servicer = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    credentials = None
    if settings.tls_enabled:
        read = lambda path: open(path, "rb").read()  # noqa: E731, SIM115
        credentials = grpc.ssl_server_credentials(
            [(read(settings.tls_key_file), read(settings.tls_cert_file))],
            root_certificates=read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None,
            require_client_auth=bool(settings.tls_client_ca_file),
        )
    try:
        if credentials is not None:
            port = server.add_secure_port(settings.grpc_address, credentials)
        else:
            port = server.add_insecure_port(settings.grpc_address)
    except RuntimeError as error:  # gRPC's "Failed to bind": one clear line instead (listening.py)
        raise listen_error(settings.grpc_address, "gRPC", "LEEWAY_GRPC_ADDRESS", error) from None
    if port == 0:
        raise OSError(f"could not bind {settings.grpc_address}")
    http = None
    if settings.http_enabled:
        # The same servicers, interceptor (authentication, limits, permissions) and metrics as gRPC's.
        application = create_application(
            servicers, authz, metrics, max_message_bytes=settings.max_message_bytes, cors_origins=settings.http_cors_origins
        )
        try:
            sock = bind(settings.http_address)
        except OSError as error:
            raise listen_error(settings.http_address, "HTTP", "LEEWAY_HTTP_ADDRESS", error) from None
        tls = (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) if settings.tls_enabled else None
        http = HttpFront(application, sock, max_connections=settings.max_concurrent_rpcs, tls=tls)
    child = None
    if settings.projections == "subprocess":
        child = ProjectionProcess(projection_child_environ(settings), on_exit=metrics.projection_child_exits.inc)
        projections.nudge = child.urge
    leeway = LeewayServer(
        settings, app, loop, server, health_servicer, metrics, front, head, projections, gate, child, http=http,
        privacy=privacy,
    )
    return leeway, port


def projection_child_environ(settings: Settings) -> dict[str, str]:
    """The environment of the projections child: the server's, with the settings it was built with (which may
    not come from the environment, as in tests)."""
    environ = {**os.environ}
    environ.update(
        LEEWAY_DATABASE_URL=settings.database_url,
        LEEWAY_PROJECTION_POLL_SECONDS=str(settings.projection_poll_seconds),
        LEEWAY_LOG_LEVEL=settings.log_level,
        LEEWAY_LOG_FORMAT=settings.log_format,
        LEEWAY_LOG_FLUSH_SECONDS=str(settings.log_flush_seconds),
        LEEWAY_POSTGRES_POOL_SIZE=str(min(settings.postgres_pool_size, 5)),
        LEEWAY_POSTGRES_PREPARED_STATEMENTS="true" if settings.postgres_prepared_statements else "false",
        LEEWAY_GC_TUNING="true" if settings.gc_tuning else "false",
        LEEWAY_PROJECTIONS_METRICS_ADDRESS=settings.projections_metrics_address,
    )
    return environ


def _domain_metrics(metrics: Metrics) -> Callable[[Command, Any], None]:
    """Counts what committed commands did (idempotent replays are not commits, so never counted twice): one entry
    per command type that has something to count."""

    # The labelled children RecordAction counts into, looked up once per label set (labels() checks its
    # arguments and takes a lock: twice per action otherwise). Prometheus keeps every child it made anyway.
    actions: dict[tuple[str, bool], Any] = {}
    amounts: dict[tuple[str, str], Any] = {}

    def recorded(command: RecordAction, result: RecordResult) -> None:
        if command.kind is not None and command.amount is not None:
            kind, pending, currency = command.kind.value, bool(result.pending), command.amount.currency
            counter = actions.get((kind, pending))
            if counter is None:
                counter = actions[kind, pending] = metrics.actions.labels(kind, "pending_approval" if pending else "recorded")
            counter.inc()
            amount = amounts.get((kind, currency))
            if amount is None:
                amount = amounts[kind, currency] = metrics.action_amount.labels(kind, currency)
            amount.inc(float(command.amount.amount))

    def decided(command: DecideAction, result: Any) -> None:
        metrics.decisions.labels("approved" if command.approve else "denied").inc()

    def expired(command: ExpireAction, result: ExpiryResult) -> None:
        if result.expired:
            metrics.decisions.labels("expired").inc()

    def closed(command: CloseBudget, result: Any) -> None:
        for outcome in getattr(result, "outcomes", ()):  # what the closing decided
            metrics.decisions.labels(outcome.lower()).inc()

    observers: dict[type, Callable[[Any, Any], None]] = {
        CloseBudget: closed,
        RecordAction: recorded,
        DecideAction: decided,
        ExpireAction: expired,
        ReverseAction: lambda command, result: metrics.decisions.labels("reversed").inc(),
        DocumentWin: lambda command, result: metrics.wins.inc(),
    }

    def observe(command: Command, result: Any) -> None:
        observer = observers.get(type(command))
        if observer is not None:
            observer(command, result)

    return observe
