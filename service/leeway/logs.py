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
import io
import json
import logging
import os
import re
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
_json = False


def renders_json(fmt: str) -> bool:
    """Whether LEEWAY_LOG_FORMAT ``fmt`` means JSON lines: "json", or "auto" when stderr is not a terminal."""
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


def json_logging() -> bool:
    """Whether configure_logging chose JSON lines (then nothing else may write plain text to stderr)."""
    return _json


def configure_logging(level: str = "info", fmt: str = "auto", flush_seconds: float = DEFAULT_FLUSH_SECONDS) -> None:
    global _buffer, _json
    use_console = not renders_json(fmt) and fmt in ("auto", "console")
    _json = not use_console
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
    if _json:
        _json_everywhere()


class _StdlibToStructlog(logging.Handler):
    """Lines that libraries (psycopg's pool, eventsourcing, asyncio) log through the standard library, as JSON lines
    of ours (without it, Python's last-resort handler prints them as plain text)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            structlog.get_logger("leeway").log(record.levelno, record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - a log line must never break the caller
            self.handleError(record)


def _json_everywhere() -> None:
    """With JSON lines, what Python itself would print to stderr is logged as JSON instead: the standard library's
    log records (unless the embedding program configured logging itself), uncaught exceptions of the main thread
    and of other threads, and warnings."""
    import warnings

    root = logging.getLogger()
    if not any(isinstance(h, _StdlibToStructlog) for h in root.handlers) and not root.handlers:
        root.addHandler(_StdlibToStructlog())
        root.setLevel(logging.WARNING)
    log = structlog.get_logger("leeway")

    def uncaught(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, error, traceback)
            return
        log.critical("uncaught_exception", exc_info=(kind, error, traceback))
        flush_logs()

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        log.error(
            "thread.uncaught_exception",
            thread=getattr(args.thread, "name", ""),
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    def warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: Any, **__: Any) -> None:
        log.warning("python.warning", category=category.__name__, message=str(message), where=f"{filename}:{lineno}")

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
    warnings.showwarning = warning


def flush_logs() -> None:
    """Writes pending log lines now (e.g. the start-up line others wait for)."""
    if _buffer is not None:
        _buffer.flush()


# ---------------------------------------------------------------------------------------------------- native stderr

#: A gRPC core log line: severity, date, time, thread, file:line] message.
_NATIVE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]]+)\] ?(.*)$")
_NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_relay: tuple[threading.Thread, int] | None = None


def capture_native_stderr() -> None:
    """With JSON lines, what is written to file descriptor 2 below Python (gRPC core's own log lines, e.g. a
    client's failed TLS handshake; anything a child process such as the projections runner prints) becomes JSON
    lines too. Descriptor 2 becomes a pipe that a thread reads: a JSON line passes as it is, any other line is
    logged as a JSON line (``grpc.core`` with its severity and source, or ``stderr``). Python's own ``sys.stderr``
    keeps writing to the real stderr. Call before ``configure_logging``; undone at exit, after the pipe is read."""
    global _relay
    if _relay is not None:
        return
    sys.stderr.flush()
    try:
        real = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep clean
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(real, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    thread = threading.Thread(target=_relay_lines, args=(read_end,), name="leeway-stderr", daemon=True)
    thread.start()
    _relay = (thread, real)
    atexit.register(_stop_relay)


def _relay_lines(read_end: int) -> None:
    name_os_thread()
    log = structlog.get_logger("leeway")
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line.strip():
                continue
            try:
                json.loads(line)
                is_json = line.lstrip().startswith("{")
            except ValueError:
                is_json = False
            try:
                if is_json:
                    if _buffer is not None:
                        _buffer.add(line)
                    else:
                        sys.stderr.write(line + "\n")
                    continue
                native = _NATIVE.match(line)
                if native:
                    severity, source, message = native.groups()
                    log.log(_NATIVE_LEVELS[severity], "grpc.core", source=source.strip(), message=message)
                else:
                    log.warning("stderr", line=line)
            except Exception:  # noqa: BLE001 - the relay must keep reading, or writers to descriptor 2 block
                continue


def _stop_relay() -> None:
    """At exit: descriptor 2 back to the real stderr (which ends the pipe unless a child still holds it), the
    rest of the pipe relayed, every pending line written."""
    global _relay
    if _relay is None:
        return
    thread, real = _relay
    _relay = None
    try:
        os.dup2(real, 2)
    except OSError:
        return
    thread.join(timeout=2.0)
    flush_logs()
