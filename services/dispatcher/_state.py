"""The dispatcher's state, rebuilt from the log: open jobs and live workers.

It is saved as a snapshot with the log sequence it reflects, so a restarted dispatcher
loads it and replays only what came after.
"""

from datetime import datetime

import msgspec

from jobstream.events import (
    MAX_TASKS_PER_JOB,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSealed,
    JobSubmitted,
    JobTasksAdded,
    PriorityLevel,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskSucceeded,
    chunk_index_of,
    level_of,
)


class OpenJob(msgspec.Struct, kw_only=True):
    job_id: str
    queue: str
    total: int
    submitted_at: datetime
    # The last sequence on the job's subject: job.completed is fenced on it.
    job_seq: int
    succeeded: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    # Chunked mode: tasks per task message (1: one each).
    chunk_size: int = 1
    # Where its tasks are: the job.submitted, and (a streamed job) the batches after it.
    submitted_seq: int = 0
    max_attempts: int = 3
    timeout_s: float | None = None
    # A streamed job runs once sealed; `total` counts the tasks of the batches read so far.
    sealed: bool = True
    batches: int = 0
    # Queued from the log in the background (a big job): the tasks whose messages the
    # server has acknowledged, from index 0; resumed from there after a restart.
    expanding: bool = False
    expanded: int = 0
    # Its tasks' priority level (their subjects and consumer).
    level: PriorityLevel = PriorityLevel.NORMAL

    @property
    def finished(self) -> int:
        return self.succeeded + self.dead_lettered + self.cancelled

    @property
    def done(self) -> bool:
        return self.sealed and self.finished >= self.total


class LiveWorker(msgspec.Struct, kw_only=True):
    worker_id: str
    # The last sequence on the worker's subject: worker.lost is fenced on it.
    worker_seq: int
    started_at: datetime


class Cancellation(msgspec.Struct, kw_only=True):
    """A cancelled job whose tasks are being ended with `task.cancelled`, in the background
    (a job of a million tasks takes minutes); resumed from `done` after a restart."""

    job_id: str
    total: int
    chunk_size: int = 1
    reason: str = ""
    # The tasks from index 0 on that have been ended (whole chunks, in chunked mode).
    done: int = 0


class DispatcherState(msgspec.Struct, kw_only=True):
    last_seq: int = 0
    # Events set aside as unusable, since the dispatcher's state began.
    set_aside: int = 0
    jobs: dict[str, OpenJob] = msgspec.field(default_factory=dict)
    workers: dict[str, LiveWorker] = msgspec.field(default_factory=dict)
    # Workers reported lost, with the sequence of that report: one seen working again is
    # live again, and can be reported lost again.
    lost_workers: dict[str, int] = msgspec.field(default_factory=dict)
    cancellations: dict[str, Cancellation] = msgspec.field(default_factory=dict)

    def on_job_submitted(self, seq: int, event: JobSubmitted) -> OpenJob | None:
        """Track a new job; None if it is already known (a replayed submission)."""
        if event.job_id in self.jobs:
            return None
        job = OpenJob(
            job_id=event.job_id,
            queue=event.queue,
            total=event.task_count,
            submitted_at=event.at,
            job_seq=seq,
            chunk_size=event.chunk_size or 1,
            submitted_seq=seq,
            max_attempts=event.max_attempts,
            timeout_s=event.timeout_s,
            sealed=event.sealed,
            level=level_of(event.priority),
        )
        self.jobs[event.job_id] = job
        return job

    def on_tasks_added(self, event: JobTasksAdded) -> str | None:
        """Count a streamed job's batch; why it cannot belong to the job, if it cannot."""
        job = self.jobs.get(event.job_id)
        if job is None or job.sealed:
            return None  # an ended job's, or a late copy: nothing to count
        if event.batch != job.batches or event.first_index != job.total:
            return (
                f"batch {event.batch} from task {event.first_index}; "
                f"batch {job.batches} from task {job.total} was next"
            )
        if job.total + event.task_count > MAX_TASKS_PER_JOB:
            return f"over the limit of {MAX_TASKS_PER_JOB:,} tasks per job"
        job.total += event.task_count
        job.batches += 1
        return None

    def on_sealed(self, event: JobSealed) -> str | None:
        """Seal a streamed job; why it cannot be sealed, if it cannot."""
        job = self.jobs.get(event.job_id)
        if job is None or job.sealed:
            return None
        if (event.batches, event.task_count) != (job.batches, job.total):
            return (
                f"sealed with {event.task_count} tasks in {event.batches} batches; "
                f"the log holds {job.total} in {job.batches}"
            )
        job.sealed = True
        return None

    def on_task_ended(
        self, event: TaskSucceeded | TaskDeadLettered | TaskCancelled | TaskChunkFinished
    ) -> OpenJob | None:
        """Count a terminal task event; return its job if that made the job finished.

        A chunk counts its tasks that succeeded; its failed ones end by their own events,
        and the cancel of a chunk is followed by one for each of its tasks."""
        job = self.jobs.get(event.job_id)
        if job is None or job.done:
            return None
        match event:
            case TaskSucceeded():
                job.succeeded += 1
            case TaskChunkFinished():
                job.succeeded += len(event.results)
            case TaskDeadLettered():
                job.dead_lettered += 1
            case TaskCancelled():
                if chunk_index_of(event.job_id, event.task_id) is not None:
                    return None
                job.cancelled += 1
        return job if job.done else None

    def on_job_ended(self, event: JobCompleted | JobFailed | JobCancelled | JobRejected) -> None:
        self.jobs.pop(event.job_id, None)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DispatcherState)


def dump_state(state: DispatcherState) -> bytes:
    return _encoder.encode(state)


def load_state(data: bytes) -> DispatcherState:
    return _decoder.decode(data)
