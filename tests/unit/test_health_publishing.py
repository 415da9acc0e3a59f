"""The store's health is published to the health service when it changes, not on every probe: each publication
wakes every open Health/Watch stream (grpcio-health-checking's asyncio servicer notifies all of them even when
the status is the same), so publishing every interval made 2,000 idle watchers a steady load (issue 18)."""

from __future__ import annotations

import asyncio
import threading

from grpc_health.v1 import health_pb2
from leeway.server import LeewayServer


class _Metric:
    def set(self, value: float) -> None:
        self.value = value


class _Metrics:
    store_up = _Metric()


class _Health:
    def __init__(self) -> None:
        self.published: list[tuple[str, int]] = []

    async def set(self, name: str, status: int) -> None:
        self.published.append((name, status))


def test_a_status_is_published_once_per_change() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        server = object.__new__(LeewayServer)  # only what _store_changed uses
        server.loop, server.health, server.metrics = loop, _Health(), _Metrics()
        server._stopping, server._published, server._publish_lock = threading.Event(), None, threading.Lock()
        for serving in (True, True, True, False, False, True, True):
            server._store_changed(serving)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)  # let the publications run
        statuses = [status for name, status in server.health.published if name == ""]
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert statuses == [serving, not_serving, serving]
        assert ("liveness", serving) in server.health.published
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
