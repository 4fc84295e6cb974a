"""`Defer`: a task put back for later is not an attempt, runs after its delay, and cannot be
put back forever. A task that waits longer than the queue holds (a deferral, a retry's
backoff) waits as a message schedule, holding no slot of the queue's consumer."""

import asyncio
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import msgspec
import nats.js.errors

from jobstream.events import (
    TASKS_STREAM,
    Bus,
    PriorityLevel,
    TaskDeadLettered,
    TaskFailed,
    TaskMessage,
    TaskStarted,
    TaskSucceeded,
    due_consumer_name,
    job_queue_purge_subjects,
    new_id,
    task_id_for,
    task_schedule_subject,
    utc_now,
    worker_consumer_name,
)
from jobstream.services.worker import (
    Defer,
    HandlerRegistry,
    Retry,
    TaskContext,
    Worker,
    WorkerOptions,
)
from jobstream.services.worker._worker import HOLD_IN_QUEUE_MAX_S, MAX_DEFERRALS, _Attempt
from tests.integration.test_worker_dispatcher import read_log, running

# Longer than the queue holds: the wait is a message schedule.
LONG_WAIT_S = HOLD_IN_QUEUE_MAX_S + 1.0

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


def registry_with(handler: Any, kind: str = "deferring") -> HandlerRegistry:
    registry = HandlerRegistry.default()
    registry.add(kind, handler)
    return registry


async def ended(bus: Bus, task_id: str, *, timeout_s: float) -> list[Any]:
    """The task's events, once one of them ends it."""

    async def poll() -> list[Any]:
        while True:
            events = [e for e in await read_log(bus) if getattr(e, "task_id", "") == task_id]
            if any(isinstance(e, TaskSucceeded | TaskDeadLettered) for e in events):
                return events
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout_s)


async def run_one(bus: Bus, handler: Any, *, timeout_s: float) -> list[Any]:
    job_id = new_id()
    task_id = task_id_for(job_id, 0)
    message = TaskMessage(job_id=job_id, task_id=task_id, kind="deferring", max_attempts=2)
    async with running(Worker(bus, options=OPTIONS, handlers=registry_with(handler)).run):
        await bus.publish_task("default", message, msg_id=task_id)
        return await ended(bus, task_id, timeout_s=timeout_s)


async def waiting_as_schedule(bus: Bus, message: TaskMessage) -> None:
    """Wait until the task waits as a schedule; then nothing of it is in the consumer's hands."""
    subject = task_schedule_subject(
        "default", message.job_id, message.task_id, level=PriorityLevel.NORMAL
    )
    await copy_waiting(bus, subject)

    async def consumer_empty() -> None:
        while True:
            held = set()
            for name in (worker_consumer_name("default"), due_consumer_name("default")):
                consumer = await bus.js.consumer_info(TASKS_STREAM, name)
                held |= {consumer.num_ack_pending, consumer.num_pending}
            if held == {0}:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(consumer_empty(), 1.0)  # the delivery acked, once the copy waits
    await bus.js.get_last_msg(TASKS_STREAM, subject, direct=True)  # and the copy still does


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


async def test_a_long_deferral_waits_as_a_schedule_outside_the_consumer(bus: Bus) -> None:
    handler = Deferring(times=1, delay_s=LONG_WAIT_S)
    job_id = new_id()
    message = TaskMessage(job_id=job_id, task_id=task_id_for(job_id, 0), kind="deferring")
    async with running(Worker(bus, options=OPTIONS, handlers=registry_with(handler)).run):
        await bus.publish_task("default", message, msg_id=message.task_id)
        await waiting_as_schedule(bus, message)
        events = await ended(bus, message.task_id, timeout_s=20)
    (first, _, _), (second, attempt, deferrals) = handler.calls
    assert second - first >= LONG_WAIT_S
    assert (attempt, deferrals) == (1, 1)
    assert isinstance(events[-1], TaskSucceeded)
    assert (await bus.js.stream_info(TASKS_STREAM)).state.messages == 0  # the schedule is gone


