"""Prometheus metrics and correlation ids.

- gRPC server metrics under the go-grpc-prometheus names (``grpc_server_started_total``,
  ``grpc_server_handled_total``, ``grpc_server_handling_seconds``, ``grpc_server_msg_received_total``,
  ``grpc_server_msg_sent_total``), for every service including health and reflection, from one interceptor.
  The status code is read with the public ``ServicerContext.code()``, so aborts are counted with their code.
- Domain metrics (``leeway_*``), fed by the application's commit hook (an idempotent replay is not counted
  twice) and by the RPC layer for refusals.
- A correlation id per call: the caller's ``x-correlation-id`` (or ``x-request-id``) if valid, else a new one;
  returned in trailing metadata, logged with the call, and kept in a context variable for the log line.

Each server has its own ``CollectorRegistry`` (no global state), exported on its own HTTP port.
"""

from __future__ import annotations

import contextvars
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CORRELATION_HEADER = "x-correlation-id"
_INCOMING_HEADERS = (CORRELATION_HEADER, "x-request-id")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}\Z")

#: The current call's correlation id (set by the interceptor, read by the RPC log line and error replies).
correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("leeway_correlation_id", default="")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric one server exports."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()

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

    def watch_pending(self, count: Callable[[], int]) -> None:
        """Exports ``leeway_pending_approvals`` (actions waiting for approval), read at scrape time."""
        self.registry.register(_PendingCollector(count))


    def watch_writer(self, app: Any) -> None:
        """Exports the group-commit writer's counters (``leeway_write_*_total``), read at scrape time."""
        self.registry.register(_WriterCollector(app))

    def watch_projections(self, status: Callable[[], Any]) -> None:
        """Exports ``leeway_projection_position`` and ``leeway_projection_lag_events`` per projection."""
        self.registry.register(_ProjectionCollector(status))


class _ProjectionCollector(Collector):
    def __init__(self, status: Callable[[], Any]):
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            found = self.status()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is down
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
    def __init__(self, count: Callable[[], int]):
        self.count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("leeway_pending_approvals", "Actions waiting for approval (not yet expired).")
        try:
            family.add_metric([], float(self.count()))
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is down
            return
        yield family


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

        def finish(context: Any, started: float, failed: bool) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            if isinstance(code, int):  # pragma: no cover - some grpcio versions return ints here
                code = grpc.StatusCode(code)
            metrics.handled(code.name).inc()
            metrics.handling.observe(time.perf_counter() - started)

        async def counted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                metrics.received.inc()
                yield request

        async def wrapped(request: Any, context: Any) -> Any:
            cid = _incoming_correlation_id(context.invocation_metadata())
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
                finish(context, started, failed)

        return factory(
            wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
