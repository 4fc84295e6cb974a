"""Chunked mode against a real nats-server: many tasks per message, one event per chunk,
failed tasks going on alone, cancel reaching the tasks of chunks not yet run."""

import asyncio
from collections import Counter
from datetime import timedelta

from jobstream.cli._jobs import cancel_job
from jobstream.events import (
    TASKS_STREAM,
    Bus,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    PriorityLevel,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskMessage,
    TaskSpec,
    TaskSucceeded,
    chunk_task_events,
    new_id,
    task_id_for,
    utc_now,
    worker_consumer_name,
)
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import FAST, read_log, running, wait_for_job_end


def _outcomes(log: list[Event]) -> Counter[str]:
    """Each task's terminal outcome, whether its own event or its chunk's says it."""
    ends: Counter[str] = Counter()
    for event in log:
        if isinstance(event, TaskChunkFinished):
            for result in event.results:
                ends[result.task_id] += 1
        elif isinstance(event, TaskSucceeded | TaskDeadLettered):
            ends[event.task_id] += 1
    return ends


async def test_a_chunked_job_runs_its_tasks_in_chunks_and_retries_failures_alone(
    bus: Bus,
) -> None:
    submitted = JobSubmitted(
        job_id=new_id(),
        chunk_size=10,
        max_attempts=2,
        priority=5,
        tasks=[
            TaskSpec(kind="sum", args={"a": 1, "b": 2}, count=45),
            TaskSpec(kind="fail", args={"succeed_on_attempt": 2}, count=3),
            TaskSpec(kind="fail", args={"message": "never"}, count=2),
        ],
    )
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=FAST).run):
        await bus.publish_event(submitted)
        ended = await wait_for_job_end(bus, submitted.job_id)
    assert isinstance(ended, JobFailed)
    assert (ended.succeeded, ended.dead_lettered) == (48, 2)

    log = await read_log(bus)
    chunks = [e for e in log if isinstance(e, TaskChunkFinished)]
    chunk_ids = [f"{submitted.job_id}-c{first}" for first in range(0, 50, 10)]
    assert sorted(c.task_id for c in chunks) == sorted(chunk_ids)
    assert sum(len(c.results) for c in chunks) == 45
    assert sorted(f.task_id for c in chunks for f in c.failed) == [
        f"{submitted.job_id}-{i}" for i in range(45, 50)
    ]
    sums = {r.task_id: r.result for c in chunks for r in c.results}
    assert all(value == {"sum": 3} for value in sums.values())
    # The failed ones went on alone, at attempt 2: three succeeded, two were dead-lettered.
    alone = [e for e in log if isinstance(e, TaskSucceeded | TaskDeadLettered | TaskFailed)]
    assert Counter(type(e).__name__ for e in alone) == {
        "TaskSucceeded": 3,
        "TaskFailed": 2,
        "TaskDeadLettered": 2,
    }
    assert all(e.attempt == 2 for e in alone if isinstance(e, TaskSucceeded | TaskFailed))
    assert _outcomes(log) == Counter({f"{submitted.job_id}-{i}": 1 for i in range(50)})
    per_task = [e for c in chunks for e in chunk_task_events(c)]
    assert len(per_task) == 50
    # Its chunks, and the tasks that went on alone, were all served at the job's level.
    assert await delivered(bus, PriorityLevel.HIGH) >= 5 + 5
    assert await delivered(bus, PriorityLevel.NORMAL) == 0


async def delivered(bus: Bus, level: PriorityLevel) -> int:
    """Deliveries made by the default queue's consumer of `level`."""
    info = await bus.js.consumer_info(TASKS_STREAM, worker_consumer_name("default", level))
    return info.delivered.consumer_seq or 0


async def test_cancel_reaches_the_tasks_of_chunks_not_yet_run(bus: Bus) -> None:
    submitted = JobSubmitted(
        job_id=new_id(),
        chunk_size=2,
        tasks=[TaskSpec(kind="sleep", args={"seconds": 0.3}, count=40)],
    )
    options = WorkerOptions(lease_s=5, concurrency=1)
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=options).run):
        await bus.publish_event(submitted)
        await asyncio.sleep(1.0)
        await cancel_job(bus, submitted.job_id)

        async def cancelled() -> None:
            while not any(
                isinstance(e, JobCancelled) and e.job_id == submitted.job_id
                for e in await read_log(bus)
            ):
                await asyncio.sleep(0.1)

        await asyncio.wait_for(cancelled(), 30)
        await asyncio.sleep(1.5)
    log = await read_log(bus)
    assert not any(isinstance(e, JobCompleted | JobFailed) for e in log)
    done = {r.task_id for e in log if isinstance(e, TaskChunkFinished) for r in e.results}
    cancelled_tasks = {
        e.task_id
        for e in log
        if isinstance(e, TaskCancelled) and not e.task_id.split("-")[-1].startswith("c")
    }
    assert done and cancelled_tasks
    assert done.isdisjoint(cancelled_tasks)
    assert done | cancelled_tasks == {f"{submitted.job_id}-{i}" for i in range(40)}


async def test_a_permanent_error_in_a_chunk_is_dead_lettered_without_a_retry(bus: Bus) -> None:
    submitted = JobSubmitted(
        job_id=new_id(),
        chunk_size=5,
        max_attempts=3,
        tasks=[
            TaskSpec(kind="sum", args={"a": 1, "b": 1}, count=4),
            TaskSpec(kind="sum", args={"a": "one", "b": 1}),
        ],
    )
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=FAST).run):
        await bus.publish_event(submitted)
        ended = await wait_for_job_end(bus, submitted.job_id)
    assert isinstance(ended, JobFailed)
    assert (ended.succeeded, ended.dead_lettered) == (4, 1)
    log = await read_log(bus)
    [chunk] = [e for e in log if isinstance(e, TaskChunkFinished)]
    assert [f.retryable for f in chunk.failed] == [False]
    [dead] = [e for e in log if isinstance(e, TaskDeadLettered)]
    assert (dead.task_id, dead.reason, dead.attempts) == (
        f"{submitted.job_id}-4",
        "permanent error",
        1,
    )
    assert not any(isinstance(e, TaskFailed | TaskSucceeded) for e in log), "no run alone"


async def test_a_task_going_on_alone_waits_for_its_backoff_without_losing_an_attempt(
    bus: Bus,
) -> None:
    """What a chunk's failed task becomes: its message's first delivery only waits until
    `retry_at`; the run after it is the attempt after the chunk's."""
    job_id = new_id()
    retry_at = utc_now() + timedelta(seconds=1.0)
    alone = TaskMessage(
        job_id=job_id,
        task_id=task_id_for(job_id, 3),
        kind="sum",
        args={"a": 1, "b": 1},
        max_attempts=2,
        attempts_before=1,
        retry_at=retry_at,
    )
    async with running(Worker(bus, options=FAST).run):
        await bus.publish_task("default", alone, msg_id=f"{alone.task_id}@split")

        async def succeeded() -> TaskSucceeded:
            while True:
                for event in await read_log(bus):
                    if isinstance(event, TaskSucceeded) and event.task_id == alone.task_id:
                        return event
                await asyncio.sleep(0.05)

        done = await asyncio.wait_for(succeeded(), 15)
    assert done.attempt == 2
    assert done.at - timedelta(seconds=done.duration_s) >= retry_at