async def test_a_retry_after_a_long_backoff_waits_as_a_schedule(bus: Bus) -> None:
    calls: list[tuple[float, int]] = []

    async def flaky(args: Mapping[str, Any], ctx: TaskContext) -> int:
        calls.append((time.monotonic(), ctx.attempt))
        if ctx.attempt == 1:
            raise Retry("not yet", delay_s=LONG_WAIT_S)
        return ctx.attempt

    job_id = new_id()
    message = TaskMessage(job_id=job_id, task_id=task_id_for(job_id, 0), kind="flaky")
    async with running(Worker(bus, options=OPTIONS, handlers=registry_with(flaky, "flaky")).run):
        await bus.publish_task("default", message, msg_id=message.task_id)
        await waiting_as_schedule(bus, message)
        events = await ended(bus, message.task_id, timeout_s=20)
    assert [attempt for _, attempt in calls] == [1, 2]
    assert calls[1][0] - calls[0][0] >= LONG_WAIT_S
    assert [e.attempt for e in events if isinstance(e, TaskFailed)] == [1]
    assert isinstance(events[-1], TaskSucceeded) and events[-1].attempt == 2


async def test_a_task_queued_with_a_far_retry_at_is_rescheduled(bus: Bus) -> None:
    """As an older worker queued a waiting task: on the queue subject, with its `retry_at`."""
    handler = Deferring(times=0, delay_s=0)
    job_id = new_id()
    message = TaskMessage(
        job_id=job_id,
        task_id=task_id_for(job_id, 0),
        kind="deferring",
        retry_at=utc_now() + timedelta(seconds=LONG_WAIT_S),
    )
    async with running(Worker(bus, options=OPTIONS, handlers=registry_with(handler)).run):
        await bus.publish_task("default", message, msg_id=message.task_id)
        await waiting_as_schedule(bus, message)
        events = await ended(bus, message.task_id, timeout_s=20)
    assert message.retry_at is not None and utc_now() >= message.retry_at
    assert [attempt for _, attempt, _ in handler.calls] == [1]
    assert isinstance(events[-1], TaskSucceeded)


async def copy_waiting(bus: Bus, subject: str) -> None:
    async def poll() -> None:
        while True:
            try:
                await bus.js.get_last_msg(TASKS_STREAM, subject, direct=True)
                return
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), 10)


class DiesBeforeTheAck(Worker):
    """Publishes a deferred task's copy, then neither acks nor naks the delivery, as a worker
    killed between the two would."""

    async def _defer(self, state: _Attempt, defer: Defer) -> None:
        task = state.task
        copy = msgspec.structs.replace(
            task,
            retry_at=utc_now() + timedelta(seconds=defer.delay_s),
            deferrals=task.deferrals + 1,
        )
        await self._queue_later(copy, msg_id=f"{task.task_id}@deferred-1-1")


async def test_a_worker_dead_between_the_copy_and_the_ack_loses_nothing(bus: Bus) -> None:
    """The delivery comes back after its lease and runs beside the copy: the task ends once."""
    handler = Deferring(times=1, delay_s=LONG_WAIT_S)
    job_id = new_id()
    message = TaskMessage(
        job_id=job_id, task_id=task_id_for(job_id, 0), kind="deferring", max_attempts=3
    )
    options = WorkerOptions(lease_s=2.0, concurrency=4)
    subject = task_schedule_subject("default", job_id, message.task_id, level=PriorityLevel.NORMAL)
    async with running(DiesBeforeTheAck(bus, options=options, handlers=registry_with(handler)).run):
        await bus.publish_task("default", message, msg_id=message.task_id)
        await copy_waiting(bus, subject)
    async with running(Worker(bus, options=options, handlers=registry_with(handler)).run):
        await ended(bus, message.task_id, timeout_s=20)
        await asyncio.sleep(LONG_WAIT_S + 1.5)  # every copy has come round
        events = [e for e in await read_log(bus) if getattr(e, "task_id", "") == message.task_id]
        assert (await bus.js.stream_info(TASKS_STREAM)).state.messages == 0
    ends = [e for e in events if isinstance(e, TaskSucceeded | TaskDeadLettered)]
    assert len(ends) == 1 and isinstance(ends[0], TaskSucceeded)
    assert len(handler.calls) >= 2  # the delivery that came back ran again, or the copy did


async def test_a_cancel_purges_a_waiting_task(bus: Bus) -> None:
    handler = Deferring(times=1, delay_s=LONG_WAIT_S)
    job_id = new_id()
    message = TaskMessage(job_id=job_id, task_id=task_id_for(job_id, 0), kind="deferring")
    async with running(Worker(bus, options=OPTIONS, handlers=registry_with(handler)).run):
        await bus.publish_task("default", message, msg_id=message.task_id)
        await waiting_as_schedule(bus, message)
        for subject in job_queue_purge_subjects(job_id):
            await bus.js.purge_stream(TASKS_STREAM, subject=subject)
        await asyncio.sleep(LONG_WAIT_S + 1.0)
    assert len(handler.calls) == 1
    assert (await bus.js.stream_info(TASKS_STREAM)).state.messages == 0
