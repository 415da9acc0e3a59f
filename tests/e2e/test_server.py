"""The server process: health, reflection, configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def test_health_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "leeway.v1.BudgetService", "leeway.v1.ActionService", "leeway.v1.TeamService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"leeway.v1.BudgetService", "leeway.v1.ActionService", "leeway.v1.TeamService", "grpc.health.v1.Health"} <= names
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="leeway.v1.BudgetService")
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert replies[0].file_descriptor_response.file_descriptor_proto, "descriptor of leeway.v1.BudgetService"


def test_invalid_max_workers_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(
        LEEWAY_GRPC_ADDRESS="127.0.0.1:0",
        LEEWAY_HTTP_ADDRESS="127.0.0.1:0",
        LEEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/x.sqlite",
        LEEWAY_GRPC_MAX_WORKERS="abc",
    )
    result = subprocess.run(
        [sys.executable, "-m", "leeway.cli", "serve", "--port-file", str(tmp_path / "port")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "LEEWAY_GRPC_MAX_WORKERS" in result.stderr
    assert "abc" in result.stderr
    assert not (tmp_path / "port").exists()
