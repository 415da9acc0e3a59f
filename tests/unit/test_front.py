"""The asyncio front's log head (grpc_api/front.py): followers wait without threads, are handed what is new once
per position and filters, and are not woken for events their filters drop. No store: a fake log."""

from __future__ import annotations

import asyncio
from typing import Any

from leeway.grpc_api.front import WAKE_SLICE, Front, LogHead


class FakeApp:
    def __init__(self) -> None:
        self.head = 0
        self.head_reads = 0

    def log_head(self) -> int:
        self.head_reads += 1
        return self.head


class Log:
    """Events by position: (position, deliverable?) -- what the servicer's chunks look like."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []
        self.reads: list[tuple[int, str]] = []

    def append(self, employee: str) -> int:
        position = len(self.events) + 1
        self.events.append((position, employee))
        return position

    def reader(self, employee: str) -> Any:
        def read_after(after: int) -> tuple[list[tuple[int, Any]], bool]:
            self.reads.append((after, employee))
            items = [(p, e if e == employee else None) for p, e in self.events if p > after]
            return items, False

        return read_after


def nothing_to_send(chunk: tuple[list[tuple[int, Any]], bool]) -> int | None:
    items, more = chunk
    if more or any(item is not None for _, item in items):
        return None
    return items[-1][0] if items else 0


def run(scenario: Any) -> Any:
    async def main() -> Any:
        app = FakeApp()
        front = Front(app, read_threads=2)  # type: ignore[arg-type]
        head = LogHead(front, asyncio.get_running_loop(), poll_seconds=0.01)
        try:
            return await scenario(app, head)
        finally:
            await head.close()
            front.close()

    return asyncio.run(main())


def test_followers_share_one_read_and_are_handed_what_is_new() -> None:
    log = Log()

    async def scenario(app: FakeApp, head: LogHead) -> Any:
        followers = [
            asyncio.create_task(head.next_chunk(0, ("ann",), log.reader("ann"), nothing_to_send))
            for _ in range(3 * WAKE_SLICE + 1)
        ]
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in followers)  # nothing yet: they wait, no thread each
        app.head = log.append("ann")
        head.nudge()
        return await asyncio.wait_for(asyncio.gather(*followers), 5), log.reads

    chunks, reads = run(scenario)
    assert all(chunk == ([(1, "ann")], False) for chunk in chunks)
    assert reads == [(0, "ann")]  # one read for all 49 followers at the same place with the same filters


def test_a_follower_is_not_woken_for_events_its_filters_drop() -> None:
    log = Log()

    async def scenario(app: FakeApp, head: LogHead) -> Any:
        quiet = asyncio.create_task(head.next_chunk(0, ("quiet",), log.reader("quiet"), nothing_to_send))
        for _ in range(5):
            app.head = log.append("busy")
            head.nudge()
            await asyncio.sleep(0.03)
        assert not quiet.done(), "woken for events of another employee"
        app.head = log.append("quiet")
        head.nudge()
        return await asyncio.wait_for(quiet, 5), log.reads

    chunk, reads = run(scenario)
    # Woken once, for its own event; in between it waited on from the position the skipped events reached.
    assert chunk == ([(6, "quiet")], False)
    assert reads[-1] == (5, "quiet")


def test_a_commit_for_nobody_costs_one_read_and_one_decision_however_many_follow() -> None:
    """A thousand followers of one quiet budget are one group: a commit of other budgets' events is read once and
    judged once for all of them (not once per follower), and none of them is woken."""
    log = Log()
    decisions = []

    def counted(chunk: tuple[list[tuple[int, Any]], bool]) -> int | None:
        decisions.append(chunk)
        return nothing_to_send(chunk)

    async def scenario(app: FakeApp, head: LogHead) -> Any:
        followers = [
            asyncio.create_task(head.next_chunk(0, ("quiet",), log.reader("quiet"), counted)) for _ in range(1000)
        ]
        await asyncio.sleep(0.02)
        for _ in range(3):
            app.head = log.append("busy")
            head.nudge()
            await asyncio.sleep(0.03)
        assert not any(f.done() for f in followers)
        assert head.waiting == 1000
        app.head = log.append("quiet")
        head.nudge()
        await asyncio.wait_for(asyncio.gather(*followers), 5)
        return log.reads

    reads = run(scenario)
    assert len(reads) == len(decisions) <= 4  # one per commit, not one per follower
    assert reads[-1][1] == "quiet"


def test_closing_the_head_ends_every_follower() -> None:
    log = Log()

    async def scenario(app: FakeApp, head: LogHead) -> Any:
        followers = [asyncio.create_task(head.next_chunk(0, (), log.reader("x"), nothing_to_send)) for _ in range(3)]
        await asyncio.sleep(0.02)
        await head.close()
        ended = await asyncio.wait_for(asyncio.gather(*followers), 5)
        return ended, await head.next_chunk(0, (), log.reader("x"), nothing_to_send)

    ended, after = run(scenario)
    assert ended == [None, None, None] and after is None


def test_a_follower_that_goes_away_stops_waiting() -> None:
    log = Log()

    async def scenario(app: FakeApp, head: LogHead) -> Any:
        follower = asyncio.create_task(head.next_chunk(0, (), log.reader("x"), nothing_to_send))
        await asyncio.sleep(0.02)
        assert head.waiting == 1
        follower.cancel()
        await asyncio.sleep(0.02)
        return head.waiting

    assert run(scenario) == 0


def test_streams_reads_hold_at_most_half_the_read_threads() -> None:
    """A bulkhead: however many followers catch up at once, an ordinary read finds a thread at once."""
    import threading

    release = threading.Event()
    running = []

    def slow_stream_read(n: int) -> int:
        running.append(n)
        release.wait(5)
        return n

    async def main() -> tuple[int, int]:
        front = Front(FakeApp(), read_threads=4)  # type: ignore[arg-type]
        try:
            streams = [asyncio.create_task(front.read_shared(("log", n), slow_stream_read, n)) for n in range(50)]
            await asyncio.sleep(0.1)
            busy = len(running)
            ordinary = await asyncio.wait_for(front.read(lambda: 7), 2)  # not queued behind 50 stream reads
            release.set()
            assert sorted(await asyncio.gather(*streams)) == list(range(50))
            return busy, ordinary
        finally:
            front.close()

    busy, ordinary = asyncio.run(main())
    assert (busy, ordinary) == (2, 7)


def test_a_commit_while_nobody_follows_wakes_nothing_and_a_later_follower_still_sees_it() -> None:
    """``nudge`` (the writer's save listener, after every batch) costs the event loop nothing while nobody follows;
    a follower that comes later reads the head first, so it is handed what was committed before it came, and
    one that waits is woken by the next nudge, long before the poll."""
    log = Log()

    async def main() -> Any:
        app = FakeApp()
        loop = asyncio.get_running_loop()
        front = Front(app, read_threads=2)  # type: ignore[arg-type]
        head = LogHead(front, loop, poll_seconds=30)  # only a nudge (or the first read) can wake a follower in time
        woken: list[Any] = []
        original = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(callback, "__self__", None) is head._nudged:  # the head's wake-up (not to_thread's own)
                woken.append(callback)
            return original(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        try:
            for _ in range(3):
                app.head = log.append("ann")
                await asyncio.to_thread(head.nudge)  # from another thread, as the writer calls it
            quiet_nudges = len(woken)
            first = await asyncio.wait_for(head.next_chunk(0, ("ann",), log.reader("ann"), nothing_to_send), 5)
            later = asyncio.create_task(head.next_chunk(3, ("ann",), log.reader("ann"), nothing_to_send))
            await asyncio.sleep(0.05)
            assert not later.done()
            app.head = log.append("ann")
            await asyncio.to_thread(head.nudge)
            second = await asyncio.wait_for(later, 5)
            assert len(woken) > quiet_nudges  # a follower waited: the nudge woke the loop
            return quiet_nudges, first, second
        finally:
            await head.close()
            front.close()

    quiet_nudges, first, second = asyncio.run(main())
    assert quiet_nudges == 0
    assert first == ([(1, "ann"), (2, "ann"), (3, "ann")], False)
    assert second == ([(4, "ann")], False)
