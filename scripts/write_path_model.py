"""How much Python work per write the 0.8 target leaves: a model of Leeway's write path, not of Leeway.

A toy gRPC server with the same shape as `leeway serve`'s write path and nothing else: grpcio's threaded server
(32 workers), a handler that spends H µs of Python before and after handing the call to one writer thread, and the
writer, which takes everything queued, waits 1 ms (the read-ahead round trip), spends W µs of Python per call (the
decisions and the events), waits 1 ms more (the commit) and wakes the callers: group commit with no database.
Beside it, grpc.health.v1 Check on the same server. The load is `make bench`'s (32 calls in flight, the
same client), so RecordAction's ratio in `make bench` compares with this script's ratio at the Python work per
call the bench's CPU columns show (server CPU per RecordAction minus per Check).

Usage: .venv/bin/python scripts/write_path_model.py [--seconds 5] [--work 0,100,200,400,700] [--aio]

--work: total Python µs per write (H + W, split evenly). --aio: also the same toy on grpc.aio (one event loop
thread; the writer completes the callers' futures through the loop).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))


def burn(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


def serve(mode: str, port: int, handler_us: float, writer_us: float) -> None:
    queue: collections.deque[Callable[[], None]] = collections.deque()
    ready = threading.Condition()

    def writer() -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                batch = list(queue)
                queue.clear()
            time.sleep(0.001)  # the read-ahead query
            for _ in batch:
                burn(writer_us)
            time.sleep(0.001)  # the commit
            for done in batch:
                done()

    threading.Thread(target=writer, daemon=True).start()

    def enqueue(done: Callable[[], None]) -> None:
        with ready:
            queue.append(done)
            ready.notify()

    if mode == "sync":

        def write(request: bytes, context: grpc.ServicerContext) -> bytes:
            burn(handler_us / 2)
            finished = threading.Event()
            enqueue(finished.set)
            finished.wait()
            burn(handler_us / 2)
            return b"ok"

        server = grpc.server(futures.ThreadPoolExecutor(32))
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("model.Model", {"Write": grpc.unary_unary_rpc_method_handler(write)})]
        )
        checks = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        print("ready", flush=True)
        server.wait_for_termination()
        return

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def write(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            burn(handler_us / 2)
            finished = loop.create_future()
            enqueue(lambda: loop.call_soon_threadsafe(finished.set_result, None))
            await finished
            burn(handler_us / 2)
            return b"ok"

        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("model.Model", {"Write": grpc.unary_unary_rpc_method_handler(write)})]
        )
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def measure(mode: str, work_us: float, seconds: float) -> str:
    import bench

    with socket_port() as port:
        pass
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, str(port), str(work_us / 2), str(work_us / 2)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            checks = health_pb2_grpc.HealthStub(channel)
            write = channel.unary_unary("/model.Model/Write")

            def call_write(_: int) -> None:
                write(b"x", timeout=30)

            def call_check(_: int) -> None:
                checks.Check(health_pb2.HealthCheckRequest(), timeout=30)

            bench.run_load(32, 1.0, call_write)  # warm-up
            rate, _, p99, cpu = bench.measured_load(process.pid, 32, seconds, call_write)[:4]
            base, _, b99, bcpu = bench.measured_load(process.pid, 32, seconds, call_check)[:4]
    finally:
        process.terminate()
        process.wait(30)
    return (
        f"| {mode} | {work_us:,.0f} | {rate:,.0f} | {p99:.1f} | {base:,.0f} | {b99:.1f} | {rate / base:.2f} | "
        f"{p99 / b99:.1f} | {cpu:.2f} / {bcpu:.2f} |"
    )


class socket_port:
    """A free TCP port on 127.0.0.1."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *_: object) -> None:
        self.sock.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--work", default="0,100,200,400,700", help="Python µs per write, comma-separated")
    parser.add_argument("--aio", action="store_true", help="also measure the grpc.aio version")
    args = parser.parse_args()
    print("| server | Python µs per write | writes/s | p99 ms | Check/s | p99 ms | ratio | p99 ratio | server CPU ms per write / per Check |")
    print("|---|---|---|---|---|---|---|---|---|")
    for work in (float(w) for w in args.work.split(",")):
        for mode in ("sync", "aio") if args.aio else ("sync",):
            print(measure(mode, work, args.seconds), flush=True)


if __name__ == "__main__":
    main()
