"""A job followed in the event log until it ends: its tasks' endings as they come, and the
job's own end. The log is the truth, so this needs only NATS (no read model)."""

import asyncio
import contextlib
from collections.abc import Callable

from jobstream.events import (
    Bus,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSealed,
    JobstreamError,
    JobSubmitted,
    event_batches,
    job_subject,
    job_task_events_subject,
)

END_POLL_S = 0.5
# After the job's end, the time its last task events get to be read.
DRAIN_S = 5.0
JobEnd = JobCompleted | JobFailed | JobCancelled | JobRejected
JOB_ENDS = (JobCompleted, JobFailed, JobCancelled, JobRejected)
END_STATUS = {
    JobCompleted: "completed",
    JobFailed: "failed",
    JobCancelled: "cancelled",
    JobRejected: "rejected",
}


class JobFollower:
    """Reads job `job_id`'s task events from its first event on, handing each to `count`
    (which says how many tasks it ended: a chunk's run ends several), until the job's end is
    in the log and the endings it counts have been read."""

    def __init__(
        self,
        bus: Bus,
        job_id: str,
        *,
        count: Callable[[Event | None], int],
        on_change: Callable[[], None],
    ) -> None:
        self.bus = bus
        self.job_id = job_id
        self.count = count
        self.on_change = on_change
        # The job's task count once known (its job.submitted, or its job.sealed).
        self.total: int | None = None
        self.endings = 0

    async def follow(self) -> JobEnd:
        first = await self.bus.first_on_subject(job_subject(self.job_id))
        if first is None:
            raise JobstreamError(f"job {self.job_id} is not in the log")
        start_seq, submitted = first
        if isinstance(submitted, JobSubmitted) and submitted.sealed:
            self.total = submitted.task_count
        stop = asyncio.Event()
        reader = asyncio.create_task(self._read(start_seq, stop))
        try:
            end = await self._wait_for_end(reader)
            await self._drain(end, reader)
        finally:
            stop.set()
            await asyncio.gather(reader, return_exceptions=True)
        return end

    async def _read(self, start_seq: int, stop: asyncio.Event) -> None:
        subject = job_task_events_subject(self.job_id)
        batches = event_batches(self.bus, start_seq=start_seq, stop=stop, filter_subject=subject)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                ended = sum(self.count(item.event) for item in batch)
                if ended:
                    self.endings += ended
                    self.on_change()

    async def _wait_for_end(self, reader: asyncio.Task[None]) -> JobEnd:
        subject = job_subject(self.job_id)
        while True:
            last = await self.bus.last_on_subject(subject)
            if last is not None:
                event = last[1]
                if isinstance(event, JOB_ENDS):
                    return event
                if isinstance(event, JobSealed) and self.total is None:
                    self.total = event.task_count
                    self.on_change()
            if reader.done():
                reader.result()  # its error, if it failed
            await asyncio.sleep(END_POLL_S)

    async def _drain(self, end: JobEnd, reader: asyncio.Task[None]) -> None:
        """Every task's ending comes before the job's in the log: wait until the reader has
        them all (a cancel's `task.cancelled` events follow it; those get `DRAIN_S`)."""
        expected = (
            end.succeeded + end.dead_lettered + end.cancelled
            if isinstance(end, JobCompleted | JobFailed)
            else None
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        while loop.time() < deadline and not reader.done():
            if expected is not None and self.endings >= expected:
                return
            await asyncio.sleep(0.05)
