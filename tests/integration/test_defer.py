"""`Defer`: a task put back for later is not an attempt, runs after its delay, and cannot be
put back forever."""

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from events import (
    Bus,
    TaskDeadLettered,
    TaskFailed,
    TaskMessage,
    TaskStarted,
    TaskSucceeded,
    new_id,
    task_id_for,
)
from services.worker import Defer, HandlerRegistry, TaskContext, Worker, WorkerOptions
from services.worker._worker import MAX_DEFERRALS
from tests.integration.test_worker_dispatcher import read_log, running

OPTIONS = WorkerOptions(lease_s=5, retry_base_s=0.01, retry_cap_s=0.05, concurrency=4)


class Deferring:
    """Defers each task `times` times (`delay_s` each), slowly enough the first time that
    its `task.started` is already in the log, then succeeds."""

    def __init__(self, times: int, delay_s: float) -> None:
        self.times = times
        self.delay_s = delay_s
        self.calls: list[tuple[float, int, int]] = []

    async def __call__(self, args: Mapping[str, Any], ctx: TaskContext) -> dict[str, int]:
        self.calls.append((time.monotonic(), ctx.attempt, ctx.deferrals))
        if ctx.deferrals == 0:
            await asyncio.sleep(0.4)  # past the started-event tick
        if ctx.deferrals < self.times:
            raise Defer("not yet", delay_s=self.delay_s)
        return {"deferrals": ctx.deferrals}


async def run_one(bus: Bus, handler: Deferring, *, timeout_s: float) -> list[Any]:
    registry = HandlerRegistry.default()
    registry.add("deferring", handler)
    job_id = new_id()
    task_id = task_id_for(job_id, 0)
    message = TaskMessage(job_id=job_id, task_id=task_id, kind="deferring", max_attempts=2)
    async with running(Worker(bus, options=OPTIONS, handlers=registry).run):
        await bus.publish_task("default", message, msg_id=task_id)

        async def ended() -> list[Any]:
            while True:
                events = [e for e in await read_log(bus) if getattr(e, "task_id", "") == task_id]
                if any(isinstance(e, TaskSucceeded | TaskDeadLettered) for e in events):
                    return events
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(ended(), timeout_s)


async def test_a_deferred_task_runs_later_without_counting_attempts(bus: Bus) -> None:
    handler = Deferring(times=3, delay_s=0.3)
    events = await run_one(bus, handler, timeout_s=20)
    assert [attempt for _, attempt, _ in handler.calls] == [1, 1, 1, 1]
    assert [deferrals for _, _, deferrals in handler.calls] == [0, 1, 2, 3]
    gaps = [b[0] - a[0] for a, b in zip(handler.calls, handler.calls[1:], strict=False)]
    assert all(gap >= 0.3 for gap in gaps), gaps
    assert not [e for e in events if isinstance(e, TaskFailed)]
    assert any(isinstance(e, TaskStarted) for e in events)  # the copy ran after it, fenced
    done = events[-1]
    assert isinstance(done, TaskSucceeded)
    assert (done.attempt, done.result) == (1, {"deferrals": 3})


async def test_deferrals_are_capped(bus: Bus) -> None:
    handler = Deferring(times=MAX_DEFERRALS + 5, delay_s=0.0)
    events = await run_one(bus, handler, timeout_s=60)
    failed = [e for e in events if isinstance(e, TaskFailed)]
    dead = events[-1]
    assert isinstance(dead, TaskDeadLettered)
    assert dead.attempts == 2
    assert dead.last_error.startswith(f"deferred {MAX_DEFERRALS} times, the last: not yet")
    assert [f.attempt for f in failed] == [1, 2]
