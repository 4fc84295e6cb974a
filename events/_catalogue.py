"""The event catalogue: frozen, keyword-only, tagged msgspec Structs, one union per aggregate.

Evolution rule: add fields with defaults; never change a field's type. Unknown fields
are ignored on decode, so an older reader survives a newer writer.
"""

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from events._ids import new_id

JsonValue = Any
Positive = Annotated[int, msgspec.Meta(ge=1)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One kind of task in a job; `count` copies of it get consecutive task ids."""

    kind: str
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    count: Positive = 1
    # The kind's own attempt limit; None: the job's `max_attempts`.
    max_attempts: Positive | None = None


class _Event(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False
):
    id: str = msgspec.field(default_factory=new_id)
    at: datetime = msgspec.field(default_factory=utc_now)


# --- job -------------------------------------------------------------------


class JobSubmitted(_Event, tag="job.submitted", frozen=True, kw_only=True):
    job_id: str
    name: str = ""
    queue: str = "default"
    priority: int = 0
    tasks: list[TaskSpec]
    max_attempts: Positive = 3
    timeout_s: float | None = None
    idempotency_key: str | None = None
    submitted_by: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def task_count(self) -> int:
        return sum(spec.count for spec in self.tasks)


class JobCancelled(_Event, tag="job.cancelled", frozen=True, kw_only=True):
    job_id: str
    reason: str = ""


class JobCompleted(_Event, tag="job.completed", frozen=True, kw_only=True):
    job_id: str
    succeeded: int
    dead_lettered: int = 0
    cancelled: int = 0
    duration_s: float


class JobFailed(_Event, tag="job.failed", frozen=True, kw_only=True):
    job_id: str
    succeeded: int
    dead_lettered: int
    cancelled: int = 0
    duration_s: float
    reason: str = ""


JobEvent = JobSubmitted | JobCancelled | JobCompleted | JobFailed


# --- task ------------------------------------------------------------------


class TaskStarted(_Event, tag="task.started", frozen=True, kw_only=True):
    job_id: str
    task_id: str
    worker_id: str
    attempt: int
    lease_deadline: datetime


class TaskProgress(_Event, tag="task.progress", frozen=True, kw_only=True):
    job_id: str
    task_id: str
    worker_id: str
    attempt: int
    message: str = ""
    fraction: float | None = None


class TaskSucceeded(_Event, tag="task.succeeded", frozen=True, kw_only=True):
    job_id: str
    task_id: str
    kind: str
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    worker_id: str
    attempt: int
    result: JsonValue = None
    duration_s: float


class TaskFailed(_Event, tag="task.failed", frozen=True, kw_only=True):
    """One failed attempt. Not terminal: a retry follows, or a `task.dead_lettered`."""

    job_id: str
    task_id: str
    worker_id: str
    attempt: int
    error: str
    retryable: bool = True
    next_retry_at: datetime | None = None
    duration_s: float = 0.0


class TaskDeadLettered(_Event, tag="task.dead_lettered", frozen=True, kw_only=True):
    job_id: str
    task_id: str
    kind: str
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    reason: str
    attempts: int
    last_error: str = ""
    worker_id: str = ""


class TaskRequeued(_Event, tag="task.requeued", frozen=True, kw_only=True):
    """A dead-lettered task given another round of attempts (`jobstream dlq retry`)."""

    job_id: str
    task_id: str
    kind: str
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    queue: str = "default"
    max_attempts: Positive = 3
    timeout_s: float | None = None
    attempts_before: int = 0
    requeued_by: str = ""


class TaskCancelled(_Event, tag="task.cancelled", frozen=True, kw_only=True):
    job_id: str
    task_id: str
    reason: str = ""


TaskEvent = (
    TaskStarted
    | TaskProgress
    | TaskSucceeded
    | TaskFailed
    | TaskDeadLettered
    | TaskRequeued
    | TaskCancelled
)
TERMINAL_TASK_EVENTS = (TaskSucceeded, TaskDeadLettered, TaskCancelled)


# --- worker ----------------------------------------------------------------


class WorkerStarted(_Event, tag="worker.started", frozen=True, kw_only=True):
    worker_id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    version: str


class WorkerStopped(_Event, tag="worker.stopped", frozen=True, kw_only=True):
    worker_id: str
    reason: str = "graceful"


class WorkerLost(_Event, tag="worker.lost", frozen=True, kw_only=True):
    worker_id: str
    last_seen: datetime | None = None


WorkerEvent = WorkerStarted | WorkerStopped | WorkerLost

Event = JobEvent | TaskEvent | WorkerEvent


# --- the work-queue message (not an event: it lives in the TASKS stream) ----


class TaskMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    job_id: str
    task_id: str
    kind: str
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    max_attempts: Positive = 3
    timeout_s: float | None = None
    # Attempts made before a `jobstream dlq retry`; attempt numbers go on from there.
    attempts_before: int = 0


def task_id_for(job_id: str, index: int) -> str:
    """Task ids of a job are derived from the job id and the task's index in the job."""
    return f"{job_id}-{index}"


def expand_tasks(job: JobSubmitted) -> list[TaskMessage]:
    messages: list[TaskMessage] = []
    for spec in job.tasks:
        for _ in range(spec.count):
            messages.append(
                TaskMessage(
                    job_id=job.job_id,
                    task_id=task_id_for(job.job_id, len(messages)),
                    kind=spec.kind,
                    args=spec.args,
                    max_attempts=spec.max_attempts or job.max_attempts,
                    timeout_s=job.timeout_s,
                )
            )
    return messages


def event_type(event: Event) -> str:
    """The event's wire name, such as `task.succeeded`."""
    return str(type(event).__struct_config__.tag)
