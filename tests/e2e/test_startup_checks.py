"""Start-up and operations as an operator meets them, on real `leeway serve` processes: an address already in use
(one line, exit 2), JSON logs with no plain-text line on stderr (start-up, a failed TLS handshake, the
projections child, shutdown, configuration errors), the warning for unknown LEEWAY_* variables, and
`leeway health` against TLS and mutual-TLS servers."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leeway.devcerts import write_dev_certs

from .conftest import ServerProcess


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leeway.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def not_json(text: str) -> list[str]:
    bad = []
    for line in text.splitlines():
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(line)
        except ValueError:
            bad.append(line)
    return bad


@pytest.fixture
def busy() -> Iterator[str]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield f"127.0.0.1:{holder.getsockname()[1]}"
    holder.close()


@pytest.mark.parametrize("fmt", ["console", "json"])
@pytest.mark.parametrize("listener", ["grpc", "metrics", "http"])
def test_an_address_in_use_is_one_line_and_exit_status_2(tmp_path: Path, busy: str, fmt: str, listener: str) -> None:
    env = clean_env(
        LEEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/x.sqlite",
        LEEWAY_LOG_FORMAT=fmt,
        LEEWAY_GRPC_ADDRESS=busy if listener == "grpc" else "127.0.0.1:0",
        LEEWAY_METRICS_ADDRESS=busy if listener == "metrics" else "off",
        LEEWAY_HTTP_ADDRESS=busy if listener == "http" else "127.0.0.1:0",
    )
    result = run_cli("serve", "--port-file", str(tmp_path / "port"), env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    setting, what = {"grpc": ("LEEWAY_GRPC_ADDRESS", "gRPC"), "metrics": ("LEEWAY_METRICS_ADDRESS", "metrics"),
                     "http": ("LEEWAY_HTTP_ADDRESS", "HTTP")}[listener]
    expected = f"cannot listen on {busy} for {what} ({setting}): address already in use"
    if fmt == "json":
        line = json.loads(lines[0])
        assert line["event"] == "config.cannot_listen" and line["level"] == "error"
        assert line["message"].startswith(expected)
    else:
        assert lines[0].startswith(f"leeway: {expected}")
    assert not (tmp_path / "port").exists()


def test_configuration_errors_are_one_json_line_with_json_logs(tmp_path: Path) -> None:
    env = clean_env(LEEWAY_LOG_FORMAT="json", LEEWAY_GRPC_MAX_WORKERS="abc", LEEWAY_GRPC_ADDRESS="nowhere")
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert not_json(result.stderr) == [] and len(result.stderr.splitlines()) == 1
    line = json.loads(result.stderr)
    assert line["event"] == "config.invalid" and len(line["problems"]) == 2
    assert "LEEWAY_GRPC_MAX_WORKERS='abc'" in line["message"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_dev_certs(tmp_path_factory.mktemp("certs"))


def test_with_json_logs_every_stderr_line_is_json(tmp_path: Path, certs: dict[str, str]) -> None:
    """Start-up (with an unknown variable), the projections child, a client failing the mutual-TLS handshake
    (gRPC core logs it below Python), a plain-HTTP caller, calls, and a graceful shutdown."""
    server = ServerProcess(
        f"sqlite:///{tmp_path}/leeway.sqlite",
        tmp_path,
        {
            "LEEWAY_TLS_CERT_FILE": certs["server_cert"],
            "LEEWAY_TLS_KEY_FILE": certs["server_key"],
            "LEEWAY_TLS_CLIENT_CA_FILE": certs["ca_cert"],
            "LEEWAY_PROJECTIONS": "subprocess",
            "LEEWAY_METRICS_ADDRESS": "off",
            "LEEWAY_GRPC_ADRESS": "0.0.0.0:1",
        },
    )
    server.start(wait_serving=False)
    try:
        read = lambda name: Path(certs[name]).read_bytes()  # noqa: E731
        good = grpc.ssl_channel_credentials(read("ca_cert"), read("client_key"), read("client_cert"))
        deadline = time.monotonic() + 20
        with grpc.secure_channel(server.target, good) as channel:
            while health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status != 1:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with grpc.secure_channel(server.target, grpc.ssl_channel_credentials(read("ca_cert"))) as channel:
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        with socket.create_connection(("127.0.0.1", server.port), timeout=3) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            plain.recv(100)
        time.sleep(1.5)  # the projections child is up and has said so
    finally:
        assert server.stop() == 0
    logs = server.logs()
    assert not_json(logs) == [], logs
    events = [json.loads(line) for line in logs.splitlines()]
    names = [e["event"] for e in events]
    assert "serving" in names and "shutdown.done" in names and "projections.running" in names, names
    assert any(e["event"] == "grpc.core" and "andshake" in e.get("message", "") for e in events), names
    unknown = [e for e in events if e["event"] == "config.unknown_variables"]
    assert len(unknown) == 1 and unknown[0]["level"] == "warning"
    assert unknown[0]["variables"] == [{"name": "LEEWAY_GRPC_ADRESS", "hint": "did you mean LEEWAY_GRPC_ADDRESS?"}]
    assert "0.0.0.0:1" not in logs  # names, never values


def test_no_warning_when_every_variable_is_known(tmp_path: Path) -> None:
    server = ServerProcess(f"sqlite:///{tmp_path}/leeway.sqlite", tmp_path, {"LEEWAY_TEST_POSTGRES_URL": "postgresql://x/y"})
    server.start()
    server.stop_cleanly()
    assert "config.unknown_variables" not in server.logs()


def _self_signed(directory: Path) -> tuple[str, str]:
    """A self-signed server certificate for localhost (its own root): no separate CA file exists."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leeway.example")])
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("leeway.example"), x509.IPAddress(ipaddress.ip_address("10.9.8.7"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "self.pem", directory / "self-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_health_checks_tls_and_mutual_tls_servers_as_a_container_healthcheck_would(tmp_path: Path, certs: dict[str, str]) -> None:
    tls = {"LEEWAY_TLS_CERT_FILE": certs["server_cert"], "LEEWAY_TLS_KEY_FILE": certs["server_key"]}
    mutual = {**tls, "LEEWAY_TLS_CLIENT_CA_FILE": certs["ca_cert"]}
    self_cert, self_key = _self_signed(tmp_path)
    self_signed = {"LEEWAY_TLS_CERT_FILE": self_cert, "LEEWAY_TLS_KEY_FILE": self_key}
    servers = {}
    for name, settings in (("tls", tls), ("mutual", mutual), ("self", self_signed)):
        directory = tmp_path / name
        directory.mkdir()
        servers[name] = ServerProcess(f"sqlite:///{directory}/l.sqlite", directory, {**settings, "LEEWAY_METRICS_ADDRESS": "off"})
        servers[name].start(wait_serving=False)
    try:
        time.sleep(2)  # start-up; the checks below are what tells SERVING

        def health(server: str, settings: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            # The server's own environment (as in its container), its address as the container's 0.0.0.0.
            env = clean_env(**settings, LEEWAY_GRPC_ADDRESS=f"0.0.0.0:{servers[server].port}", **extra)
            return run_cli("health", "--timeout", "5", *args, env=env)

        def eventually_ok(server: str, settings: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            deadline = time.monotonic() + 20
            while (result := health(server, settings, *args, **extra)).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert result.returncode == 0, result.stdout + result.stderr
            return result

        # TLS: the CA from LEEWAY_HEALTH_CA_FILE (or --ca-file); without it the system's CAs do not know ours.
        ok = eventually_ok("tls", tls, LEEWAY_HEALTH_CA_FILE=certs["ca_cert"])
        assert "SERVING (TLS, trusting LEEWAY_HEALTH_CA_FILE)" in ok.stdout
        assert eventually_ok("tls", tls, "--ca-file", certs["ca_cert"]).returncode == 0
        untrusted = health("tls", tls)
        assert untrusted.returncode == 1 and "LEEWAY_HEALTH_CA_FILE" in untrusted.stderr
        # Plaintext against TLS fails; TLS is chosen by the server's own settings, not by luck.
        assert health("tls", {}, "--timeout", "2").returncode == 1

        # Mutual TLS: without a client certificate the hint says which settings to give.
        refused = health("mutual", mutual, LEEWAY_HEALTH_CA_FILE=certs["ca_cert"])
        assert refused.returncode == 1 and "LEEWAY_HEALTH_CERT_FILE" in refused.stderr
        ok = eventually_ok(
            "mutual", mutual,
            LEEWAY_HEALTH_CA_FILE=certs["ca_cert"],
            LEEWAY_HEALTH_CERT_FILE=certs["client_cert"],
            LEEWAY_HEALTH_KEY_FILE=certs["client_key"],
        )
        assert "SERVING (mutual TLS" in ok.stdout
        ok = eventually_ok(
            "mutual", {}, "--address", f"localhost:{servers['mutual'].port}",
            "--ca-file", certs["ca_cert"], "--cert-file", certs["client_cert"], "--key-file", certs["client_key"],
        )
        # The check's own mistakes are exit status 2 with one line.
        half = health("mutual", mutual, "--cert-file", certs["client_cert"])
        assert half.returncode == 2 and "--key-file" in half.stderr and len(half.stderr.splitlines()) == 1
        missing = health("mutual", mutual, "--ca-file", str(tmp_path / "nope.pem"))
        assert missing.returncode == 2 and "nope.pem" in missing.stderr

        # A self-signed certificate (its own root, naming neither 127.0.0.1 nor localhost): no CA option needed;
        # the name checked is the certificate's.
        ok = eventually_ok("self", self_signed)
        assert "trusting the root in LEEWAY_TLS_CERT_FILE, as leeway.example" in ok.stdout
    finally:
        for server in servers.values():
            if server.proc is not None:
                server.stop_cleanly()
