"""The projections in a child process of `leeway serve` (``LEEWAY_PROJECTIONS=subprocess``).

In-process runner threads share the server's GIL with the gRPC threads and the group-commit writer: under write
load they take about a fifth of the server's CPU. A child process (``leeway projections run --wake-on-stdin``)
does the same work on another core. The server supervises it:

- it starts with the server and gets the server's settings (database, poll interval, logging) through its
  environment;
- the server writes a byte to the child's stdin after each local commit (one per group-commit batch): the child's runners wake at once, as
  in-process runners do (other replicas' commits are picked up by polling, as always); a reader waiting for
  its own write sends an urgent byte, which also cuts the runners' batching pause short;
- if the child dies it is started again (after 1 s, doubling up to 30 s while it keeps dying); the read models
  lose nothing, since every batch is committed with its tracking position and the next run resumes there;
- on shutdown the server closes the child's stdin; the child sees end-of-file, finishes its batch and exits
  (it is terminated if it has not after a few seconds). A child whose server died sees the same end-of-file.

Queries in the server wait for the stored tracking position as with ``external`` (the stored position decides).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from ..runtime import name_os_thread

log = structlog.get_logger("leeway.projections")

#: What the server writes to the child's stdin.
WAKE, URGENT = b".", b"!"


class ProjectionProcess:
    """Starts, wakes, restarts and stops the child process that runs the projections."""

    def __init__(
        self,
        environ: dict[str, str],
        *,
        command: list[str] | None = None,
        on_exit: Callable[[], None] | None = None,
    ):
        self.environ = environ
        #: Called each time the child exits unexpectedly (a metric).
        self.on_exit = on_exit
        self.command = command or [sys.executable, "-m", "leeway.cli", "projections", "run", "--wake-on-stdin"]
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="leeway-projections-child", daemon=True)
        self._supervisor.start()

    def _spawn(self) -> None:
        process = subprocess.Popen(  # noqa: S603 - our own executable and arguments
            self.command, env=self.environ, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True
        )
        assert process.stdin is not None
        os.set_blocking(process.stdin.fileno(), False)  # a wake never blocks a committing thread
        with self._lock:
            self.process = process
        log.info("projections.child_started", pid=process.pid)

    def _supervise(self) -> None:
        name_os_thread()
        backoff = 1.0
        while not self._stopping.is_set():
            process = self.process
            assert process is not None
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            log.warning("projections.child_exited", pid=process.pid, code=code, restart_in_seconds=backoff)
            if self.on_exit is not None:
                self.on_exit()
            if self._stopping.wait(backoff):
                return
            # A child that ran for a while before dying starts the back-off again.
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            try:
                self._spawn()
            except OSError as error:
                log.error("projections.child_failed_to_start", error=str(error))
                continue
            self.restarts += 1

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            process = self.process
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()  # end-of-file: the child finishes its batch and exits
            except OSError:
                pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None else None

    # ------------------------------------------------------------------ waking

    def wake(self, *_: Any) -> None:
        self._send(WAKE)

    def urge(self) -> None:
        self._send(URGENT)

    def _send(self, signal: bytes) -> None:
        with self._lock:
            process = self.process
            if process is None or process.stdin is None or process.stdin.closed:
                return
            try:
                process.stdin.write(signal)
                process.stdin.flush()
            except (BlockingIOError, BrokenPipeError, ValueError, OSError):
                # A full pipe already holds plenty of wake-ups; a dead child is the supervisor's business.
                pass


def listen_for_wakes(stdin: Any, wake: Any, urge: Any, stop: threading.Event) -> threading.Thread:
    """The child's side: wakes the runners for every byte the server writes, and sets ``stop`` at end-of-file
    (the server closed the pipe, or died)."""

    def loop() -> None:
        name_os_thread()
        try:
            while True:
                chunk = stdin.read1(4096) if hasattr(stdin, "read1") else stdin.read(1)
                if not chunk:
                    break
                if URGENT in chunk:
                    urge()
                else:
                    wake()
        except (OSError, ValueError):
            pass
        stop.set()

    thread = threading.Thread(target=loop, name="leeway-wake-listener", daemon=True)
    thread.start()
    return thread
