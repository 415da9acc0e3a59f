"""The HTTP/JSON front's pieces that need no server: its socket, its settings, and how the one error table's
statuses become Connect errors (the front itself is tested end to end: tests/e2e/test_http_connect.py)."""

from __future__ import annotations

import asyncio
import base64
import socket

import grpc
import pytest
from connectrpc._protocol import ConnectWireError
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.rpc import error_details_pb2

from leeway.domain import errors as domain
from leeway.domain.reasons import Reason
from leeway.grpc_api.errors import STATUS_TABLE, status_for
from leeway.http_api.connect import _completed, connect_error
from leeway.http_api.front import bind
from leeway.settings import Settings, SettingsError


def test_the_socket_is_tcp_so_connections_get_no_nagle() -> None:
    sock = bind("127.0.0.1:0")
    assert sock.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        try:
            return await asyncio.wait_for(seen, 5)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_a_port_in_use_is_an_os_error() -> None:
    taken = bind("127.0.0.1:0")
    with pytest.raises(OSError):
        bind(f"127.0.0.1:{taken.getsockname()[1]}")
    taken.close()


def test_http_settings() -> None:
    assert Settings.from_env({}).http_address == "127.0.0.1:8080"
    assert Settings.from_env({}).http_enabled and Settings.from_env({}).http_cors_origins == ()
    assert not Settings.from_env({"LEEWAY_HTTP_ADDRESS": "off"}).http_enabled
    settings = Settings.from_env({"LEEWAY_HTTP_CORS_ORIGINS": "https://crm.example.com/, http://localhost:3000"})
    assert settings.http_cors_origins == ("https://crm.example.com", "http://localhost:3000")
    assert Settings.from_env({"LEEWAY_HTTP_CORS_ORIGINS": "*"}).http_cors_origins == ("*",)
    for name, value in (
        ("LEEWAY_HTTP_ADDRESS", "8080"),
        ("LEEWAY_HTTP_ADDRESS", "localhost:99999"),
        ("LEEWAY_HTTP_CORS_ORIGINS", "crm.example.com"),
        ("LEEWAY_HTTP_CORS_ORIGINS", "https://crm.example.com/app"),
        ("LEEWAY_HTTP_CORS_ORIGINS", "ftp://crm.example.com"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


@pytest.mark.parametrize("error_class", [row[0] for row in STATUS_TABLE])
def test_every_status_of_the_table_keeps_its_code_and_details(error_class: type[domain.LeewayError]) -> None:
    error = {
        domain.InvalidArgument: lambda: domain.InvalidArgument([domain.FieldViolation("amount", "is required")]),
        domain.NotFound: lambda: domain.NotFound("no such budget", reason=Reason.BUDGET_NOT_FOUND,
                                                 resource_type="leeway.v1.Budget", resource_name="budgets/x"),
        domain.ResourceExhausted: lambda: domain.ResourceExhausted("slow down", subject="principal:p", retry_after=1.5),
        domain.PreconditionFailed: lambda: domain.PreconditionFailed(
            "over", reason=Reason.BUDGET_EXHAUSTED,
            violations=[domain.PreconditionViolation("BUDGET_EXHAUSTED", "budgets/x", "over")],
        ),
    }.get(error_class, lambda: error_class("refused"))()  # type: ignore[call-arg]  # fmt: skip
    grpc_code, status = status_for(error)
    connect = connect_error(status)
    assert connect.code.name == ("CANCELED" if grpc_code is grpc.StatusCode.CANCELLED else grpc_code.name)
    assert connect.message == status.message
    wire = ConnectWireError.from_exception(connect).to_dict()
    assert [d["type"] for d in wire["details"]] == [d.type_url.rpartition("/")[2] for d in status.details]
    assert [base64.b64decode(d["value"] + "===") for d in wire["details"]] == [d.value for d in status.details]
    assert wire["details"][0]["debug"]["reason"] == error.reason


def test_the_runtimes_own_errors_get_an_error_info() -> None:
    malformed = _completed(ConnectError(Code.INVALID_ARGUMENT, "unmarshal message: bad"))
    wire = ConnectWireError.from_exception(malformed).to_dict()
    assert wire["code"] == "invalid_argument"
    assert wire["details"][0]["debug"]["reason"] == "MALFORMED_REQUEST"
    assert wire["details"][1]["debug"]["fieldViolations"][0]["field"] == "request"
    late = ConnectWireError.from_exception(_completed(ConnectError(Code.DEADLINE_EXCEEDED, "Request timed out")))
    assert late.code is Code.DEADLINE_EXCEEDED and late.details[0].type_name == "google.rpc.ErrorInfo"
    other = _completed(ConnectError(Code.RESOURCE_EXHAUSTED, "message is larger than configured max 4194304"))
    info = error_details_pb2.ErrorInfo.FromString(other.details[0].message_bytes)
    assert other.code is Code.RESOURCE_EXHAUSTED and info.domain == "leeway"
    bug = _completed(RuntimeError("secret internals"))
    assert bug.code is Code.INTERNAL and "secret" not in bug.message
    ours = connect_error(status_for(domain.PermissionDenied("no"))[1])
    assert _completed(ours) is ours


def test_a_connection_that_never_finishes_its_headers_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow loris: uvicorn alone would keep a connection that sends nothing (or half its headers) for ever."""
    from leeway.http_api import front

    monkeypatch.setattr(front._Protocol, "headers_seconds", 0.3)

    async def app(scope: dict, receive: object, send: object) -> None:  # answers every request with 204
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def scenario() -> tuple[bytes, bytes, bytes]:
        http = front.HttpFront(app, bind("127.0.0.1:0"), max_connections=10)
        await http.start()
        try:
            port = http.port
            silent = await asyncio.open_connection("127.0.0.1", port)
            trickle = await asyncio.open_connection("127.0.0.1", port)
            trickle[1].write(b"POST / HTTP/1.1\r\nHost: x\r\n")
            prompt = await asyncio.open_connection("127.0.0.1", port)
            prompt[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answered = await asyncio.wait_for(prompt[0].readuntil(b"\r\n\r\n"), 5)
            closed = [await asyncio.wait_for(reader.read(), 5) for reader, _ in (silent, trickle)]
            for _, writer in (silent, trickle, prompt):
                writer.close()
            return answered, closed[0], closed[1]
        finally:
            await http.stop(1.0)

    answered, silent, trickle = asyncio.run(scenario())
    assert answered.startswith(b"HTTP/1.1 204")
    assert silent == b"" and trickle == b"", "closed without an answer"
