"""Prometheus metrics and correlation ids.

- gRPC server metrics under the go-grpc-prometheus names (``grpc_server_started_total``,
  ``grpc_server_handled_total``, ``grpc_server_handling_seconds``, ``grpc_server_msg_received_total``,
  ``grpc_server_msg_sent_total``), for every service including health and reflection, from one interceptor.
  The status code is read with the public ``ServicerContext.code()``, so aborts are counted with their code.
- Domain metrics (``leeway_*``), fed by the application's commit hook (an idempotent replay is not counted
  twice) and by the RPC layer for refusals.
- A correlation id per call: the caller's ``x-correlation-id`` (or ``x-request-id``) if valid, else a new one;
  returned in trailing metadata, logged with the call, and kept in a context variable for the log line.
- With tracing on (``tracing.py``), a server span per call, a child of the caller's W3C ``traceparent``.
- The process (``process_*``: CPU, memory, file descriptors), Python (``python_info``, ``python_gc_*``) and
  ``leeway_build_info{version,revision}`` on every registry (``add_runtime_collectors``).

Each server has its own ``CollectorRegistry`` (no global state), exported on its own HTTP port. `leeway
projections run` has its own (``ProjectionMetrics``), served with liveness and readiness paths (``serve_http``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import re
import subprocess
import threading
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from socketserver import ThreadingMixIn
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import tracing

CORRELATION_HEADER = "x-correlation-id"
_INCOMING_HEADERS = (CORRELATION_HEADER, "x-request-id")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}\Z")

#: The current call's correlation id (set by the interceptor, read by the RPC log line and error replies).
correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("leeway_correlation_id", default="")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


#: Set by the image build (Dockerfile ``ARG REVISION``, ``make image``): the source revision built.
BUILD_REVISION_ENV = "LEEWAY_BUILD_REVISION"


@functools.cache
def build_revision() -> str:
    """The revision this process runs: ``$LEEWAY_BUILD_REVISION`` (the image build sets it), else the git commit
    of the source checkout the package was imported from (a developer's ``make serve``), else ``unknown``."""
    given = os.environ.get(BUILD_REVISION_ENV, "").strip()
    if given:
        return given
    source = Path(__file__).resolve().parents[2]
    if (source / ".git").exists():
        try:
            found = subprocess.run(
                ["git", "-C", str(source), "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, if there is one
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if re.fullmatch(r"[0-9a-f]{40}", found):
            return found
    return "unknown"


def build_version() -> str:
    try:
        return version("leeway")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
        return "unknown"


def add_runtime_collectors(registry: CollectorRegistry) -> None:
    """The process (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ...), the interpreter
    (``python_info``, ``python_gc_*``) and ``leeway_build_info{version,revision}``."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if GC_COLLECTOR is not None:  # None where the interpreter has no gc.get_stats
        GCCollector(registry=registry)
    Info("leeway_build", "The version and source revision of the running Leeway.", registry=registry).info(
        {"version": build_version(), "revision": build_revision()}
    )


class Metrics:
    """Every metric one server exports."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        add_runtime_collectors(self.registry)

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            return Counter(name, documentation, labels, registry=self.registry)

        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = counter("grpc_server_started_total", "RPCs started on the server.", *grpc_labels)
        self.handled = counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            *grpc_labels,
            "grpc_code",
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Response latency (seconds) of gRPC that had been application-level handled by the server.",
            grpc_labels,
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.received = counter("grpc_server_msg_received_total", "RPC stream messages received on the server.", *grpc_labels)
        self.sent = counter("grpc_server_msg_sent_total", "gRPC stream messages sent on the server.", *grpc_labels)
        self.actions = counter(
            "leeway_actions_total",
            "Actions recorded, by kind and outcome (recorded within authority, or pending approval).",
            "kind",
            "outcome",
        )
        self.action_amount = counter(
            "leeway_action_amount_total",
            "Sum of the amounts of recorded actions (pending ones included), by kind and currency.",
            "kind",
            "currency",
        )
        self.decisions = counter(
            "leeway_action_decisions_total",
            "Decisions on pending actions and corrections: approved, denied, expired, reversed.",
            "outcome",
        )
        self.refusals = counter(
            "leeway_refusals_total",
            "Requests refused with a Leeway reason (ErrorInfo.reason), by method and reason.",
            "grpc_method",
            "reason",
        )
        self.wins = counter("leeway_wins_documented_total", "Success stories documented (DocumentWin).")
        self.http_calls = counter(
            "leeway_http_calls_total",
            "RPCs received over HTTP (the Connect protocol), by method and HTTP method (GET or POST); they are "
            "counted in grpc_server_* too, like the calls received over gRPC.",
            "grpc_service",
            "grpc_method",
            "http_method",
        )
        self.store_up = Gauge(
            "leeway_event_store_up", "1 if the event store answered the last health probe.", registry=self.registry
        )
        self.projection_child_exits = counter(
            "leeway_projection_child_exits",
            "Times the projections child process (LEEWAY_PROJECTIONS=subprocess) exited unexpectedly and was restarted.",
        )

    def watch_pending(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Exports ``leeway_pending_approvals`` (actions waiting for approval) and ``leeway_approvals_overdue``
        (holds past their approval timeout that nothing has expired yet), read at scrape time from ``counts()``:
        (waiting, overdue)."""
        self.registry.register(_PendingCollector(counts))


    def watch_writer(self, app: Any) -> None:
        """Exports the group-commit writer's counters (``leeway_write_*_total``), read at scrape time."""
        self.registry.register(_WriterCollector(app))

    def watch_projections(self, status: Callable[[], Any]) -> None:
        """Exports ``leeway_projection_position`` and ``leeway_projection_lag_events`` per projection."""
        self.registry.register(_ProjectionCollector(status))


class _ProjectionCollector(Collector):
    def __init__(self, status: Callable[[], Any], *, report_store: bool = False):
        self.status = status
        #: Also export leeway_event_store_up (the projections process has no health probe thread to set it).
        self.report_store = report_store

    def read(self) -> Any:
        try:
            return self.status()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is down
            return None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        found = self.read()
        if self.report_store:
            yield GaugeMetricFamily(
                "leeway_event_store_up",
                "1 if the event store answered the last read of the projections' positions.",
                value=1.0 if found is not None else 0.0,
            )
        if found is None:
            return
        position = GaugeMetricFamily(
            "leeway_projection_position", "Log position a projection has processed.", labels=["projection"]
        )
        lag = GaugeMetricFamily(
            "leeway_projection_lag_events", "Events committed but not yet in a projection.", labels=["projection"]
        )
        for item in found:
            position.add_metric([item.name], float(item.position))
            lag.add_metric([item.name], float(item.lag))
        yield position
        yield lag


class ProjectionMetrics:
    """What `leeway projections run` exports: the process and build (``add_runtime_collectors``), each
    projection's position and lag, and whether the event store answered (all read at scrape time, one status
    read for all), plus what its readiness path needs."""

    def __init__(self, status: Callable[[], Any], registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        add_runtime_collectors(self.registry)
        self.collector = _ProjectionCollector(status, report_store=True)
        self.registry.register(self.collector)

    def ready(self) -> bool:
        """True while the event store answers (a status read now, as a scrape does)."""
        return self.collector.read() is not None


class _WriterCollector(Collector):
    """The group-commit writer's own counters (Writer.batches_committed, ...)."""

    FAMILIES = (
        ("leeway_write_batches", "batches_committed", "Group-commit batches the writer committed (one transaction each)."),
        (
            "leeway_write_conflicts",
            "batch_conflicts",
            "Batches decided again: a version conflict (another replica, a request id already stored) or, "
            "on PostgreSQL, a log that moved under a batch decided from the writer's cache.",
        ),
        (
            "leeway_write_read_aheads_skipped",
            "read_aheads_skipped",
            "Batches decided from the writer's cache alone, without reading the store first (PostgreSQL).",
        ),
    )

    def __init__(self, app: Any):
        self.app = app

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, attribute, documentation in self.FAMILIES:
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], float(getattr(self.app.writer, attribute)))
            yield family


class _PendingCollector(Collector):
    def __init__(self, counts: Callable[[], tuple[int, int]]):
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            waiting, overdue = self.counts()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is down
            return
        yield GaugeMetricFamily(
            "leeway_pending_approvals", "Actions waiting for approval (not yet expired).", value=float(waiting)
        )
        yield GaugeMetricFamily(
            "leeway_approvals_overdue",
            "Pending actions past their approval timeout that are not expired yet (the expiry loop, "
            "LEEWAY_EXPIRY_INTERVAL_SECONDS, should bring this back to 0 within seconds).",
            value=float(overdue),
        )


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _incoming_correlation_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key in _INCOMING_HEADERS and isinstance(value, str) and _VALID_ID.match(value):
            return value
    return uuid.uuid4().hex


#: The correlation id of a call with these (key, value) headers, of any transport (the HTTP front's too).
incoming_correlation_id = _incoming_correlation_id


class _MethodMetrics:
    """One method's labelled metric children, looked up once (``labels()`` validates and locks on every call)."""

    __slots__ = ("started", "received", "sent", "handling", "_handled", "_labels", "_metrics")

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]):
        self._metrics = metrics
        self._labels = labels
        self.started = metrics.started.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self._handled: dict[str, Any] = {}
        # At 0 from the method's first call: a first INTERNAL is then an increase (alerts.rules.yaml).
        self.handled("INTERNAL")

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._metrics.handled.labels(*self._labels, code)
        return child


class _Counted:
    """A servicer context whose ``write`` counts the messages sent (everything else is the context's own)."""

    __slots__ = ("_context", "_sent")

    def __init__(self, context: Any, sent: Any):
        self._context = context
        self._sent = sent

    async def write(self, message: Any) -> None:
        self._sent.inc()
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call (go-grpc-prometheus names) and gives it a correlation id."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        #: Per registered method (the interceptor only sees methods that have a handler: bounded): the handler it
        #: was given and the one it returned.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        # One wrapped handler per method and handler, made once: the per-call work is in ``wrapped``.
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped_handler = self._wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped_handler)
        return wrapped_handler

    def _wrap(self, method_name: str, handler: Any) -> Any:
        if handler.request_streaming and handler.response_streaming:
            kind, behavior, factory = "bidi_stream", handler.stream_stream, grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            kind, behavior, factory = "client_stream", handler.stream_unary, grpc.stream_unary_rpc_method_handler
        elif handler.response_streaming:
            kind, behavior, factory = "server_stream", handler.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            kind, behavior, factory = "unary", handler.unary_unary, grpc.unary_unary_rpc_method_handler
        service, method = _split(method_name)
        metrics = _MethodMetrics(self.metrics, (kind, service, method))

        def finish(context: Any, started: float, failed: bool, span: Any = None) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            if isinstance(code, int):  # pragma: no cover - some grpcio versions return ints here
                code = grpc.StatusCode(code)
            metrics.handled(code.name).inc()
            metrics.handling.observe(time.perf_counter() - started)
            if span is not None:
                tracing.finish_rpc_span(span, code.name, code.value[0])

        async def counted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                metrics.received.inc()
                yield request

        async def traced(request: Any, context: Any) -> Any:
            metadata = context.invocation_metadata()
            cid = _incoming_correlation_id(metadata)
            with tracing.rpc_span(service, method, metadata, cid) as span:
                return await call(request, context, cid, span)

        async def call(request: Any, context: Any, cid: str = "", span: Any = None) -> Any:
            cid = cid or _incoming_correlation_id(context.invocation_metadata())
            correlation_id.set(cid)  # this call's task has its own context: nothing to reset
            context.set_trailing_metadata(((CORRELATION_HEADER, cid),))
            metrics.started.inc()
            started = time.perf_counter()
            if handler.request_streaming:
                request = counted(request)
            else:
                metrics.received.inc()
            failed = True
            try:
                if handler.response_streaming:
                    counting = _Counted(context, metrics.sent)
                    result = behavior(request, counting)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            await counting.write(item)
                    else:
                        await result
                    failed = False
                    return None
                response = await behavior(request, context)
                metrics.sent.inc()
                failed = False
                return response
            finally:
                finish(context, started, failed, span)

        # Whether calls are traced is decided once per method, when its first call comes (after start-up's
        # tracing.configure_from_env): with tracing off a call runs ``call`` itself, nothing more.
        return factory(
            traced if tracing.tracer is not None else call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def serve_http(address: str, registry: CollectorRegistry, ready: Callable[[], bool]) -> WSGIServer:
    """Serves ``/metrics`` (Prometheus text), ``/livez`` (200 while the process answers) and ``/readyz`` (200 while
    ``ready()``, else 503) on ``address`` (HOST:PORT; port 0 picks one: ``server.server_port``) in a daemon
    thread; ``shutdown()`` and ``server_close()`` stop it. Raises OSError if the address cannot be bound."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path in ("/livez", "/readyz"):
            ok = path == "/livez" or ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"the event store does not answer\n"]
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics, /livez, /readyz\n"]
        return metrics_app(environ, start_response)

    host, _, port = address.rpartition(":")
    server = make_server(host, int(port), app, _ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="leeway-metrics", daemon=True).start()
    return server
