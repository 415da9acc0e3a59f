"""The writer wakes asyncio callers (the gRPC front) batch by batch: ONE ``loop.call_soon_threadsafe`` per batch
and event loop (``pending.finish_all``), not one per caller; every caller still gets its own answer, in order, and
a caller that went away does not hold up the others."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from leeway.application.pending import LoopWake, Pending, _settle, finish_all

import builders
from builders import action_cmd, make_policy
from leeway.domain.policy import ActionKind


async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def _counting_wakes(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """The callbacks handed to ``loop.call_soon_threadsafe`` from now on (other than the loop's own)."""
    calls: list[Any] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if callback is _settle:
            calls.append(args)
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    return calls


def _counting_enqueued(app: Any) -> list[Any]:
    """The commands queued for the writer from now on (the writer may already have taken some of them)."""
    queued: list[Any] = []
    original = app.writer.enqueue

    def counting(*args: Any, **kwargs: Any) -> Any:
        pending = original(*args, **kwargs)
        queued.append(pending)
        return pending

    app.writer.enqueue = counting
    return queued


def test_a_batch_wakes_its_callers_with_one_call(app_factory) -> None:
    app = app_factory()
    app.execute(builders.open_cmd("ann", "team-a", make_policy(10_000, kinds=(ActionKind.REFUND,))))
    callers = 12

    async def main() -> tuple[list[Any], list[Any], int]:
        wakes = _counting_wakes(asyncio.get_running_loop())
        committed = app.writer.batches_committed
        queued = _counting_enqueued(app)
        with app.writer.lock:  # the writer waits: the callers queue up behind it
            tasks = [
                asyncio.ensure_future(app.execute_async(action_cmd("ann", n + 1), actor="ann", answer_in=_in_thread))
                for n in range(callers)
            ]
            while len(queued) < callers:  # the writer may hold the first few already, waiting for the lock
                await asyncio.sleep(0.01)
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return answers, wakes, app.writer.batches_committed - committed

    answers, wakes, batches = asyncio.run(main())
    assert len(answers) == callers
    # Each caller its own action, in the order they queued: the amounts 1..12 spent one after the other.
    assert [action.amount.amount for action, _ in answers] == list(range(1, callers + 1))
    assert [budget.spent.amount for _, budget in answers] == [sum(range(1, n + 2)) for n in range(callers)]
    assert 1 <= batches <= 2
    assert len(wakes) == batches  # one call per batch (was one per caller: 12)
    assert sum(len(futures) for (futures,) in wakes) == callers


def test_a_caller_that_went_away_does_not_hold_up_the_others(app_factory) -> None:
    app = app_factory()
    app.execute(builders.open_cmd("bob", "team-a", make_policy(10_000, kinds=(ActionKind.REFUND,))))

    async def main() -> list[Any]:
        queued = _counting_enqueued(app)
        with app.writer.lock:
            tasks = [
                asyncio.ensure_future(app.execute_async(action_cmd("bob", 1), actor="bob", answer_in=_in_thread))
                for _ in range(4)
            ]
            while len(queued) < 4:
                await asyncio.sleep(0.01)
            tasks[1].cancel()  # its caller went away (a deadline, a cancelled RPC): its future is cancelled
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert all(isinstance(outcome, tuple) for i, outcome in enumerate(outcomes) if i != 1)
    # The command of the caller that went away was still decided (it was queued): 4 units spent.
    assert app.get_budget("bob").spent.amount == 4


def test_finish_all_wakes_each_loop_once_and_everyone_else_as_before() -> None:
    """Items of two event loops, a thread waiting on ``done`` and a plain ``on_done``: every item is final, each
    loop gets one call for its items (in order), the others are woken as ``finish`` wakes them."""
    loops = [asyncio.new_event_loop() for _ in range(2)]
    threads = [threading.Thread(target=loop.run_forever, daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    try:
        calls = [_counting_wakes(loop) for loop in loops]
        first = [asyncio.run_coroutine_threadsafe(_future(), loops[0]).result(5) for _ in range(3)]
        second = [asyncio.run_coroutine_threadsafe(_future(), loops[1]).result(5) for _ in range(2)]
        plain: list[int] = []

        def item(**kwargs: Any) -> Pending:
            return Pending(action_cmd("ann", 1), "ann", float("inf"), **kwargs)

        items = [
            item(on_done=LoopWake(loops[0], first[0])),
            item(on_done=LoopWake(loops[1], second[0])),
            item(waited=True),
            item(on_done=LoopWake(loops[0], first[1])),
            item(on_done=lambda: plain.append(1)),
            item(on_done=LoopWake(loops[0], first[2])),
            item(on_done=LoopWake(loops[1], second[1])),
        ]
        finish_all(items)
        assert all(i.finished for i in items)
        assert items[2].done is not None and items[2].done.is_set()
        assert plain == [1]
        assert [[list(futures) for (futures,) in made] for made in calls] == [[first], [second]]
        for loop in loops:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)  # the loop ran its callbacks
        assert all(f.done() and f.result() is None for f in first + second)
    finally:
        for loop in loops:
            loop.call_soon_threadsafe(loop.stop)
        for thread in threads:
            thread.join(5)
        for loop in loops:
            loop.close()


async def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()
