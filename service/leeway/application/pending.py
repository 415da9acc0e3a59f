"""One command queued for the group-commit writer (``writer.py``) and, once its batch is done, its outcome."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
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
