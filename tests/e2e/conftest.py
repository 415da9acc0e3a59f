"""End-to-end fixtures: a real `leeway serve` process per module (SQLite and PostgreSQL) and clients for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from builders import database

STARTUP_TIMEOUT = 20.0
SHUTDOWN_TIMEOUT = 15.0


class ServerProcess:
    """`python -m leeway.cli serve` on 127.0.0.1:<ephemeral port>, logs in a file."""

    def __init__(self, database_url: str, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        #: The HTTP/JSON (Connect) front's port (0 while it is off or the server is down).
        self.http_port = 0
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The HTTP/JSON (Connect) front's base URL."""
        assert self.http_port, "the HTTP front is off on this server"
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
        env.update(
            LEEWAY_GRPC_ADDRESS="127.0.0.1:0",
            LEEWAY_HTTP_ADDRESS="127.0.0.1:0",
            LEEWAY_DATABASE_URL=self.database_url,
            LEEWAY_LOG_FORMAT="json",
            LEEWAY_SHUTDOWN_GRACE_SECONDS="2",
            LEEWAY_EXPIRY_INTERVAL_SECONDS="0.2",
            LEEWAY_METRICS_ADDRESS="127.0.0.1:0",
            LEEWAY_PROJECTIONS_METRICS_ADDRESS="127.0.0.1:0",
        )
        env.update(self.extra_env)
        return env

    def logs(self) -> str:
        path = self.workdir / f"server-{self.starts}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, wait_serving: bool = True) -> None:
        """Starts `leeway serve` and waits for its port (and, unless told not to, for health SERVING)."""
        assert self.proc is None, "already running"
        self.starts += 1
        port_file = self.workdir / f"port-{self.starts}"
        http_port_file = self.workdir / f"http-port-{self.starts}"
        log = open(self.workdir / f"server-{self.starts}.log", "wb")
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "leeway.cli", "serve",
                    "--port-file", str(port_file), "--http-port-file", str(http_port_file),
                ],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                pytest.fail(f"server exited with {code} during start-up:\n{self.logs()}", pytrace=False)
            text = port_file.read_text() if port_file.exists() else ""
            if text.endswith("\n"):
                self.port = int(text)
                http_text = http_port_file.read_text() if http_port_file.exists() else ""
                self.http_port = int(http_text) if http_text.endswith("\n") else 0
                break
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"server wrote no port file within {STARTUP_TIMEOUT}s:\n{self.logs()}", pytrace=False)
            time.sleep(0.05)
        if wait_serving:
            self.wait_serving(deadline)

    def wait_serving(self, deadline: float) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"server not SERVING within {STARTUP_TIMEOUT}s:\n{self.logs()}", pytrace=False)
                time.sleep(0.05)

    @classmethod
    def on_sqlite(cls, workdir: Path, extra_env: dict[str, str] | None = None) -> ServerProcess:
        """A server on a SQLite database of its own in ``workdir``."""
        return cls(f"sqlite:///{workdir / 'leeway.sqlite'}", workdir, extra_env)

    @contextmanager
    def running(self) -> Iterator[ServerProcess]:
        """The server started (SERVING), and stopped afterwards (it must exit 0) unless a test stopped it already."""
        self.start()
        try:
            yield self
        finally:
            if self.proc is not None:
                self.stop_cleanly()

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code (kills and fails the test after SHUTDOWN_TIMEOUT)."""
        assert self.proc is not None, "not running"
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"server did not exit within {SHUTDOWN_TIMEOUT}s of SIGTERM:\n{self.logs()}", pytrace=False)
            raise  # unreachable

    def stop_cleanly(self) -> None:
        code = self.stop()
        assert code == 0, f"server exited with {code} after SIGTERM:\n{self.logs()}"

    def metrics_url(self) -> str:
        """The /metrics URL, read from the server's "serving" log line (its metrics port is picked at start)."""
        for line in self.logs().splitlines():
            if '"serving"' in line:
                address = json.loads(line)["metrics"]
                assert address != "off", "metrics are off on this server"
                return f"http://{address}/metrics"
        pytest.fail(f"no serving line in the server log:\n{self.logs()}", pytrace=False)
        raise AssertionError  # unreachable

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database URL of its own for one test module, on each engine."""
    directory = tmp_path_factory.mktemp("e2e-db") if request.param == "sqlite" else None
    with database(request.param, directory, prefix="e2e") as url:
        yield url


@pytest.fixture(scope="module")
def server(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One running server per module and engine; must exit 0 within 15 s of SIGTERM."""
    with ServerProcess(engine_url, tmp_path_factory.mktemp("e2e-server")).running() as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[object]:
    from leeway_client import LeewayClient

    with LeewayClient(server.target, timeout=10.0) as c:
        yield c


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Unique ids (employee, team, customer, request) so tests sharing a server never collide."""
    tag = uuid.uuid4().hex[:10]
    return lambda prefix="emp": f"{prefix}-{tag}"


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Servers for one test (e.g. to restart); any still running at teardown must stop cleanly."""
    made: list[ServerProcess] = []

    def make(database_url: str, extra_env: dict[str, str] | None = None) -> ServerProcess:
        process = ServerProcess(database_url, tmp_path / f"srv{len(made)}", extra_env)
        process.workdir.mkdir()
        made.append(process)
        return process

    yield make
    for process in made:
        if process.proc is not None:
            process.stop_cleanly()
