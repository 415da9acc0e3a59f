"""Addresses that cannot be listened on: one line naming the address, what it is for and the setting."""

from __future__ import annotations

import socket

import grpc
import pytest

from leeway.listening import ListenError, check_listen, listen_error


@pytest.fixture
def busy() -> str:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield f"127.0.0.1:{holder.getsockname()[1]}"
    holder.close()


def test_a_port_in_use_is_named_with_what_and_setting(busy: str) -> None:
    with pytest.raises(ListenError) as info:
        check_listen(busy, "metrics", "LEEWAY_METRICS_ADDRESS")
    message = str(info.value)
    assert message.startswith(f"cannot listen on {busy} for metrics (LEEWAY_METRICS_ADDRESS): address already in use")
    assert "\n" not in message


def test_free_ports_and_port_zero_pass() -> None:
    check_listen("127.0.0.1:0", "gRPC", "LEEWAY_GRPC_ADDRESS")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    check_listen(f"127.0.0.1:{port}", "gRPC", "LEEWAY_GRPC_ADDRESS")


def test_unknown_hosts_and_foreign_addresses_are_clear() -> None:
    with pytest.raises(ListenError, match="no such address on this host"):
        check_listen("192.0.2.1:8080", "HTTP", "LEEWAY_HTTP_ADDRESS")  # TEST-NET-1: never this host's
    with pytest.raises(ListenError, match="cannot resolve"):
        check_listen("no-such-host.invalid:8080", "HTTP", "LEEWAY_HTTP_ADDRESS")


def test_grpcs_own_bind_failure_becomes_the_same_line(busy: str) -> None:
    server = grpc.server(thread_pool=None)
    try:
        with pytest.raises(RuntimeError) as raised:
            server.add_insecure_port(busy)
    finally:
        server.stop(0)
    error = listen_error(busy, "gRPC", "LEEWAY_GRPC_ADDRESS", raised.value)
    assert str(error) == (
        f"cannot listen on {busy} for gRPC (LEEWAY_GRPC_ADDRESS): address already in use "
        "(another process listens there; stop it or choose another port)"
    )
    assert "already in use" in str(listen_error(busy, "metrics", "LEEWAY_METRICS_ADDRESS", OSError(98, "Address in use")))
