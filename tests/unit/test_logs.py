"""Buffered JSON log lines (logs.py): info lines are written in batches by a background thread, warnings and
errors at once after whatever is pending, everything by exit."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time

from leeway.logs import BufferedLogger, LineBuffer


class Recorder(io.StringIO):
    """A file that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_info_lines_wait_for_the_flush_and_go_out_in_one_write() -> None:
    out = Recorder()
    logger = BufferedLogger(LineBuffer(out, flush_seconds=60))
    for n in range(100):
        logger.info(f"line {n}")
    assert out.getvalue() == ""  # nothing written from the logging thread
    logger._buffer.flush()
    assert out.getvalue().splitlines() == [f"line {n}" for n in range(100)]
    assert out.writes == 1


def test_the_background_thread_writes_pending_lines() -> None:
    out = Recorder()
    logger = BufferedLogger(LineBuffer(out, flush_seconds=0.05))
    logger.info("soon")
    deadline = time.monotonic() + 5
    while "soon" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert out.getvalue() == "soon\n"


def test_a_warning_is_written_at_once_after_what_is_pending() -> None:
    out = Recorder()
    logger = BufferedLogger(LineBuffer(out, flush_seconds=60))
    logger.info("first")
    logger.debug("second")
    logger.warning("third")
    assert out.getvalue().splitlines() == ["first", "second", "third"]
    logger.info("fourth")
    logger.error("fifth")
    logger.exception("sixth")  # structlog routes exception() to error(); both are immediate here
    assert out.getvalue().splitlines() == ["first", "second", "third", "fourth", "fifth", "sixth"]


def test_lines_from_many_threads_are_all_written_whole() -> None:
    out = Recorder()
    buffer = LineBuffer(out, flush_seconds=0.01)
    logger = BufferedLogger(buffer)

    def log(t: int) -> None:
        for n in range(500):
            (logger.warning if n % 50 == 0 else logger.info)(f"{t}:{n}")

    threads = [threading.Thread(target=log, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    buffer.flush()
    lines = out.getvalue().splitlines()
    assert sorted(lines) == sorted(f"{t}:{n}" for t in range(8) for n in range(500))
    for t in range(8):  # each thread's lines in its own order
        mine = [int(line.split(":")[1]) for line in lines if line.startswith(f"{t}:")]
        assert mine == list(range(500))


PROGRAM = """
import structlog
from leeway.logs import configure_logging
configure_logging("info", "json", flush_seconds=60)
log = structlog.get_logger("t")
for n in range(3):
    log.info("pending", n=n)
"""


def run(program: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60)
    return done.stderr.splitlines()


def test_pending_lines_are_written_at_exit_and_zero_means_at_once() -> None:
    lines = [json.loads(line) for line in run(PROGRAM)]
    assert [(line["event"], line["n"], line["level"]) for line in lines] == [("pending", n, "info") for n in range(3)]
    killed = PROGRAM + "import os\nos._exit(0)\n"  # no exit handlers, as after SIGKILL
    assert run(killed) == []  # the documented cost: up to flush_seconds of info lines
    assert len(run(killed.replace("flush_seconds=60", "flush_seconds=0"))) == 3  # each line written at once
