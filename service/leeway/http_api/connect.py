"""The Connect (HTTP/JSON) application: every RPC of protos/leeway/v1 at ``POST /leeway.v1.<Service>/<Method>``
(``application/json`` or ``application/proto``; read RPCs also by GET; StreamEvents as a Connect server stream).

Nothing here decides anything about a request. A call is admitted by the gRPC front's ``AuthInterceptor.admit``
(authentication from the ``Authorization`` / ``x-api-key`` headers, the per-principal rate limit, the failed-
authentication limit per peer, the deadline clamp and the permission table), answered by the same servicer
coroutine as over gRPC (through ``_Context``, the little of a ServicerContext they use), screened by
``AuthInterceptor.screen``, and refused with the status of grpc_api/errors.py's one table, sent as Connect's error
JSON (``code``, ``message``, ``details`` with the same ErrorInfo, BadRequest, PreconditionFailure ...; each detail
also carries its JSON form under ``debug`` for callers that do not decode protobuf). ``_Observer`` gives every call
its correlation id (``x-correlation-id`` response header), its gRPC metrics (the same ``grpc_server_*`` families,
under the same method names) and an ErrorInfo for the errors the Connect runtime itself makes (a body that does
not parse, ``Connect-Timeout-Ms`` passing ...).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pkgutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn

import leeway.v1
import structlog
from connectrpc._protocol import ConnectWireError
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.method import StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from protobuf.wkt import Any as PyAny

from ..domain.errors import DeadlineExceeded, FieldViolation, InvalidArgument, LeewayError
from ..domain.reasons import Reason
from ..grpc_api.errors import ERROR_DOMAIN, internal_status, status_for
from ..grpc_api.interceptors import AuthInterceptor, reset
from ..observability import CORRELATION_HEADER, Metrics, correlation_id, incoming_correlation_id

log = structlog.get_logger("leeway.http")

#: google.rpc.Code -> Connect code (Connect spells CANCELLED with one L).
_CODES = {code_pb2.Code.Value("CANCELLED" if c is Code.CANCELED else c.name): c for c in Code}
#: Connect code -> the gRPC status name the metrics and logs use.
_GRPC_NAMES = {c: ("CANCELLED" if c is Code.CANCELED else c.name) for c in Code}


# ---------------------------------------------------------------------------------------------- errors


class _Debug:
    """A detail's JSON form for Connect's ``debug`` field (connectrpc asks its detail for a protobuf-py message and
    renders it with ``_to_json_value``; ours are google.protobuf messages, rendered by json_format)."""

    def __init__(self, packed: any_pb2.Any):
        self.packed = packed

    def _to_json_value(self, *args: Any, **kwargs: Any) -> Any:
        try:
            value = json_format.MessageToDict(self.packed)
        except Exception:  # noqa: BLE001 - a detail type this process cannot read: no debug form, nothing worse
            return None
        value.pop("@type", None)
        return value


class _Detail(ErrorDetail):
    """A google.rpc detail (google.protobuf Any) as connectrpc sends it: type, base64 value and debug JSON."""

    def __init__(self, packed: any_pb2.Any):
        super().__init__(PyAny(type_url=packed.type_url, value=packed.value))
        self._debug = _Debug(packed)

    def value(self, *args: Any) -> Any:
        return super().value(*args) if args else self._debug


def connect_error(status: status_pb2.Status) -> ConnectError:
    """The Connect error for a google.rpc.Status made by grpc_api/errors.py (same code, message and details)."""
    return ConnectError(_CODES.get(status.code, Code.UNKNOWN), status.message, [_Detail(d) for d in status.details])


def _completed(error: Exception) -> ConnectError:
    """An error for the caller with an ErrorInfo: ours as they are; the Connect runtime's own (no details) through
    the error table where it has a row for them; anything else is a bug, answered as INTERNAL."""
    if isinstance(error, ConnectError):
        if error.details:
            return error
        if error.code is Code.INVALID_ARGUMENT:  # a body, query or header that does not parse
            violation = FieldViolation("request", error.message)
            return connect_error(status_for(InvalidArgument([violation], reason=Reason.MALFORMED_REQUEST))[1])
        if error.code is Code.DEADLINE_EXCEEDED:
            return connect_error(status_for(DeadlineExceeded(f"{error.message} (Connect-Timeout-Ms)"))[1])
        info = error_details_pb2.ErrorInfo(reason=Reason.LEEWAY_ERROR, domain=ERROR_DOMAIN)
        packed = any_pb2.Any()
        packed.Pack(info)
        return ConnectError(error.code, error.message, [_Detail(packed)])
    return connect_error(internal_status())


class _Context:
    """What the servicer coroutines use of a grpc.aio.ServicerContext, for a Connect call."""

    def __init__(self, peer: str):
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    async def abort_with_status(self, status: Any) -> NoReturn:
        """grpc_api.errors.abort's way out: the google.rpc.Status it packed becomes the Connect error."""
        details = dict(status.trailing_metadata).get("grpc-status-details-bin")
        if details is None:
            raise ConnectError(Code.INTERNAL, "internal error; it has been logged")
        raise connect_error(status_pb2.Status.FromString(details))


