"""Auditor example (Python, asyncio): checks the event log's hash chains, then prints every event as a JSON line,
following new ones as they commit, and resuming after the last one received if the connection drops.

    python audit_follow.py [AFTER_POSITION] [--employee ID] [--seconds N]

LEEWAY_TARGET is HOST:PORT (default 127.0.0.1:50051); LEEWAY_API_KEY an auditor's key (none: a server without
authentication). Exit status: 0 done, 3 the log failed verification, 1 other errors, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from google.protobuf.json_format import MessageToDict

from leeway_client import LeewayClient, LeewayError
from leeway_client.aio import AsyncLeewayClient


def verify(target: str, api_key: str | None, employee: str) -> bool:
    """The blocking client is enough for one call: the log (or one employee's budget) is intact?"""
    with LeewayClient(target, api_key=api_key) as leeway:
        report = leeway.verify_integrity(employee_id=employee)
    for violation in report.violations:
        print(f"violation at {violation.position}: {violation.kind}: {violation.description}", file=sys.stderr)
    print(f"checked {report.events_checked} events: {'ok' if report.ok else 'NOT OK'}", file=sys.stderr)
    return report.ok


async def follow(target: str, api_key: str | None, after: int, employee: str, seconds: float | None) -> int:
    """Prints the events after ``after`` and then the new ones; returns how many were printed."""
    printed = 0
    async with AsyncLeewayClient(target, api_key=api_key, retries=10) as leeway:
        async for event in leeway.stream_events(after_position=after, employee_id=employee, follow=True, timeout=seconds):
            line = {
                "position": event.position,
                "type": event.event_type,
                "employee": event.employee_id,
                "time": event.record_time.ToJsonString(),
                "payload": MessageToDict(event.payload),
            }
            print(json.dumps(line), flush=True)
            printed += 1
    return printed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Verify the Leeway event log, then follow it.")
    parser.add_argument("after", nargs="?", type=int, default=0, help="print the events after this position")
    parser.add_argument("--employee", default="", help="only this employee's budget")
    parser.add_argument("--seconds", type=float, default=None, help="stop following after this many seconds")
    args = parser.parse_args(argv)
    target = os.environ.get("LEEWAY_TARGET", "127.0.0.1:50051")
    api_key = os.environ.get("LEEWAY_API_KEY") or None
    try:
        if not verify(target, api_key, args.employee):
            return 3
        asyncio.run(follow(target, api_key, args.after, args.employee, args.seconds))
    except LeewayError as error:
        if error.code.name == "DEADLINE_EXCEEDED" and args.seconds is not None:
            return 0  # followed for as long as asked
        print(f"Leeway could not be asked: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
