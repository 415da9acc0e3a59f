"""The asyncio server's authentication and authorization interceptor (the permission table is authz.RULES).

Authenticates (when required), rate-limits per principal, clamps deadlines and applies ``authz.check``. The
check runs on the event loop when the caller's role may call the method for any request (no lookup), else on
the read pool (it may read the budget or action the request names). Health checks are open; reflection is open
when it is enabled.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from ..auth import ANONYMOUS, Authenticator, Principal, RateLimiter
from ..domain.errors import FieldViolation, InvalidArgument, LeewayError, PermissionDenied, ResourceExhausted
from ..domain.reasons import Reason
from ..observability import correlation_id
from . import authz
from .authz import OPEN_METHODS, REFLECTION_METHODS, RULES, current_deadline, current_principal
from .errors import abort, status_for
from .front import Front

log = structlog.get_logger("leeway.auth")


async def drain(result: Any, context: grpc.aio.ServicerContext) -> None:
    """Runs a response-streaming behaviour to its end: an async generator's items are written to ``context``; a
    coroutine (which writes with ``context.write`` itself, as the health service's Watch does) is awaited."""
    if inspect.isasyncgen(result):
        async for item in result:
            await context.write(item)
    elif inspect.isawaitable(result):
        await result


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates (when required), rate-limits per principal, clamps deadlines and applies ``authz.RULES``."""

    def __init__(
        self,
        front: Front,
        authenticator: Authenticator,
        *,
        required: bool,
        reflection: bool,
        limiter: RateLimiter,
        max_deadline_seconds: float,
    ):
        self.front = front
        self.app = front.app
        self.authenticator = authenticator
        self.required = required
        self.open_methods = OPEN_METHODS | (REFLECTION_METHODS if reflection else set())
        self.limiter = limiter
        self.max_deadline = max_deadline_seconds
        self._guarded: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method in self.open_methods:
            return handler
        # One guarded handler per method and handler, made once: the per-call work is in ``guarded``.
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded_handler = self._guard(method, handler)
        self._guarded[method] = (handler, guarded_handler)
        return guarded_handler

    def _guard(self, method: str, handler: Any) -> Any:
        deserializer = _tolerant(handler.request_deserializer)
        if handler.request_streaming:  # no Leeway RPC streams requests; refuse rather than let one through unchecked
            return _refusal(handler, PermissionDenied("streaming requests are not allowed", reason=Reason.PERMISSION_DENIED))
        if handler.response_streaming:
            behavior = handler.unary_stream

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> None:
                await _refuse_undecodable(request, context)
                tokens = await self._admit(method, request, context)
                try:
                    await drain(behavior(request, context), context)
                finally:
                    reset(tokens)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        unary = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse_undecodable(request, context)
            tokens = await self._admit(method, request, context)
            try:
                return await self.screen(method, request, await unary(request, context))
            finally:
                reset(tokens)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )

    async def _admit(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> tuple[Any, Any]:
        """``admit`` for a gRPC call: a refusal aborts the call with its status."""
        try:
            return await self.admit(
                method, request, tuple(context.invocation_metadata() or ()), context.peer(), context.time_remaining()
            )
        except LeewayError as error:
            await abort(context, status_for(error)[1], correlation_id.get())

    async def admit(
        self, method: str, request: Any, metadata: tuple[Any, ...], peer: str, remaining: float | None
    ) -> tuple[Any, Any]:
        """Authenticates and authorizes one call, of any transport (gRPC here, Connect in http_api): ``metadata``
        its (key, value) headers, ``peer`` as gRPC spells it (``ipv4:10.1.2.3:5555``), ``remaining`` the seconds
        its caller gives it (None: no deadline). Raises LeewayError (logged as ``rpc.refused``); returns
        context-variable tokens to reset (``reset``)."""
        principal = ANONYMOUS
        budget = self.max_deadline if remaining is None else min(remaining, self.max_deadline)
        deadline = time.monotonic() + budget
        try:
            if self.required:
                principal = authz.authenticate_call(self.authenticator, peer, metadata)
            # The limit is per authenticated principal; without authentication there is nobody to tell apart.
            wait = self.limiter.acquire(principal.id) if self.required else 0.0
            if wait > 0:
                raise ResourceExhausted(
                    f"rate limit of {self.limiter.rate:g} calls per second exceeded; retry in {wait:.2f} s",
                    subject=f"principal:{principal.id}",
                    retry_after=wait,
                )
            if self.required:
                if _needs_lookup(principal, method):
                    # The scope reads what the request names: off the event loop, within the call's deadline.
                    token = current_deadline.set(deadline)
                    try:
                        await self.front.read(authz.check, principal, method, request, self.app)
                    finally:
                        current_deadline.reset(token)
                else:
                    authz.check(principal, method, request, self.app)
            elif method not in RULES:
                raise PermissionDenied(f"{method} is not an allowed method", reason=Reason.PERMISSION_DENIED)
        except LeewayError as error:
            code, _ = status_for(error)
            log.info("rpc.refused", method=method, principal=principal.id, peer=peer, code=code.name, reason=error.reason)
            raise
        return current_principal.set(principal), current_deadline.set(deadline)

    async def screen(self, method: str, request: Any, response: Any) -> Any:
        """``response`` with only what the caller may read (a budget in an answer needs GetBudget's permission);
        for a unary call admitted by ``admit``, of any transport."""
        if not self.required:
            return response
        principal = current_principal.get()
        if _needs_lookup(principal, authz.GET_BUDGET):
            return await self.front.read(authz.visible, principal, method, request, response, self.app)
        return authz.visible(principal, method, request, response, self.app)


def _needs_lookup(principal: Principal, method: str) -> bool:
    """False if one of the caller's roles may call ``method`` whatever the request names (no read needed)."""
    scopes = [scope for role, scope in RULES.get(method, {}).items() if principal.has(role)]
    return bool(scopes) and not any(scope is authz.anything for scope in scopes)


class _Undecodable:
    """Stands in for a request whose bytes are not a protobuf of the request message."""


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpcio answers bytes that do not parse with a bare INTERNAL before any servicer runs; this lets the call
    through as _Undecodable so that it is refused with INVALID_ARGUMENT and an ErrorInfo like any bad input."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure is the caller's malformed request
            return _Undecodable()

    return parse


async def _refuse_undecodable(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, _Undecodable):
        error = InvalidArgument(
            [FieldViolation("request", "is not a valid serialized message of the request type")],
            reason=Reason.MALFORMED_REQUEST,
        )
        log.info("rpc.refused", reason=error.reason, code="INVALID_ARGUMENT", peer=context.peer())
        await abort(context, status_for(error)[1], correlation_id.get())


def reset(tokens: tuple[Any, Any]) -> None:
    """Undoes ``AuthInterceptor.admit``'s context variables."""
    current_principal.reset(tokens[0])
    current_deadline.reset(tokens[1])


def _refusal(handler: Any, error: LeewayError) -> Any:
    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        code, status = status_for(error)
        log.info("rpc.refused", reason=error.reason, code=code.name, peer=context.peer())
        await abort(context, status)

    return grpc.stream_stream_rpc_method_handler(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
