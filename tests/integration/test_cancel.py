"""Cancelling a job: queued tasks are purged, running ones stop within a lease tick, and every
task ends exactly once."""

import asyncio
from collections import Counter

import pytest

from cli._jobs import cancel_job
from events import (
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
from services.dispatcher import Dispatcher
from services.worker import Worker, WorkerOptions
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
