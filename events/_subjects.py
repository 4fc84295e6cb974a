"""Stream names, subjects and headers: the one place that spells them."""

import re
from enum import StrEnum

from events._catalogue import (
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRequeued,
    TaskStarted,
    TaskSucceeded,
    WorkerLost,
    WorkerStarted,
    WorkerStopped,
)

EVENTS_STREAM = "JOBSTREAM_EVENTS"
TASKS_STREAM = "JOBSTREAM_TASKS"
LIVENESS_BUCKET = "JOBSTREAM_LIVENESS"
DISPATCHER_BUCKET = "JOBSTREAM_DISPATCHER"

EVENT_SUBJECTS = "evt.>"
JOB_EVENT_SUBJECTS = "evt.job.>"
TASK_EVENT_SUBJECTS = "evt.task.>"
WORKER_EVENT_SUBJECTS = "evt.worker.>"
TASK_QUEUE_SUBJECTS = "task.>"


class Header(StrEnum):
    MSG_ID = "Nats-Msg-Id"
    EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


_NOT_IN_TOKENS = re.compile(r"[.*> \t\r\n]")


def _token(value: str, what: str) -> str:
    if not value or _NOT_IN_TOKENS.search(value):
        raise ValueError(f"{what} {value!r} cannot be a subject token")
    return value


def job_subject(job_id: str) -> str:
    return f"evt.job.{_token(job_id, 'job id')}"


def task_event_subject(job_id: str, task_id: str) -> str:
    return f"evt.task.{_token(job_id, 'job id')}.{_token(task_id, 'task id')}"


def job_task_events_subject(job_id: str) -> str:
    """All task events of one job."""
    return f"evt.task.{_token(job_id, 'job id')}.*"


def worker_subject(worker_id: str) -> str:
    return f"evt.worker.{_token(worker_id, 'worker id')}"


def task_queue_subject(queue: str, job_id: str) -> str:
    return f"task.{_token(queue, 'queue')}.{_token(job_id, 'job id')}"


def queue_subjects(queue: str) -> str:
    return f"task.{_token(queue, 'queue')}.>"


def job_queue_purge_subject(job_id: str) -> str:
    return f"task.*.{_token(job_id, 'job id')}"


def worker_consumer_name(queue: str) -> str:
    return f"workers-{_token(queue, 'queue')}"


def validate_name(value: str, what: str) -> str:
    """Check that a user-given name (queue, worker id) can be used in subjects."""
    return _token(value, what)


def subject_for(event: Event) -> str:
    """The subject an event is published on: one subject per job, per task, per worker."""
    match event:
        case JobSubmitted() | JobCancelled() | JobCompleted() | JobFailed():
            return job_subject(event.job_id)
        case (
            TaskStarted()
            | TaskProgress()
            | TaskSucceeded()
            | TaskFailed()
            | TaskDeadLettered()
            | TaskRequeued()
            | TaskCancelled()
            | TaskChunkFinished()
        ):
            return task_event_subject(event.job_id, event.task_id)
        case WorkerStarted() | WorkerStopped() | WorkerLost():
            return worker_subject(event.worker_id)
