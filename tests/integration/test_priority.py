"""Priority levels against a real nats-server: high work overtakes a backlog, low work still
progresses under a flood of high, a cancel purges every level, and task messages queued
before there were levels are still served."""

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from jobstream.cli._jobs import cancel_job
from jobstream.events import (
    TASKS_STREAM,
    Bus,
    JobCancelled,
    JobSubmitted,
    PriorityLevel,
    TaskCancelled,
    TaskMessage,
    TaskSpec,
    TaskSucceeded,
    encode,
    ensure_streams,
    new_id,
    queue_subjects,
    task_id_for,
    worker_consumer_name,
)
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import HandlerRegistry, TaskContext, Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import read_log, running

BACKLOG = 50_000
PUBLISH_WINDOW = 2_000


class Starts:
    """A `mark` handler that records when each task of each job started."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}

    async def mark(self, args: Mapping[str, Any], ctx: TaskContext) -> None:
        self.at.setdefault(ctx.job_id, []).append(time.monotonic())
        await asyncio.sleep(float(args.get("seconds", 0)))

    def count(self, job_id: str) -> int:
        return len(self.at.get(job_id, []))

    def registry(self) -> HandlerRegistry:
        registry = HandlerRegistry.default()
        registry.add("mark", self.mark)
        return registry


async def queue_directly(bus: Bus, messages: list[TaskMessage]) -> None:
    """Publish task messages as the dispatcher would, a window of acks at a time."""
    for first in range(0, len(messages), PUBLISH_WINDOW):
        sent = [
            await bus.start_task_publish("default", m, msg_id=m.task_id)
            for m in messages[first : first + PUBLISH_WINDOW]
        ]
        await asyncio.gather(*sent)


def tasks_of(job_id: str, count: int, level: PriorityLevel, seconds: float) -> list[TaskMessage]:
    return [
        TaskMessage(
            job_id=job_id,
            task_id=task_id_for(job_id, index),
            kind="mark",
            args={"seconds": seconds},
            level=level,
        )
        for index in range(count)
    ]


async def queued(bus: Bus) -> int:
    return (await bus.js.stream_info(TASKS_STREAM)).state.messages


async def wait_until(predicate: Any, timeout_s: float) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


async def test_high_job_starts_within_a_second_behind_a_backlog(bus: Bus) -> None:
    starts = Starts()
    await ensure_streams(bus.js)
    backlog_job = new_id()
    await queue_directly(bus, tasks_of(backlog_job, BACKLOG, PriorityLevel.NORMAL, 0.05))
    high = JobSubmitted(
        job_id=new_id(), priority=10, tasks=[TaskSpec(kind="mark", args={}, count=10)]
    )
    options = WorkerOptions(lease_s=10, concurrency=4)
    worker = Worker(bus, options=options, handlers=starts.registry())
    async with running(Dispatcher(bus, lease_s=10).run, worker.run):
        await wait_until(lambda: starts.count(backlog_job) >= 20, 10)
        submitted_at = time.monotonic()
        await bus.publish_event(high)
        await wait_until(lambda: starts.count(high.job_id) >= 1, 5)
        latency_s = starts.at[high.job_id][0] - submitted_at
        await wait_until(lambda: starts.count(high.job_id) == 10, 5)
        left = await queued(bus)
    print(f"first high task started {latency_s * 1000:.0f} ms after its submission")
    assert latency_s < 1.0
    # The backlog really was one: almost all of it still waits.
    assert left > BACKLOG - 1_000


async def test_low_work_progresses_under_a_flood_of_high(bus: Bus) -> None:
    starts = Starts()
    await ensure_streams(bus.js)
    flood, low = new_id(), new_id()
    await queue_directly(bus, tasks_of(flood, 3_000, PriorityLevel.HIGH, 0.01))
    await queue_directly(bus, tasks_of(low, 20, PriorityLevel.LOW, 0.01))
    options = WorkerOptions(lease_s=10, concurrency=2)
    worker = Worker(bus, options=options, handlers=starts.registry())
    async with running(worker.run):
        await wait_until(lambda: starts.count(low) == 20, 20)
        high_started = starts.count(flood)
    print(f"under a flood of high: {high_started} high tasks started while 20 low ones did")
    # Low got at least its share (1 slot in 10; more when high's deliveries lag the free
    # slots), high most of the rest, and most of the flood still waited.
    assert 20 * 3 <= high_started <= 20 * 15
    assert high_started < 1_500


async def test_cancel_purges_every_level_and_the_form_before_levels(bus: Bus) -> None:
    job = JobSubmitted(job_id=new_id(), priority=3, tasks=[TaskSpec(kind="noop", count=5)])
    async with running(Dispatcher(bus, lease_s=5).run):
        await bus.publish_event(job)
        await wait_until_async(lambda: queued(bus), 5, 5)
        # A copy queued by a dispatcher from before levels: `task.<queue>.<job_id>`.
        old_form = TaskMessage(job_id=job.job_id, task_id=task_id_for(job.job_id, 0), kind="noop")
        await bus.js.publish(f"task.default.{job.job_id}", encode(old_form))
        assert await queued(bus) == 6
        await cancel_job(bus, job.job_id, reason="test")
        await wait_until_async(lambda: queued(bus), 0, 5)
        log = await read_log(bus)
    assert sum(isinstance(e, JobCancelled) for e in log) == 1
    assert sum(isinstance(e, TaskCancelled) for e in log) == 5


async def test_messages_queued_before_levels_are_served_after_the_upgrade(bus: Bus) -> None:
    """The queue's one consumer of before (all of `task.<queue>.>`) is narrowed to the normal
    level and the old form; then the other levels' consumers can be added."""
    await ensure_streams(bus.js)
    await bus.js.add_consumer(
        TASKS_STREAM,
        ConsumerConfig(
            durable_name=worker_consumer_name("default"),
            filter_subject=queue_subjects("default"),
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    job_id = new_id()
    old_form = TaskMessage(job_id=job_id, task_id=task_id_for(job_id, 0), kind="noop")
    await bus.js.publish(f"task.default.{job_id}", encode(old_form))
    async with running(Worker(bus, options=WorkerOptions(lease_s=5)).run):

        async def succeeded() -> None:
            while not any(isinstance(e, TaskSucceeded) for e in await read_log(bus)):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(succeeded(), 10)
    assert await queued(bus) == 0


async def wait_until_async(read: Any, expected: int, timeout_s: float) -> None:
    async def poll() -> None:
        while await read() != expected:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)
