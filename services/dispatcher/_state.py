"""The dispatcher's state, rebuilt from the log: open jobs and live workers.

It is saved as a snapshot with the log sequence it reflects, so a restarted dispatcher
loads it and replays only what came after.
"""

from datetime import datetime

import msgspec

from events import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskSucceeded,
    is_chunk_id,
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

    @property
    def finished(self) -> int:
        return self.succeeded + self.dead_lettered + self.cancelled

    @property
    def done(self) -> bool:
        return self.finished >= self.total


class LiveWorker(msgspec.Struct, kw_only=True):
    worker_id: str
    # The last sequence on the worker's subject: worker.lost is fenced on it.
    worker_seq: int
    started_at: datetime


class DispatcherState(msgspec.Struct, kw_only=True):
    last_seq: int = 0
    # Events set aside as unusable, since the dispatcher's state began.
    set_aside: int = 0
    jobs: dict[str, OpenJob] = msgspec.field(default_factory=dict)
    workers: dict[str, LiveWorker] = msgspec.field(default_factory=dict)
    # Workers reported lost, with the sequence of that report: one seen working again is
    # live again, and can be reported lost again.
    lost_workers: dict[str, int] = msgspec.field(default_factory=dict)

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
        )
        self.jobs[event.job_id] = job
        return job

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
                if is_chunk_id(event.job_id, event.task_id):
                    return None
                job.cancelled += 1
        return job if job.done else None

    def on_job_ended(self, event: JobCompleted | JobFailed | JobCancelled) -> None:
        self.jobs.pop(event.job_id, None)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DispatcherState)


def dump_state(state: DispatcherState) -> bytes:
    return _encoder.encode(state)


def load_state(data: bytes) -> DispatcherState:
    return _decoder.decode(data)
