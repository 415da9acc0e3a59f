"""structlog set-up: JSON lines for machines, a readable console when attached to a terminal.

JSON lines (not attached to a terminal) are buffered: info and debug lines from every thread are written by one
background thread, ``flush_seconds`` apart, in one write; warnings and errors are written at once, after whatever
is pending, so the order of lines is kept and nothing worse than an info line waits. Writing every line from the
thread that logged it (a write and a flush per line, the usual set-up) cost the server about 20% of its
RecordAction throughput at the default level: each write lets go of the interpreter lock, and under load taking
it back is slow (README, Performance). Pending lines are written at exit; a process killed with SIGKILL loses at
most the last ``flush_seconds`` of info lines. ``flush_seconds=0`` writes every line at once, as before.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from typing import Any, TextIO

import structlog

from . import tracing
from .runtime import name_os_thread

#: LEEWAY_LOG_FLUSH_SECONDS' default.
DEFAULT_FLUSH_SECONDS = 0.1


class LineBuffer:
    """Rendered lines from any thread, written to ``file`` in batches by a background thread."""

    def __init__(self, file: TextIO, flush_seconds: float):
        self.file = file
        self.flush_seconds = flush_seconds
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()  # held only to add or take lines, never during a write
        self._write_lock = threading.Lock()  # one write at a time, in the order lines were taken
        self._flusher: threading.Thread | None = None

    def add(self, line: str) -> None:
        with self._pending_lock:
            self._pending.append(line)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_periodically, name="leeway-log-writer", daemon=True)
                self._flusher.start()

    def add_and_flush(self, line: str) -> None:
        with self._pending_lock:
            self._pending.append(line)
        self.flush()

    def flush(self) -> None:
        with self._write_lock:
            with self._pending_lock:
                lines, self._pending = self._pending, []
            if not lines:
                return
            try:
                self.file.write("\n".join(lines) + "\n")
                self.file.flush()
            except (OSError, ValueError):  # stderr closed or gone: nowhere to log to
                pass

    def _flush_periodically(self) -> None:
        name_os_thread()
        while True:
            time.sleep(self.flush_seconds)
            self.flush()


class BufferedLogger:
    """A structlog logger (the final step after the renderer) that hands lines to a ``LineBuffer``."""

    def __init__(self, buffer: LineBuffer):
        self._buffer = buffer

    def msg(self, message: str) -> None:
        self._buffer.add(message)

    def msg_now(self, message: str) -> None:
        self._buffer.add_and_flush(message)

    debug = info = log = msg
    warning = warn = error = critical = exception = fatal = failure = msg_now


_buffer: LineBuffer | None = None


def configure_logging(level: str = "info", fmt: str = "auto", flush_seconds: float = DEFAULT_FLUSH_SECONDS) -> None:
    global _buffer
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    factory: Any
    if use_console or flush_seconds <= 0:
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    else:
        flush_logs()
        if _buffer is None:
            atexit.register(flush_logs)
        _buffer = LineBuffer(sys.stderr, flush_seconds)
        buffer = _buffer

        def factory(*_: Any) -> BufferedLogger:
            return BufferedLogger(buffer)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            tracing.add_trace_ids,  # trace_id and span_id inside a span (tracing on)
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if not use_console else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def flush_logs() -> None:
    """Writes pending log lines now (e.g. the start-up line others wait for)."""
    if _buffer is not None:
        _buffer.flush()
