"""How the asyncio gRPC front reaches the (blocking) application without a thread per call.

- Commands go to the group-commit writer's queue; the caller's task awaits a future that the writer thread
  completes (``LeewayApplication.execute_async``). No thread waits for a write.
- Blocking reads (queries, authorization lookups, the audit log) run on one bounded thread pool
  (``LEEWAY_GRPC_MAX_WORKERS`` threads). A call waiting for a thread holds no thread; the pool only bounds how
  many reads hit the store at once. Streams' reads (a follower catching up, the chunks the log head hands out)
  may hold at most half of those threads at once (``stream_reads``), so that a thousand followers catching up
  together never queue ordinary calls behind them: a bulkhead, not a priority queue.
- Following ``StreamEvents`` calls wait on ``LogHead``: one task per replica looks at the log's head (on every
  local commit, and every ``poll_seconds`` for other replicas' commits) and wakes the followers behind it. An idle
  follower is a suspended coroutine: it costs memory, not a thread or a query.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from ..application import LeewayApplication
from ..application.commands import Command
from ..domain.errors import DeadlineExceeded
from .authz import current_deadline

log = structlog.get_logger("leeway.front")

T = TypeVar("T")


class Front:
    """The application as the asyncio servicers see it."""

    def __init__(self, app: LeewayApplication, *, read_threads: int):
        self.app = app
        self.read_threads = read_threads
        self.executor = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="leeway-read")
        self._shared: dict[Hashable, asyncio.Future[Any]] = {}
        #: How many streams' reads may run (or wait in the executor's queue) at once; the others wait here,
        #: holding nothing, so an ordinary read never finds more than this many queued ahead of it.
        self.stream_reads = max(1, read_threads // 2)
        self._stream_slots: asyncio.Semaphore | None = None  # made on the event loop, at first use

    async def read(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` on the read pool, with the caller's context variables (correlation id,
        principal) visible there; not started if the caller's deadline passed while it waited for a thread."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, _in_time, function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def read_untimed(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the read pool for no caller in particular (the log head): no deadline, no caller
        context."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(function, *args))

    async def read_stream(self, function: Callable[..., T], *args: Any) -> T:
        """``read_untimed(function, *args)`` for a stream (a follower's chunk): at most ``stream_reads`` of these
        hold read threads at once."""
        if self._stream_slots is None:
            self._stream_slots = asyncio.Semaphore(self.stream_reads)
        async with self._stream_slots:
            return await self.read_untimed(function, *args)

    async def read_shared(self, key: Hashable, function: Callable[..., T], *args: Any) -> T:
        """``read(function, *args)``, done once for every caller asking with the same ``key`` while it runs: when
        the log moves, every follower at the head asks for the same events at once, and one read (and one
        conversion) answers them all. A caller that goes away does not cancel the others' read."""
        future = self._shared.get(key)
        if future is None:
            future = asyncio.ensure_future(self.read_stream(function, *args), loop=asyncio.get_running_loop())
            self._shared[key] = future
            future.add_done_callback(lambda _: self._shared.pop(key, None))
        return await asyncio.shield(future)

    async def execute(self, command: Command, *, actor: str, deadline: float) -> Any:
        return await self.app.execute_async(command, actor=actor, deadline=deadline, answer_in=self.read)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


#: Followers woken at once when the head moves; the event loop runs other calls between two such slices, so that
#: a thousand followers being handed a new event never delay a Health/Check by more than one slice's work.
WAKE_SLICE = 16


def _in_time(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs ``function`` unless the call's deadline passed while it waited for a thread (its caller is gone)."""
    if time.monotonic() > current_deadline.get():
        raise DeadlineExceeded("the request's deadline passed while it waited for a read thread; retry")
    return function(*args, **kwargs)


class LogHead:
    """The position of the last event in the log, as far as this replica knows, and the followers waiting for it
    to move. ``nudge()`` may be called from any thread (the writer's save listener does, after each commit).

    Followers wait in groups, one per (position, filters): a group shares one read of what comes after its
    position, one decision on whether that holds anything for them (``skip``) and, if not, moves on as a whole.
    So a commit that concerns none of a thousand followers of one budget costs one read and a few steps, not a
    step per follower. When the head does hand something out, the followers are woken WAKE_SLICE at a time,
    letting the event loop run other calls between two slices."""

    def __init__(self, front: Front, loop: asyncio.AbstractEventLoop, *, poll_seconds: float):
        self.front = front
        self.loop = loop
        self.poll_seconds = poll_seconds
        self.position = -1  # unknown until first read
        self.closed = False
        #: (position, filters) -> the followers waiting there (a dict as an ordered set).
        self._groups: dict[tuple[int, Hashable], _Group] = {}
        self._stale = False  # a follower went away while its group was being handed out
        self._nudged = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(len(group.waiters) for group in self._groups.values())

    def nudge(self) -> None:
        """Something was committed here: look at the head now (thread-safe). While nobody follows, nothing is
        woken (the writer calls this after every batch): a follower's watch starts by reading the head, which then
        holds every commit made before it started."""
        task = self._task
        if task is None or task.done():
            return
        try:
            self.loop.call_soon_threadsafe(self._nudged.set)
        except RuntimeError:  # the loop is closed: shutting down
            pass

    async def next_chunk(
        self,
        position: int,
        filters: Hashable,
        read_after: Callable[[int], T],
        skip: Callable[[T], int | None],
    ) -> T | None:
        """Waits until the log has something for this follower after ``position`` and returns it: ``read_after(p)``
        (run on the read pool, once for every waiter at the same position with the same ``filters``). A chunk
        for which ``skip(chunk)`` gives a position (nothing in it passes the follower's filters) does not wake
        the follower: it goes on waiting from there, at no cost but the shared read. Followers with the same
        ``filters`` must pass equivalent ``read_after`` and ``skip``: their group uses its first one's. None once
        the head is closed (shutdown)."""
        if self.closed:
            return None
        if self.position > position:
            return await self.front.read_shared(("log", position, filters), read_after, position)
        future: asyncio.Future[Any] = self.loop.create_future()
        self._join(_Group(position, filters, read_after, skip), {future: None})
        self._ensure_watching()
        try:
            return await future  # type: ignore[no-any-return]
        finally:
            if not future.done() or future.cancelled():  # the follower went away
                for group in self._groups.values():
                    if group.waiters.pop(future, False) is None:
                        break
                else:  # its group is being handed out: pruned there
                    self._stale = True

    def _join(self, group: _Group, waiters: dict[asyncio.Future[Any], None]) -> None:
        key = (group.position, group.filters)
        existing = self._groups.get(key)
        if existing is None:
            group.waiters = waiters
            self._groups[key] = group
        elif len(existing.waiters) >= len(waiters):
            existing.waiters.update(waiters)
        else:  # the larger group stays, the smaller one joins it
            waiters.update(existing.waiters)
            existing.waiters = waiters

    async def close(self) -> None:
        self.closed = True
        groups, self._groups = self._groups, {}
        for group in groups.values():
            for future in group.waiters:
                if not future.done():
                    future.set_result(None)
        if self._task is not None:
            self._task.cancel()

    def _ensure_watching(self) -> None:
        if self._task is None or self._task.done():
            # A context of its own: not the first follower's (its correlation id, principal, deadline).
            self._task = self.loop.create_task(self._watch(), name="leeway-log-head", context=contextvars.Context())

    async def _hand_out(self) -> None:
        """Reads what each passed group waits for, moves on the groups with nothing to deliver, and wakes the
        others' followers WAKE_SLICE at a time."""
        behind = [group for key, group in self._groups.items() if key[0] < self.position]
        for group in behind:
            del self._groups[(group.position, group.filters)]
        outcomes = await asyncio.gather(
            *(self.front.read_stream(group.read_after, group.position) for group in behind), return_exceptions=True
        )
        if self._stale:  # followers went away while their group was out of _groups
            self._stale = False
            for group in behind:
                group.waiters = {future: None for future in group.waiters if not future.done()}
        wake: list[tuple[asyncio.Future[Any], Any]] = []
        for group, outcome in zip(behind, outcomes, strict=True):
            if not group.waiters:
                continue
            moved_to = None if isinstance(outcome, BaseException) else group.skip(outcome)
            if moved_to is not None:
                group.position = max(group.position, moved_to)
                self._join(group, group.waiters)  # nothing for them: they wait on, unwoken (no step per follower)
            else:
                wake.extend((future, outcome) for future in group.waiters)
        for start in range(0, len(wake), WAKE_SLICE):
            for future, outcome in wake[start : start + WAKE_SLICE]:
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            await asyncio.sleep(0)

    async def _watch(self) -> None:
        """Reads the head while anyone waits: at once when nudged, else every ``poll_seconds``."""
        while self._groups and not self.closed:
            self._nudged.clear()  # before the read: a commit during it wakes the next round at once
            try:
                head = await self.front.read_untimed(self.front.app.log_head)
            except Exception as error:  # noqa: BLE001 - the store may be away; followers just wait longer
                log.warning("log_head.unavailable", error=str(error))
                head = self.position
            self.position = max(self.position, head)
            # Also when the head did not move: a follower behind it may have read before an earlier commit
            # became visible (PostgreSQL); it reads again each round until it sees it.
            if any(key[0] < self.position for key in self._groups):
                await self._hand_out()
            try:
                await asyncio.wait_for(self._nudged.wait(), timeout=self.poll_seconds)
            except TimeoutError:
                pass


@dataclass(eq=False)
class _Group:
    """Followers waiting at one position with one set of filters (their futures, in arrival order)."""

    position: int
    filters: Hashable
    read_after: Callable[[int], Any]
    skip: Callable[[Any], int | None]
    waiters: dict[asyncio.Future[Any], None] = field(default_factory=dict)
