"""OpenTelemetry tracing: off unless the standard ``OTEL_*`` variables turn it on (README, "Observability").

On when, and only when, ``OTEL_SDK_DISABLED`` is not true and either ``OTEL_TRACES_EXPORTER`` names an exporter
(``otlp`` or ``console``; ``none`` keeps it off) or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: the exporter is then ``otlp``). The SDK reads the rest itself: the
protocol (``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``..._TRACES_PROTOCOL``: ``grpc``, the default, or
``http/protobuf``), headers, certificates, timeouts, the sampler (``OTEL_TRACES_SAMPLER`` and its ``_ARG``),
the batch processor (``OTEL_BSP_*``), the resource (``OTEL_SERVICE_NAME``, default ``leeway``;
``OTEL_RESOURCE_ATTRIBUTES``).

Spans (names as the README lists them): the RPC (``leeway.v1.BudgetService/RecordAction``, kind SERVER, a child
of the caller's W3C ``traceparent`` when the call carries one), the writer's batch (``leeway.writer.batch``: its
own trace, one batch serves many RPCs, so it is *linked* to the RPC span of every command it carries), and the
database save inside it (``leeway.store.save``). Log lines written inside a span carry its ``trace_id`` and
``span_id``.

Off, every hook is one test of a module-level ``None``: no span, no context, no allocation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: The process's tracer, or None while tracing is off (the only thing the hot paths look at).
tracer: Any = None
_provider: Any = None

#: Exporters ``OTEL_TRACES_EXPORTER`` may name.
EXPORTERS = ("otlp", "console", "none")


class TracingError(ValueError):
    """The OTEL_* variables ask for something this service cannot do (a clear start-up error)."""


def wanted_exporter(environ: Mapping[str, str]) -> str:
    """The exporter the environment asks for: ``otlp``, ``console`` or ``none`` (tracing off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        return "otlp" if endpoint.strip() else "none"
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown or len(names) > 1:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER={environ.get('OTEL_TRACES_EXPORTER')!r}: give one of {', '.join(EXPORTERS)}"
        )
    return names[0]


def configure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Turns tracing on if the environment asks for it (see the module's docstring); True if it is on."""
    env = os.environ if environ is None else environ
    exporter_name = wanted_exporter(env)
    if exporter_name == "none":
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "") or "grpc"
        ).strip()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
        else:
            raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: give grpc or http/protobuf")
        exporter = OTLPSpanExporter()
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; "leeway" unless they name the service.
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME", "").strip() or "leeway"})
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER (default parentbased_always_on)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return True


def install(provider: Any) -> None:
    """Traces with ``provider`` (a TracerProvider; tests give one with an in-memory exporter), or stops tracing
    (None). The provider is this module's, not the process-global one of ``opentelemetry.trace``."""
    global tracer, _provider
    _provider = provider
    tracer = provider.get_tracer("leeway") if provider is not None else None


def shutdown() -> None:
    """Exports what is buffered and stops tracing (at the end of ``leeway serve``)."""
    provider = _provider
    install(None)
    if provider is not None:
        provider.shutdown()


def current_context() -> Any:
    """The span context of the current span (captured with a command, to link the writer's batch to it), or None."""
    if tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextmanager
def span(name: str, *, links: Any = (), attributes: Mapping[str, Any] | None = None, root: bool = False) -> Iterator[Any]:
    """A span named ``name`` around the block (a child of the current one unless ``root``); yields it, or None
    while tracing is off."""
    if tracer is None:
        yield None
        return
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Link

    parent = otel_context.Context() if root else None
    with tracer.start_as_current_span(
        name, context=parent, links=[Link(c) for c in links if c is not None], attributes=attributes
    ) as current:
        yield current


def add_trace_ids(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the current span's trace and span ids on every log line written inside one."""
    if tracer is not None:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event.setdefault("trace_id", format(context.trace_id, "032x"))
            event.setdefault("span_id", format(context.span_id, "016x"))
    return event


#: gRPC codes that make a server span an error (OpenTelemetry's RPC conventions: the server's fault, not the
#: caller's).
SERVER_ERROR_CODES = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
_PROPAGATED = ("traceparent", "tracestate")


@contextmanager
def rpc_span(service: str, method: str, metadata: Any, correlation_id: str) -> Iterator[Any]:
    """The server span of one call, a child of the caller's W3C ``traceparent`` (and ``tracestate``) if its
    metadata has one; the caller of ``finish_rpc_span`` sets its status. Only called while tracing is on."""
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {key: value for key, value in metadata or () if key in _PROPAGATED and isinstance(value, str)}
    parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
    with tracer.start_as_current_span(
        f"{service}/{method}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "leeway.correlation_id": correlation_id,
        },
        record_exception=False,  # an abort is a status, not a crash: finish_rpc_span says which
        set_status_on_exception=False,
    ) as current:
        yield current


def finish_rpc_span(current: Any, code: str, code_value: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("rpc.grpc.status_code", code_value)
    if code in SERVER_ERROR_CODES:
        current.set_status(Status(StatusCode.ERROR, code))


def run_batch(writer: Any, items: list[Any]) -> None:
    """``writer.run_batch(items)`` in a span of its own trace (one batch serves many RPCs), linked to the RPC span
    of each command it carries (``Pending.trace``); just ``writer.run_batch(items)`` while tracing is off."""
    if tracer is None:
        writer.run_batch(items)
        return
    conflicts = writer.batch_conflicts
    with span(
        "leeway.writer.batch",
        root=True,
        links=[item.trace for item in items],
        attributes={"leeway.batch.size": len(items)},
    ) as current:
        writer.run_batch(items)
        current.set_attribute("leeway.batch.conflicts", writer.batch_conflicts - conflicts)
        current.set_attribute("leeway.batch.failed", sum(1 for item in items if item.error is not None))


def save(app: Any, aggregates: list[Any], records: list[Any]) -> None:
    """``app.save(...)`` (one transaction) in a ``leeway.store.save`` span (no span while tracing is off)."""
    if tracer is None:
        app.save(*aggregates, *records)
        return
    with span(
        "leeway.store.save",
        attributes={"leeway.save.aggregates": len(aggregates), "leeway.save.request_records": len(records)},
    ) as current:
        recordings = app.save(*aggregates, *records)
        current.set_attribute("leeway.save.events", len(recordings or ()))
