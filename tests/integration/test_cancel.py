"""Cancelling a job: queued tasks are purged, running ones stop within a lease tick, and every
task ends exactly once."""

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from jobstream.cli._jobs import cancel_job
from jobstream.events import (
    TASKS_STREAM,
    TERMINAL_TASK_EVENTS,
    Bus,
    JobCancelled,
    JobstreamError,
    JobSubmitted,
    TaskCancelled,
    TaskSpec,
    TaskStarted,
    new_id,
)
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import read_log, running, wait_for_job_end


async def test_cancel_stops_running_and_purges_queued(bus: Bus) -> None:
    job = JobSubmitted(
        job_id=new_id(), tasks=[TaskSpec(kind="sleep", args={"seconds": 30}, count=12)]
    )
    options = WorkerOptions(lease_s=1.5, concurrency=4)
    async with running(Dispatcher(bus, lease_s=1.5).run, Worker(bus, options=options).run):
        await bus.publish_event(job)

        async def started_count() -> int:
            return sum(isinstance(e, TaskStarted) for e in await read_log(bus))

        while await started_count() < 4:
            await asyncio.sleep(0.1)
        began = asyncio.get_running_loop().time()
        await cancel_job(bus, job.job_id, reason="test")

        async def all_cancelled() -> None:
            while True:
                log = await read_log(bus)
                if sum(isinstance(e, TaskCancelled) for e in log) == 12:
                    return
                await asyncio.sleep(0.1)

        await asyncio.wait_for(all_cancelled(), 15)
        # Give the workers one more tick to see the cancel and let go of their tasks.
        await asyncio.sleep(1.0)
        stopped_within_s = asyncio.get_running_loop().time() - began
    assert stopped_within_s < 10
    log = await read_log(bus)
    endings = Counter(e.task_id for e in log if isinstance(e, TERMINAL_TASK_EVENTS))
    assert len(endings) == 12 and set(endings.values()) == {1}
    assert sum(isinstance(e, JobCancelled) for e in log) == 1
    with pytest.raises(JobstreamError, match="already ended"):
        await cancel_job(bus, job.job_id)


async def test_cancel_unknown_job_is_a_clear_error(bus: Bus) -> None:
    with pytest.raises(JobstreamError, match="not found"):
        await cancel_job(bus, "01NOSUCHJOB")


async def test_cancel_after_completion_is_refused(bus: Bus) -> None:
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=3)])
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=WorkerOptions()).run):
        await bus.publish_event(job)
        await wait_for_job_end(bus, job.job_id)
    with pytest.raises(JobstreamError, match="already ended"):
        await cancel_job(bus, job.job_id)


async def test_a_big_cancel_ends_its_tasks_in_the_background_and_survives_a_restart(
    bus: Bus,
) -> None:
    """A cancelled job's tasks are ended window by window beside the log: another job runs at
    once meanwhile, and a dispatcher stopped halfway goes on from its snapshot."""
    big = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=BIG_CANCEL)])
    # No worker: every task of the big job stays queued until the cancel.
    async with running(Dispatcher(bus, lease_s=5).run) as stop:
        await bus.publish_event(big)
        await _wait_for_queued(bus, BIG_CANCEL)
        await cancel_job(bus, big.job_id, reason="test")
        await _wait_until(lambda n: n > 0, bus)
        stop.set()  # halfway: the rest is the next dispatcher's
    cancelled_before = await _cancelled(bus)
    assert 0 < cancelled_before < BIG_CANCEL

    small = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=3)])
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=WorkerOptions()).run):
        began = asyncio.get_running_loop().time()
        await bus.publish_event(small)
        await wait_for_job_end(bus, small.job_id)
        small_took_s = asyncio.get_running_loop().time() - began
        await _wait_until(lambda n: n == BIG_CANCEL, bus)
    assert small_took_s < 5  # not behind the big job's thousands of cancels
    log = await read_log(bus)
    endings = Counter(e.task_id for e in log if isinstance(e, TERMINAL_TASK_EVENTS))
    assert sum(1 for task_id in endings if task_id.startswith(big.job_id)) == BIG_CANCEL
    assert set(endings.values()) == {1}  # each task ended once, across the restart


BIG_CANCEL = 6_000


async def _cancelled(bus: Bus) -> int:
    return sum(isinstance(e, TaskCancelled) for e in await read_log(bus))


async def _wait_until(done: Callable[[int], bool], bus: Bus, timeout_s: float = 60) -> None:
    async def poll() -> None:
        while not done(await _cancelled(bus)):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


async def _wait_for_queued(bus: Bus, count: int, timeout_s: float = 60) -> None:
    async def poll() -> None:
        while (await bus.js.stream_info(TASKS_STREAM)).state.messages < count:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), timeout_s)
