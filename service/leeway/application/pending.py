"""One command queued for the group-commit writer (``writer.py``) and, once its batch is done, its outcome."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import tracing
from .idempotency import RequestRecord, fingerprint

if TYPE_CHECKING:
    from .commands import Command


class Pending:
    """One queued command and, once its batch is done, its outcome."""

    def __init__(
        self,
        command: Command,
        actor: str,
        deadline: float,
        *,
        checked: bool = False,
        on_done: Callable[[], None] | None = None,
        respond: bool = True,
        waited: bool = False,
    ):
        self.command = command
        self.actor = actor
        self.deadline = deadline
        self.request_id = command.request_id or f"generated:{uuid.uuid4()}"
        self.digest = fingerprint(command)
        #: The writer may take the request as new at first, without looking for its record (see submit).
        self.checked = checked or not command.request_id
        #: False: the caller wants the command's result, not its response (nothing is rendered: bulk loads).
        self.respond = respond
        self.finished = False  # the outcome is final
        #: What a blocked caller (``submit``) waits on; None for others (woken by ``on_done``, or run in their thread).
        self.done: threading.Event | None = threading.Event() if waited else None
        #: Called (in the writer's thread) once the outcome is known: how an asyncio front is woken
        #: (``loop.call_soon_threadsafe``) without a thread of its own waiting on ``done``.
        self.on_done = on_done
        #: The caller's span (the RPC's), which the writer's batch span links to; None while tracing is off.
        self.trace = tracing.current_context() if tracing.tracer is not None else None
        self.reset()

    def reset(self) -> None:
        """Forgets a provisional outcome (the batch is decided again)."""
        self.result: Any = None
        self.view: Any = None
        self.error: BaseException | None = None
        self.replay_of: RequestRecord | None = None
        #: True if this command's own events were saved (False for replays).
        self.fresh = False

    def fail(self, error: BaseException) -> None:
        self.reset()
        self.error = error
        self.finish()

    def finish(self) -> None:
        """The outcome is final: wakes the caller."""
        self.finished = True
        if self.done is not None:
            self.done.set()
        if self.on_done is not None:
            self.on_done()


class LoopWake:
    """A Pending's ``on_done`` for an asyncio caller: sets ``future`` (None) on ``loop``, from the writer thread.

    Called on its own (a failure outside a batch), it costs one ``loop.call_soon_threadsafe``: a callback queued
    and a byte written to the loop's self-pipe, which wakes the loop. ``finish_all`` wakes a whole batch's callers
    of one loop with ONE such call instead of one per caller."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]):
        self.loop = loop
        self.future = future

    def __call__(self) -> None:
        _wake(self.loop, (self.future,))


def finish_all(items: Iterable[Pending]) -> None:
    """``item.finish()`` for each item, in order, but with one ``call_soon_threadsafe`` per event loop for the
    items whose caller awaits on one (``LoopWake``), made after every item is final: the loop then settles their
    futures in one callback, in the items' order."""
    waking: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for item in items:
        on_done = item.on_done
        if type(on_done) is LoopWake:
            item.finished = True
            if item.done is not None:
                item.done.set()
            waking.setdefault(on_done.loop, []).append(on_done.future)
        else:
            item.finish()
    for loop, futures in waking.items():
        _wake(loop, futures)


def _wake(loop: asyncio.AbstractEventLoop, futures: Iterable[asyncio.Future[None]]) -> None:
    try:
        loop.call_soon_threadsafe(_settle, futures)
    except RuntimeError:  # the loop closed meanwhile (shutdown): nobody is waiting any more
        pass


def _settle(futures: Iterable[asyncio.Future[None]]) -> None:
    """On the loop: completes each caller's future still waiting (one whose caller went away is cancelled)."""
    for future in futures:
        if not future.done():
            future.set_result(None)