def _peer(ctx: RequestContext) -> str:
    """The caller's address as gRPC spells a peer (``ipv4:10.1.2.3:5555``, ``ipv6:[::1]:5555``): the
    failed-authentication limit and the logs key on it."""
    address = ctx.client_address or ""
    host, _, port = address.rpartition(":")
    if not host:
        return "unknown"
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _remaining(ctx: RequestContext) -> float | None:
    timeout_ms = ctx.timeout_ms
    return None if timeout_ms is None else max(timeout_ms / 1000, 0.0)


# ---------------------------------------------------------------------------------------------- calls


class _Calls:
    """The service object the generated ``*ASGIApplication`` asks for its methods (``svc.get_budget`` ...): each
    is one dispatcher that finds the servicer's coroutine by the method's proto name."""

    def __init__(self, servicer: Any, guard: AuthInterceptor, metrics: Metrics):
        self.servicer = servicer
        self.guard = guard
        self.metrics = metrics

    def __getattr__(self, name: str) -> Callable[[Any, RequestContext], Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._dispatch

    def _dispatch(self, request: Any, ctx: RequestContext) -> Any:
        handler = getattr(self.servicer, ctx.method.name)
        if ctx.method.stream_type is StreamType.SERVER_STREAM:
            return self._stream(handler, request, ctx)
        return self._unary(handler, request, ctx)

    async def _admit(self, request: Any, ctx: RequestContext, peer: str) -> tuple[Any, Any]:
        method = f"/{ctx.method.service_name}/{ctx.method.name}"
        metadata = tuple(ctx.request_headers.allitems())
        try:
            return await self.guard.admit(method, request, metadata, peer, _remaining(ctx))
        except LeewayError as error:
            raise connect_error(status_for(error)[1]) from None

    async def _unary(self, handler: Callable[..., Awaitable[Any]], request: Any, ctx: RequestContext) -> Any:
        peer = _peer(ctx)
        tokens = await self._admit(request, ctx, peer)
        try:
            response = await _call(handler, request, _Context(peer))
            try:
                return await self.guard.screen(f"/{ctx.method.service_name}/{ctx.method.name}", request, response)
            except LeewayError as error:
                raise connect_error(status_for(error)[1]) from None
        finally:
            reset(tokens)

    async def _stream(self, handler: Callable[..., AsyncIterator[Any]], request: Any, ctx: RequestContext) -> Any:
        peer = _peer(ctx)
        tokens = await self._admit(request, ctx, peer)
        sent = self.metrics.sent.labels("server_stream", ctx.method.service_name, ctx.method.name)
        try:
            output = ctx.method.output
            async for item in handler(request, _Context(peer)):
                sent.inc()
                # A response already in wire form (StreamEvents': grpc_api/event_wire.py) is parsed for the codec.
                yield output.FromString(item) if type(item) is bytes else item
        finally:
            with contextlib.suppress(ValueError):  # closed from another context: nothing of ours to undo there
                reset(tokens)


async def _call(handler: Callable[..., Awaitable[Any]], request: Any, context: _Context) -> Any:
    try:
        return await handler(request, context)
    except NotImplementedError:  # a generated servicer base method: the proto has it, the server does not yet
        raise ConnectError(Code.UNIMPLEMENTED, "this method is not implemented by this server") from None


class _Observer:
    """A leading connectrpc MetadataInterceptor (it runs before the request body is read): the call's correlation
    id, its metrics, and an ErrorInfo for every error that leaves it."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.http_calls = metrics.http_calls

    async def on_start(self, ctx: RequestContext) -> float:
        cid = incoming_correlation_id(ctx.request_headers.allitems())
        correlation_id.set(cid)  # each request is a task of its own: nothing to reset
        ctx.response_headers[CORRELATION_HEADER] = cid
        labels = (_kind(ctx), ctx.method.service_name, ctx.method.name)
        self.metrics.started.labels(*labels).inc()
        self.metrics.received.labels(*labels).inc()
        self.http_calls.labels(ctx.method.service_name, ctx.method.name, ctx.http_method).inc()
        return time.perf_counter()

    async def on_end(self, started: float, ctx: RequestContext, error: Exception | None) -> None:
        labels = (_kind(ctx), ctx.method.service_name, ctx.method.name)
        answer = None if error is None else _completed(error)
        if answer is not None and answer is not error:
            fields = {"method": f"/{labels[1]}/{labels[2]}", "correlation_id": correlation_id.get(), "peer": _peer(ctx)}
            if isinstance(error, ConnectError):
                log.info("rpc.refused", **fields, code=_GRPC_NAMES[answer.code], message=error.message)
            else:
                log.error("rpc.internal_error", **fields, exc_info=error)
        if answer is None and ctx.method.stream_type is StreamType.UNARY:
            self.metrics.sent.labels(*labels).inc()
        code = "OK" if answer is None else _GRPC_NAMES[answer.code]
        self.metrics.handled.labels(*labels, code).inc()
        self.metrics.handling.labels(*labels).observe(time.perf_counter() - started)
        if answer is not None and answer is not error:
            raise answer  # replaces the error sent


def _kind(ctx: RequestContext) -> str:
    return "server_stream" if ctx.method.stream_type is StreamType.SERVER_STREAM else "unary"


# ---------------------------------------------------------------------------------------------- codecs


class _JsonCodec:
    """Connect's ``json`` codec for google.protobuf messages: proto3 JSON (lowerCamelCase names; proto names are
    accepted too; unknown fields are ignored, as over gRPC), written without indentation."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return json_format.MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Message:
        message = message_class()
        json_format.Parse(bytes(data), message, ignore_unknown_fields=True)
        return message


