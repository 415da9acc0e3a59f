"""Running projections: catch up from the tracking position, in batches, each batch exactly once.

A runner reads the notifications after its projection's tracking position (``select_notifications``: this works
on SQLite, which has no subscriptions, and on PostgreSQL, whose recorder commits in notification order so a
reader that tails the log never skips an event), turns them into view changes and applies those together with
the new position in one transaction. A runner killed at any point loses at most an uncommitted batch, which the
next run redoes; two runners on one view never both apply a batch (the tracking compare-and-set refuses the
second), so nothing is ever counted twice.

Inside ``leeway serve`` each projection has a runner thread, woken after every local commit and polling for
other replicas' commits. ``LEEWAY_PROJECTIONS=subprocess`` runs the same runners in a child process of the
server (child.py); ``external`` leaves them to a separate ``leeway projections run``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import structlog

from ..runtime import fewer_collections, name_os_thread
from .store import StaleTracking, ViewStore, open_view_store
from .views import PROJECTIONS, LeewayProjection

log = structlog.get_logger("leeway.projections")

#: Notifications read (and applied in one transaction) per batch.
BATCH = 500
#: The same for a rebuild, which has the whole log to replay: fewer, larger transactions.
REBUILD_BATCH = 2000
#: Pause after a batch that caught up with a busy log (cut short by a reader waiting for its own write).
LINGER_SECONDS = 0.1


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int
    error: str = ""

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


class CatchUpRunner:
    """Keeps one projection up to date with the application's log."""

    def __init__(
        self,
        app: Any,
        store: ViewStore,
        projection: LeewayProjection,
        *,
        batch: int = BATCH,
        decode: Callable[[Any], Any] | None = None,
    ):
        self.app = app
        self.store = store
        self.projection = projection
        self.batch = batch
        #: Notifications per batch of a replay (``replay``: a rebuild).
        self.rebuild_batch = REBUILD_BATCH
        #: Stored notification -> domain event (Projections shares one cache among its runners).
        self.decode = decode or app.mapper.to_domain_event
        #: The same for a replay, which no other runner reads along with: straight from the mapper (the shared
        #: cache's lock and bookkeeping cost a replay more than they save).
        self.replay_decode = app.mapper.to_domain_event
        self.name = projection.name
        self._changed = threading.Condition()
        self._position = 0
        self._wake = threading.Event()
        self._urgent = threading.Event()
        #: Seconds to pause after a batch that caught up, so that under load batches grow (see _loop).
        self.linger = LINGER_SECONDS
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error = ""
        #: True once the view is known to be built by this version of the projection.
        self.versioned = False

    # ------------------------------------------------------------------ processing

    def ensure_version(self) -> None:
        """Makes sure the view was built by this version of the projection (``ViewStore.ensure_version``: an older
        one is emptied, once, and this runner rebuilds it)."""
        if self.versioned:
            return
        projection = self.projection
        if self.store.ensure_version(self.name, projection.version, projection.tables):
            log.info("projection.upgraded", projection=self.name, version=projection.version)
            projection.forget()
            self._seen(0)
        self.versioned = True

    def run_once(self, batch: int = 0) -> int:
        """Applies the next batch (of ``batch`` notifications, or the runner's own size); returns how many
        notifications it consumed (0: up to date)."""
        self.ensure_version()
        start = self.store.position(self.name)
        chunk = self.app.recorder.select_notifications(
            start=start, limit=batch or self.batch, inclusive_of_start=False
        )
        if not chunk:
            self._seen(start)
            return 0
        events = [(n.id, self.decode(n)) for n in chunk if self.projection.wants(n.topic)]
        try:
            self.store.apply(self.name, start, chunk[-1].id, self.projection.changes(events))
        except StaleTracking:
            # Another runner (or a rebuild) moved the position: start again from wherever it is now.
            self.projection.forget()
            return -1
        except BaseException:
            self.projection.forget()
            raise
        self._seen(chunk[-1].id)
        return len(chunk)

    def catch_up(
        self, progress: Callable[[int], None] | None = None, stop: threading.Event | None = None, batch: int = 0
    ) -> int:
        """Processes until the projection has every event committed so far; returns how many it processed. Far
        behind (``far_behind``), it goes on as a replay: larger batches, each read and written while the next is
        worked out."""
        done = 0
        while stop is None or not stop.is_set():
            count = self.run_once(batch)
            if count == 0:
                break
            if count > 0:
                done += count
                if progress is not None:
                    progress(count)
                if not batch and self.far_behind(count):
                    done += self.replay(progress, stop=stop)
        return done

    def far_behind(self, count: int) -> bool:
        """Whether, after a batch of ``count`` notifications, at least a replay's batch more waits in the log (asked
        of the log only after a full batch)."""
        if count < self.batch or self.rebuild_batch <= self.batch:
            return False
        head = int(self.app.recorder.max_notification_id() or 0)
        return head - self._position >= self.rebuild_batch

    def replay(
        self, progress: Callable[[int], None] | None = None, batch: int = 0, stop: threading.Event | None = None
    ) -> int:
        """``catch_up`` for a long replay (a rebuild): the database's share of each batch overlaps Python's. The
        next batch is read while this one is decoded, and a batch is written while the next one is read, decoded and
        turned into changes. Each event is decoded as the projection takes it (``changes_ahead``); what a projection
        reads from its own view (the insights rollups: older actions' facts, customers' first days) it reads only
        once every earlier batch is committed, and batches are applied in order, each with the tracking
        compare-and-set: every event still counts exactly once. Batches of ``batch`` notifications (default:
        ``rebuild_batch``; ``stop``: ends it once the batch being written is). Returns how many it processed."""
        self.ensure_version()
        batch = batch or self.rebuild_batch
        done = [0]

        def counted(count: int) -> None:
            done[0] += count
            if progress is not None:
                progress(count)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"replay-{self.name}") as pool:
            while True:
                try:
                    self._replay(pool, batch, counted, stop)
                    return done[0]
                except StaleTracking:
                    # Another runner (or a rebuild) moved the position: start again from wherever it is now.
                    self.projection.forget()
                except BaseException:
                    self.projection.forget()
                    raise

    def _replay(
        self, pool: ThreadPoolExecutor, batch: int, counted: Callable[[int], None], stop: threading.Event | None = None
    ) -> None:
        select = self.app.recorder.select_notifications
        start = self.store.position(self.name)
        reading = pool.submit(select, start=start, limit=batch, inclusive_of_start=False)
        writing: Future[None] | None = None
        written = (start, 0)  # (end, count) of the batch being written
        try:
            while stop is None or not stop.is_set():
                chunk = reading.result()
                if not chunk:
                    break
                end = chunk[-1].id
                reading = pool.submit(select, start=end, limit=batch, inclusive_of_start=False)
                decode, wants = self.replay_decode, self.projection.wants
                # Each event decoded as the projection takes it, while the batch before is written.
                finish = self.projection.changes_ahead((n.id, decode(n)) for n in chunk if wants(n.topic))
                if writing is not None:
                    writing.result()
                    self._seen(written[0])
                    counted(written[1])
                    writing = None
                if stop is not None and stop.is_set():
                    # This batch is not written: what the projection learned from it is dropped with it.
                    self.projection.forget()
                    break
                writing = pool.submit(self.store.apply, self.name, start, end, finish())
                start, written = end, (end, len(chunk))
            if writing is not None:
                writing.result()
                self._seen(written[0])
                counted(written[1])
            else:
                self._seen(start)
        finally:
            wait([f for f in (reading, writing) if f is not None])  # nothing of this replay outlives it

    def _seen(self, position: int) -> None:
        with self._changed:
            if position != self._position:
                self._position = position
                self._changed.notify_all()

    # ------------------------------------------------------------------ in a background thread

    def start(self, poll_seconds: float) -> None:
        self._thread = threading.Thread(target=self._loop, args=(poll_seconds,), name=f"projection-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def hurry(self) -> None:
        """Wakes the runner and cuts its batching pause short (a reader is waiting)."""
        self._urgent.set()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._urgent.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self, poll_seconds: float) -> None:
        name_os_thread()
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                count = self.run_once()
                if self.far_behind(count):
                    # Far behind (a restart, a burst): the rest in larger batches, pipelined (``replay``).
                    self.replay(stop=self._stopping)
                if self.error:
                    log.info("projection.recovered", projection=self.name)
                self.error = ""
                backoff = 0.1
            except Exception as error:  # noqa: BLE001 - keep trying: the store may be back in a moment
                if not self.error:
                    log.warning("projection.failed", projection=self.name, error_type=type(error).__name__, error=str(error))
                self.error = f"{type(error).__name__}: {error}"
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if count == 0:
                self._wake.wait(poll_seconds)
                self._wake.clear()
            elif 0 < count < self.batch and self.linger > 0:
                # Caught up with a busy log: let a few commits gather so the next batch (one transaction) covers
                # more events; a reader waiting for its own write (wait_for) cuts the pause short.
                self._urgent.wait(self.linger)
            self._urgent.clear()

    # ------------------------------------------------------------------ read-your-writes

    def wait_for(
        self, position: int, timeout: float, *, local: bool, nudge: Callable[[], None] | None = None
    ) -> bool:
        """True once the projection has processed ``position`` (within ``timeout`` seconds). The stored tracking
        position decides, never a cached one: another process may have reset the view (a rebuild). ``nudge``
        hurries a runner in another process (the serve child), once."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        self.ensure_version()  # never read a view an older version built (it is about to be emptied)
        while True:
            current = self.store.position(self.name)
            if current >= position:
                self._seen(current)
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if nudge is not None:
                nudge()
                nudge = None
            if local:
                # Our own runner thread is at work: wake it, and look again when it has committed a batch.
                self.hurry()
                with self._changed:
                    self._changed.wait(min(remaining, 0.05))
            else:
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.2)


class Projections:
    """Every projection of one application, with its view store and runners."""

    def __init__(self, app: Any, store: ViewStore | None = None, names: tuple[str, ...] = ()):
        self.app = app
        self.store = store if store is not None else open_view_store(dict(app.env))
        chosen = names or tuple(PROJECTIONS)
        unknown = [n for n in chosen if n not in PROJECTIONS]
        if unknown:
            raise KeyError(f"no projection named {', '.join(unknown)} (there are {', '.join(PROJECTIONS)})")
        # The runners read the same notifications at about the same time: each is decoded once.
        self._decoded: OrderedDict[int, Any] = OrderedDict()
        self._decoded_lock = threading.Lock()
        self.runners = {}
        for name in chosen:
            projection = PROJECTIONS[name](self.store, self._load_budget)
            if hasattr(projection, "load_event"):
                projection.load_event = self._load_event
            self.runners[name] = CatchUpRunner(app, self.store, projection, decode=self._decode)
            # A view built by an older version of the projection is emptied now, before anything reads it, and
            # rebuilt by the runner. If the store does not answer, the runner does it before its first batch and
            # queries before they wait for the projection.
            try:
                self.runners[name].ensure_version()
            except Exception as error:  # noqa: BLE001 - retried by whoever touches the projection next
                log.warning("projection.version_check_deferred", projection=name, error_type=type(error).__name__,
                            error=str(error))
        self.local = False
        #: Hurries runners in another process (LEEWAY_PROJECTIONS=subprocess: the serve child) when a reader waits.
        self.nudge: Callable[[], None] | None = None

    def _load_budget(self, budget_id: Any, version: int) -> Any:
        return self.app.repository.get(budget_id, version=version)

    DECODED_CACHE = 4 * BATCH

    def _decode(self, notification: Any) -> Any:
        """The domain event of a stored notification (immutable, so runners may share it)."""
        with self._decoded_lock:
            event = self._decoded.get(notification.id)
        if event is None:
            event = self.app.mapper.to_domain_event(notification)
            with self._decoded_lock:
                self._decoded[notification.id] = event
                while len(self._decoded) > self.DECODED_CACHE:
                    self._decoded.popitem(last=False)
        return event

    def forget_decoded(self) -> None:
        """Drops the events decoded so far (after an erasure: they hold what was decrypted before it)."""
        with self._decoded_lock:
            self._decoded.clear()

    def _load_event(self, aggregate_id: Any, version: int) -> Any:
        return next(iter(self.app.events.get(aggregate_id, gt=version - 1, lte=version)))

    def start(self, poll_seconds: float) -> None:
        """Runs every projection in a thread of this process, woken by the application's commits."""
        self.local = True
        for runner in self.runners.values():
            runner.start(poll_seconds)
        self.app.save_listeners.append(self.wake)

    def wake(self) -> None:
        for runner in self.runners.values():
            runner.wake()

    def hurry(self) -> None:
        for runner in self.runners.values():
            runner.hurry()

    def stop(self) -> None:
        for runner in self.runners.values():
            runner.stop()

    def close(self) -> None:
        self.stop()
        self.store.datastore.close()

    def head(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    def wait_for(self, name: str, position: int, timeout: float) -> bool:
        return self.runners[name].wait_for(position, timeout, local=self.local, nudge=self.nudge)

    def status(self) -> list[ProjectionStatus]:
        head = self.head()
        return [
            ProjectionStatus(name, self.store.position(name), head, runner.error) for name, runner in self.runners.items()
        ]

    def rebuild(self, name: str, progress: Callable[[int], None] | None = None) -> int:
        """Empties projection ``name`` and replays the whole log into it; returns the events processed."""
        runner = self.runners[name]
        self.store.reset(name, runner.projection.tables)
        runner.projection.forget()
        runner._seen(0)  # noqa: SLF001 - the runner's own cached position goes back too
        with fewer_collections():
            return runner.replay(progress)


__all__ = ["BATCH", "REBUILD_BATCH", "CatchUpRunner", "ProjectionStatus", "Projections"]
