"""A background task of the dispatcher (a big job's queueing) that fails on an error it
cannot handle stops the dispatcher with that error, instead of leaving the job stalled with
no sign; a dispatcher started again resumes the queueing and the job runs."""

import asyncio

import pytest

from jobstream.events import Bus, JobCompleted, JobSubmitted, TaskSpec, new_id
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.dispatcher._dispatcher import INLINE_EXPANSION_MAX
from jobstream.services.dispatcher._state import OpenJob
from jobstream.services.worker import Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import running, wait_for_job_end

TASKS = INLINE_EXPANSION_MAX + 1


class BuggyQueueing(Dispatcher):
    """A dispatcher whose background queueing hits a bug (not a transient error)."""

    async def _expand_window_by_window(self, job: OpenJob) -> None:
        raise RuntimeError("a bug in queueing")


async def test_a_failed_background_queueing_stops_the_dispatcher(bus: Bus) -> None:
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=TASKS)])
    await bus.publish_event(job)
    with pytest.raises(RuntimeError, match="a bug in queueing"):
        await asyncio.wait_for(BuggyQueueing(bus, lease_s=5).run(asyncio.Event()), 30)

    options = WorkerOptions(concurrency=64)
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=options).run):
        ended = await wait_for_job_end(bus, job.job_id, timeout_s=120)
    assert isinstance(ended, JobCompleted) and ended.succeeded == TASKS