class _ProtoCodec:
    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Message:
        return message_class.FromString(bytes(data))


# ---------------------------------------------------------------------------------------------- the application


def generated_applications() -> list[type[ConnectASGIApplication[Any]]]:
    """Every ``*ASGIApplication`` class generated from the protos (the ``*_connect`` modules that ``make proto``
    writes beside the gRPC stubs in ``leeway.v1``)."""
    found = []
    for info in pkgutil.iter_modules(leeway.v1.__path__):
        if not info.name.endswith("_connect"):
            continue
        module = importlib.import_module(f"{leeway.v1.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, ConnectASGIApplication) and value.__module__ == module.__name__:
                found.append(value)
    return found


class _Router:
    """``/<package.Service>/<Method>`` to the service's Connect application; anything else is 404 with a Connect
    error body."""

    def __init__(self, applications: Iterable[ConnectASGIApplication[Any]]):
        self.applications = {application.path: application for application in applications}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        content_type = dict(scope.get("headers", ())).get(b"content-type", b"")
        if content_type.startswith(b"application/grpc") and not content_type.startswith(b"application/grpc-web"):
            # gRPC needs HTTP/2 trailers, which this server does not send: gRPC has its own port.
            await _refuse(send, 415, Code.UNIMPLEMENTED, "gRPC is served on LEEWAY_GRPC_ADDRESS; this port speaks Connect")
            return
        application = self.applications.get(scope["path"].rpartition("/")[0])
        if application is not None:
            await application(scope, receive, _ErrorInfoAdded(send))
            return
        await _refuse(send, 404, Code.UNIMPLEMENTED, "no such procedure: RPCs are POST /leeway.v1.<Service>/<Method>")


class _ErrorInfoAdded:
    """The ASGI ``send`` of a call, adding an ErrorInfo to the few error bodies the Connect runtime writes before
    a call starts (a malformed Connect-Timeout-Ms or Connect-Protocol-Version header): every error has one."""

    __slots__ = ("_send", "_held")

    def __init__(self, send: Any):
        self._send = send
        self._held: dict[str, Any] | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            if (b"content-type", b"application/json") in message.get("headers", ()):
                self._held = message  # the body follows in one message
                return
        if self._held is not None and message["type"] == "http.response.body":
            start, self._held = self._held, None
            message = {**message, "body": _with_error_info(message.get("body", b""))}
            await self._send(start)
        await self._send(message)


def _with_error_info(body: bytes) -> bytes:
    try:
        error = json.loads(body)
        if error.get("details"):
            return body
        completed = _completed(ConnectError(Code(error["code"]), error.get("message", "")))
    except (ValueError, KeyError, AttributeError):
        return body
    return ConnectWireError.from_exception(completed).to_json_bytes()


async def _refuse(send: Any, status: int, code: Code, message: str) -> None:
    body = json.dumps({"code": code.value, "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


#: What browsers may send and read across origins (CORS): Connect's and gRPC-Web's headers, and Leeway's.
CORS_REQUEST_HEADERS = [
    "accept-encoding", "authorization", "connect-accept-encoding", "connect-content-encoding",
    "connect-protocol-version", "connect-timeout-ms", "content-encoding", "content-type", "grpc-timeout",
    "x-api-key", "x-correlation-id", "x-grpc-web", "x-request-id", "x-user-agent",
]  # fmt: skip
CORS_RESPONSE_HEADERS = [
    "content-encoding", "connect-content-encoding", "grpc-message", "grpc-status", "grpc-status-details-bin",
    CORRELATION_HEADER,
]  # fmt: skip


def create_application(
    servicers: dict[str, Any],
    guard: AuthInterceptor,
    metrics: Metrics,
    *,
    max_message_bytes: int,
    cors_origins: tuple[str, ...] = (),
) -> Any:
    """The ASGI application serving every generated Connect service with the servicer registered under its name
    (``servicers``: full service name -> the servicer the gRPC server runs)."""
    observer = _Observer(metrics)
    codecs = [_ProtoCodec(), _JsonCodec()]
    applications = []
    for application_class in generated_applications():
        placeholder = application_class(_Calls(None, guard, metrics))
        name = placeholder.path.strip("/")
        if name not in servicers:
            raise LookupError(f"no servicer for {name}: every service of the protos needs one (server.py)")
        applications.append(
            application_class(
                _Calls(servicers[name], guard, metrics),
                interceptors=[observer],
                read_max_bytes=max_message_bytes,
                codecs=codecs,
            )
        )
    application: Any = _Router(applications)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        application = CORSMiddleware(
            application,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
            max_age=7200,
        )
    return application
