"""A job whose task messages cannot be sent (a chunk over the server's max_payload) is set
aside as rejected, its queued messages purged, and the dispatcher goes on with the next job."""

from jobstream.events import (
    TASKS_STREAM,
    Bus,
    JobCompleted,
    JobRejected,
    JobSubmitted,
    TaskSpec,
    job_subject,
    new_id,
)
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import running, wait_for_job_end


async def test_a_job_too_big_to_queue_is_rejected_and_the_next_runs(bus: Bus) -> None:
    max_payload = bus.nc.max_payload
    big_args = {"blob": "x" * (max_payload // 4)}
    too_big = JobSubmitted(
        job_id=new_id(),
        chunk_size=8,  # two chunks of 8 tasks of a quarter of max_payload each
        tasks=[TaskSpec(kind="noop", args=big_args, count=16)],
    )
    normal = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=3)])
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=WorkerOptions()).run):
        await bus.publish_event(too_big)
        await bus.publish_event(normal)
        ended = await wait_for_job_end(bus, normal.job_id)
        last = await bus.last_on_subject(job_subject(too_big.job_id))
    assert isinstance(ended, JobCompleted) and ended.succeeded == 3
    assert last is not None and isinstance(last[1], JobRejected), last
    assert "MaxPayloadError" in last[1].reason
    info = await bus.js.stream_info(TASKS_STREAM)
    assert info.state.messages == 0


async def test_a_bad_copy_of_a_running_jobs_submission_does_not_end_it(bus: Bus) -> None:
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="sleep", args={"seconds": 0.5})])
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=WorkerOptions()).run):
        await bus.publish_event(job)
        garbage = b'{"type": "job.submitted", "job_id": "' + job.job_id.encode() + b'"}'
        await bus.js.publish(job_subject(job.job_id), garbage)
        ended = await wait_for_job_end(bus, job.job_id)
    assert isinstance(ended, JobCompleted) and ended.succeeded == 1, ended
