"""The dispatcher and worker against a real nats-server: the log is the truth we assert on."""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from jobstream.events import (
    EVENT_SUBJECTS,
    Bus,
    Event,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    TaskDeadLettered,
    TaskFailed,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerLost,
    WorkerStarted,
    WorkerStopped,
    event_batches,
    new_id,
    utc_now,
)
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import Worker, WorkerOptions

FAST = WorkerOptions(lease_s=5, retry_base_s=0.01, retry_cap_s=0.05, concurrency=16)


@asynccontextmanager
async def running(
    *loops: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop(stop)) for loop in loops]
    try:
        yield stop
    finally:
        stop.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


async def read_log(bus: Bus) -> list[Event]:
    last = await bus.stream_last_seq()
    events: list[Event] = []
    if last == 0:
        return events
    stop = asyncio.Event()
    batches = event_batches(bus, start_seq=1, stop=stop, filter_subject=EVENT_SUBJECTS)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            events.extend(entry.event for entry in batch if entry.event is not None)
            if batch[-1].seq >= last:
                break
    return events


async def wait_for_job_end(bus: Bus, job_id: str, timeout_s: float = 30) -> Event:
    async def poll() -> Event:
        while True:
            for event in await read_log(bus):
                if isinstance(event, JobCompleted | JobFailed) and event.job_id == job_id:
                    return event
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(poll(), timeout_s)


def job(*specs: TaskSpec, max_attempts: int = 3) -> JobSubmitted:
    return JobSubmitted(job_id=new_id(), tasks=list(specs), max_attempts=max_attempts)


async def test_sum_job_runs_to_completion(bus: Bus) -> None:
    submitted = job(TaskSpec(kind="sum", args={"a": 1, "b": 2}, count=20))
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=FAST).run):
        await bus.publish_event(submitted)
        ended = await wait_for_job_end(bus, submitted.job_id)
    assert isinstance(ended, JobCompleted)
    assert ended.succeeded == 20
    log = await read_log(bus)
    succeeded = [e for e in log if isinstance(e, TaskSucceeded)]
    assert len({e.task_id for e in succeeded}) == len(succeeded) == 20
    assert all(e.result == {"sum": 3} for e in succeeded)
    assert any(isinstance(e, WorkerStarted) for e in log)
    assert any(isinstance(e, WorkerStopped) for e in log)


async def test_failures_retry_then_dead_letter(bus: Bus) -> None:
    submitted = job(
        TaskSpec(kind="fail", args={"succeed_on_attempt": 2}, count=2),
        TaskSpec(kind="fail", args={"message": "broken"}),
        TaskSpec(kind="sum", args={"a": "x", "b": 1}),
        max_attempts=3,
    )
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=FAST).run):
        await bus.publish_event(submitted)
        ended = await wait_for_job_end(bus, submitted.job_id)
    assert isinstance(ended, JobFailed)
    assert (ended.succeeded, ended.dead_lettered) == (2, 2)
    log = await read_log(bus)
    failed = Counter(e.task_id for e in log if isinstance(e, TaskFailed))
    dead = {e.task_id: e for e in log if isinstance(e, TaskDeadLettered)}
    flaky, broken, bad_args = (f"{submitted.job_id}-{i}" for i in (0, 2, 3))
    assert failed[flaky] == 1
    assert failed[broken] == 3 and dead[broken].attempts == 3
    assert "broken" in dead[broken].last_error
    # A bad argument is a permanent error: no retry.
    assert failed[bad_args] == 1 and dead[bad_args].reason == "permanent error"


@pytest.mark.parametrize("workers", [2])
async def test_thousand_tasks_over_two_workers_each_once(bus: Bus, workers: int) -> None:
    submitted = job(TaskSpec(kind="noop", count=1000))
    loops = [Worker(bus, options=FAST).run for _ in range(workers)]
    async with running(Dispatcher(bus, lease_s=5).run, *loops):
        await bus.publish_event(submitted)
        ended = await wait_for_job_end(bus, submitted.job_id, timeout_s=60)
    assert isinstance(ended, JobCompleted) and ended.succeeded == 1000
    succeeded = Counter(e.task_id for e in await read_log(bus) if isinstance(e, TaskSucceeded))
    assert len(succeeded) == 1000 and set(succeeded.values()) == {1}


async def test_a_lost_worker_seen_working_again_can_be_lost_again(bus: Bus) -> None:
    """No liveness key: the dispatcher reports the worker lost after two leases; a task event
    of its later puts it back under watch, and its silence is reported again."""
    started = WorkerStarted(
        worker_id="w9", host="h", pid=9, queues=["default"], concurrency=1, version="0"
    )

    async def lost_reports() -> list[WorkerLost]:
        return [e for e in await read_log(bus) if isinstance(e, WorkerLost)]

    async def until_lost(count: int) -> None:
        while len(await lost_reports()) < count:
            await asyncio.sleep(0.05)

    async with running(Dispatcher(bus, lease_s=0.3).run):
        await bus.publish_event(started)
        await asyncio.wait_for(until_lost(1), 10)
        await bus.publish_event(
            TaskStarted(
                job_id="j9", task_id="j9-0", worker_id="w9", attempt=1, lease_deadline=utc_now()
            )
        )
        await asyncio.wait_for(until_lost(2), 10)
    first, second = await lost_reports()
    assert first.worker_id == second.worker_id == "w9" and first.id != second.id
