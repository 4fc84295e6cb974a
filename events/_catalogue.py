"""The event catalogue: frozen, keyword-only, tagged msgspec Structs, one union per aggregate.

Evolution rule: add fields with defaults; never change a field's type. Unknown fields
are ignored on decode, so an older reader survives a newer writer.
"""

import functools
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from typing_extensions import TypeIs

from jobstream.events._ids import new_id
from jobstream.events._names import (
    EventId,
    JobId,
    PriorityLevel,
    QueueName,
    TaskId,
    WorkerId,
    WorkerIdOrEmpty,
    level_of,
)

JsonValue = Any
# Times carry their offset (RFC 3339), so the schema gives them `"format": "date-time"`.
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
# Bounds on what a foreign writer may put in an event, so that no value can overflow a
# read-model column or make a process do unbounded work.
MAX_ATTEMPTS = 1000
# Task indexes are PostgreSQL integers in the read models; a job this big is streamed.
MAX_TASKS_PER_JOB = 100_000_000
MAX_CHUNK_SIZE = 10_000
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_REASON_LENGTH = 2000
Attempts = Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTEMPTS)]
AttemptNumber = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
TaskCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_TASKS_PER_JOB)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Priority = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
TimeoutS = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)]
DurationS = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Pid = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Kind = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
MAX_PROGRESS_MESSAGE = 1000
ProgressMessage = Annotated[str, msgspec.Meta(max_length=MAX_PROGRESS_MESSAGE)]


CHUNK_KIND = "chunk"


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One kind of task in a job; `count` copies of it get consecutive task ids."""

    kind: Kind
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    count: TaskCount = 1
    # The kind's own attempt limit; None: the job's `max_attempts`.
    max_attempts: Attempts | None = None


class _Event(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False
):
    id: EventId = msgspec.field(default_factory=new_id)
    at: AwareDatetime = msgspec.field(default_factory=utc_now)


# --- job -------------------------------------------------------------------


class JobSubmitted(_Event, tag="job.submitted", frozen=True, kw_only=True):
    """A job: its settings, and its tasks when they fit in this one message (then it is
    `sealed` at once). A bigger job is streamed: this header (`sealed` false, usually no
    tasks), `job.tasks_added` batches, then `job.sealed`. Only a sealed job runs."""

    job_id: JobId
    name: str = ""
    queue: QueueName = "default"
    priority: Priority = 0
    tasks: list[TaskSpec]
    max_attempts: Attempts = 3
    timeout_s: TimeoutS | None = None
    idempotency_key: str | None = None
    submitted_by: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    # Chunked mode: up to this many consecutive tasks per task message (None or 1: one each).
    chunk_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK_SIZE)] | None = None
    # False: more tasks follow in `job.tasks_added` events, and a `job.sealed` ends them.
    sealed: bool = True

    @property
    def task_count(self) -> int:
        return sum(spec.count for spec in self.tasks)


class JobTasksAdded(_Event, tag="job.tasks_added", frozen=True, kw_only=True):
    """One batch of a streamed job's tasks, sized to fit the server's max_payload. Batches
    follow each other on the job's subject, each fenced on the one before, so the log holds
    them once and in order; the job's task indexes go on from `first_index`."""

    job_id: JobId
    batch: Annotated[int, msgspec.Meta(ge=0, le=MAX_TASKS_PER_JOB)]
    first_index: Annotated[int, msgspec.Meta(ge=0, le=MAX_TASKS_PER_JOB)]
    tasks: list[TaskSpec]

    @property
    def task_count(self) -> int:
        return sum(spec.count for spec in self.tasks)


class JobSealed(_Event, tag="job.sealed", frozen=True, kw_only=True):
    """A streamed job is whole: `task_count` tasks in `batches` batches (besides any in its
    `job.submitted`). From here it runs."""

    job_id: JobId
    batches: Annotated[int, msgspec.Meta(ge=0, le=MAX_TASKS_PER_JOB)]
    task_count: Annotated[int, msgspec.Meta(ge=0, le=MAX_TASKS_PER_JOB)]


class JobCancelled(_Event, tag="job.cancelled", frozen=True, kw_only=True):
    job_id: JobId
    reason: str = ""


class JobCompleted(_Event, tag="job.completed", frozen=True, kw_only=True):
    job_id: JobId
    succeeded: Count
    dead_lettered: Count = 0
    cancelled: Count = 0
    duration_s: DurationS


class JobFailed(_Event, tag="job.failed", frozen=True, kw_only=True):
    job_id: JobId
    succeeded: Count
    dead_lettered: Count
    cancelled: Count = 0
    duration_s: DurationS
    reason: str = ""


class JobRejected(_Event, tag="job.rejected", frozen=True, kw_only=True):
    """An event on the job's subject that cannot be acted on (malformed, or out of bounds):
    set aside by the dispatcher, with why. The job, if it was one, ends here."""

    job_id: JobId
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_LENGTH)]
    # The log sequence of the event set aside.
    rejected_seq: Annotated[int, msgspec.Meta(ge=1)]


JobEvent = (
    JobSubmitted | JobTasksAdded | JobSealed | JobCancelled | JobCompleted | JobFailed | JobRejected
)
# The same, for `isinstance`: every event on a job's own subject.
JOB_EVENTS = (
    JobSubmitted,
    JobTasksAdded,
    JobSealed,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
)


# --- task ------------------------------------------------------------------


class TaskStarted(_Event, tag="task.started", frozen=True, kw_only=True):
    job_id: JobId
    task_id: TaskId
    worker_id: WorkerId
    attempt: AttemptNumber
    lease_deadline: AwareDatetime


class TaskProgress(_Event, tag="task.progress", frozen=True, kw_only=True):
    job_id: JobId
    task_id: TaskId
    worker_id: WorkerId
    attempt: AttemptNumber
    message: ProgressMessage = ""
    fraction: Fraction | None = None


class TaskSucceeded(_Event, tag="task.succeeded", frozen=True, kw_only=True):
    job_id: JobId
    task_id: TaskId
    kind: Kind
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    worker_id: WorkerId
    attempt: AttemptNumber
    result: JsonValue = None
    duration_s: DurationS


class TaskFailed(_Event, tag="task.failed", frozen=True, kw_only=True):
    """One failed attempt. Not terminal: a retry follows, or a `task.dead_lettered`."""

    job_id: JobId
    task_id: TaskId
    worker_id: WorkerId
    attempt: AttemptNumber
    error: str
    retryable: bool = True
    next_retry_at: AwareDatetime | None = None
    duration_s: DurationS = 0.0


class TaskDeadLettered(_Event, tag="task.dead_lettered", frozen=True, kw_only=True):
    job_id: JobId
    task_id: TaskId
    kind: Kind
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    reason: str
    attempts: AttemptNumber
    last_error: str = ""
    worker_id: WorkerIdOrEmpty = ""


class TaskRequeued(_Event, tag="task.requeued", frozen=True, kw_only=True):
    """A dead-lettered task given another round of attempts (`jobstream dlq retry`)."""

    job_id: JobId
    task_id: TaskId
    kind: Kind
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    queue: QueueName = "default"
    max_attempts: Attempts = 3
    timeout_s: TimeoutS | None = None
    attempts_before: AttemptNumber = 0
    requeued_by: str = ""
    # The job's priority: the requeued task is queued at its job's level.
    priority: Priority = 0


class TaskCancelled(_Event, tag="task.cancelled", frozen=True, kw_only=True):
    job_id: JobId
    task_id: TaskId
    reason: str = ""


class ChunkResult(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One task of a chunk that succeeded."""

    task_id: TaskId
    kind: Kind
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    result: JsonValue = None
    duration_s: DurationS


class ChunkFailure(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One task of a chunk that failed: it goes on alone, with the attempts it has left,
    unless its error is permanent (not `retryable`)."""

    task_id: TaskId
    kind: Kind
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    error: str
    duration_s: DurationS = 0.0
    retryable: bool = True


class TaskChunkFinished(_Event, tag="task.chunk_finished", frozen=True, kw_only=True):
    """A chunk's one run: the results of its tasks that succeeded, and the failures of the
    others, which are queued again one by one. Terminal for the chunk (`task_id` is the
    chunk's id); each task it names is counted as by its own `task.succeeded` or
    `task.failed`."""

    job_id: JobId
    task_id: TaskId
    worker_id: WorkerId
    attempt: AttemptNumber
    duration_s: DurationS
    results: list[ChunkResult] = msgspec.field(default_factory=list)
    failed: list[ChunkFailure] = msgspec.field(default_factory=list)


# The events about one task; a `task.chunk_finished` stands for several of them.
OneTaskEvent = (
    TaskStarted
    | TaskProgress
    | TaskSucceeded
    | TaskFailed
    | TaskDeadLettered
    | TaskRequeued
    | TaskCancelled
)
TaskEvent = OneTaskEvent | TaskChunkFinished
TERMINAL_TASK_EVENTS = (TaskSucceeded, TaskDeadLettered, TaskCancelled, TaskChunkFinished)


# --- worker ----------------------------------------------------------------


class WorkerStarted(_Event, tag="worker.started", frozen=True, kw_only=True):
    worker_id: WorkerId
    host: str
    pid: Pid
    queues: list[QueueName]
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    version: str


class WorkerStopped(_Event, tag="worker.stopped", frozen=True, kw_only=True):
    worker_id: WorkerId
    reason: str = "graceful"


class WorkerLost(_Event, tag="worker.lost", frozen=True, kw_only=True):
    worker_id: WorkerId
    last_seen: AwareDatetime | None = None


class WorkerForgotten(_Event, tag="worker.forgotten", frozen=True, kw_only=True):
    """A stopped or lost worker removed from the read models (`jobstream workers prune`)."""

    worker_id: WorkerId
    reason: str = ""


WorkerEvent = WorkerStarted | WorkerStopped | WorkerLost | WorkerForgotten

Event = JobEvent | TaskEvent | WorkerEvent

# Event groups by exact type, for what checks every event (the projections' rules): an
# `isinstance` against a Struct class the event is not of goes through the metaclass's
# `__instancecheck__`, ~0.1 µs a class, where a set lookup costs a twentieth of that. No
# event type is subclassed (tests/unit/test_events.py).
_JOB_EVENT_TYPES: frozenset[type] = frozenset(JOB_EVENTS)
_ONE_TASK_EVENT_TYPES: frozenset[type] = frozenset(typing.get_args(OneTaskEvent))
_WORKER_EVENT_TYPES: frozenset[type] = frozenset(typing.get_args(WorkerEvent))


def is_job_event(event: Event) -> TypeIs[JobEvent]:
    """Whether `event` is one on its job's own subject (`isinstance(event, JOB_EVENTS)`)."""
    return type(event) in _JOB_EVENT_TYPES


def is_one_task_event(event: Event) -> TypeIs[OneTaskEvent]:
    """Whether `event` is about one task (`isinstance(event, OneTaskEvent)`)."""
    return type(event) in _ONE_TASK_EVENT_TYPES


def is_worker_event(event: Event) -> TypeIs[WorkerEvent]:
    """Whether `event` is a worker's (`isinstance(event, WorkerEvent)`)."""
    return type(event) in _WORKER_EVENT_TYPES


# --- the work-queue message (not an event: it lives in the TASKS stream) ----


class ChunkItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One task carried by a chunk message."""

    task_id: TaskId
    kind: Kind
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    max_attempts: Attempts = 3


class TaskMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One task, or (chunked mode) a chunk of `items`, whose `task_id` is the chunk's id."""

    job_id: JobId
    task_id: TaskId
    kind: Kind
    args: dict[str, JsonValue] = msgspec.field(default_factory=dict)
    max_attempts: Attempts = 3
    timeout_s: TimeoutS | None = None
    # Attempts made before (a `jobstream dlq retry`, a chunk it failed in); attempt numbers
    # go on from there.
    attempts_before: AttemptNumber = 0
    items: list[ChunkItem] = msgspec.field(default_factory=list)
    # Not to run before then (a task going on alone after failing in a chunk: its backoff).
    # The first delivery of such a message only waits; it is not an attempt.
    retry_at: AwareDatetime | None = None
    # Its job's level: the subject it is queued on, and the consumer it is served by.
    level: PriorityLevel = PriorityLevel.NORMAL
    # Times its handler put it back for later (`Defer`), none of them counted as an attempt.
    deferrals: AttemptNumber = 0


def task_id_for(job_id: str, index: int) -> str:
    """Task ids of a job are derived from the job id and the task's index in the job."""
    return f"{job_id}-{index}"


# The most digits an index below MAX_TASKS_PER_JOB has.
_INDEX_DIGITS = len(str(MAX_TASKS_PER_JOB - 1))


@functools.lru_cache(maxsize=4_096)
def task_index_of(job_id: str, task_id: str) -> int | None:
    """The index of task `task_id` in job `job_id`, if `task_id` is one `task_id_for` makes
    (below MAX_TASKS_PER_JOB); None if not. Cached (~1.3 MB at most; 16,384 entries cost a
    projector 5 MB): the projections ask it of each task event two or three times in a row."""
    return _index_after(f"{job_id}-", task_id)


def task_key_of(task_id: str) -> tuple[str, int] | None:
    """The job and the index a task id is made of by `task_id_for` (the read models' key of
    its row); None if it is not one."""
    job_id, dash, _ = task_id.rpartition("-")
    if not dash:
        return None
    index = task_index_of(job_id, task_id)
    return None if index is None else (job_id, index)


def chunk_index_of(job_id: str, chunk_id: str) -> int | None:
    """The index of the first task of chunk `chunk_id` of job `job_id`, if `chunk_id` is one
    `chunk_id_for` makes; None if not."""
    return _index_after(f"{job_id}-c", chunk_id)


def _index_after(prefix: str, task_id: str) -> int | None:
    if not task_id.startswith(prefix):
        return None
    digits = task_id[len(prefix) :]
    # ASCII digits, no leading zero (`task_id_for`'s form); not a regex: this runs for every
    # task event the projections apply, twice.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > _INDEX_DIGITS:
        return None
    if digits[0] == "0" and len(digits) > 1:
        return None
    index = int(digits)
    return index if index < MAX_TASKS_PER_JOB else None


class TaskExpander:
    """A job's task messages in index order, from its tasks as they arrive (those of its
    `job.submitted`, then each `job.tasks_added` batch): one message per task, or in chunked
    mode one per `chunk_size` consecutive tasks, on the same boundaries whatever the batches.
    Messages of tasks before `start` are skipped (an expansion resumed after a restart;
    `start` is on a chunk boundary)."""

    def __init__(
        self,
        *,
        job_id: str,
        max_attempts: int,
        timeout_s: float | None,
        chunk_size: int | None = None,
        start: int = 0,
        level: PriorityLevel = PriorityLevel.NORMAL,
    ) -> None:
        self.job_id = job_id
        self.level = level
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.chunk_size = chunk_size or 1
        self.start = start
        # The index the next task fed will have.
        self.next_index = 0
        self._items: list[ChunkItem] = []
        self._chunk_first = 0

    def feed(self, first_index: int, specs: list[TaskSpec]) -> Iterator[TaskMessage]:
        """The messages completed by these tasks, the first of which has `first_index`."""
        if first_index != self.next_index:
            raise ValueError(f"tasks from index {first_index}; index {self.next_index} was next")
        for spec in specs:
            attempts = spec.max_attempts or self.max_attempts
            for _ in range(spec.count):
                index = self.next_index
                self.next_index += 1
                if index < self.start:
                    continue
                task_id = task_id_for(self.job_id, index)
                if self.chunk_size <= 1:
                    yield TaskMessage(
                        job_id=self.job_id,
                        task_id=task_id,
                        kind=spec.kind,
                        args=spec.args,
                        max_attempts=attempts,
                        timeout_s=self.timeout_s,
                        level=self.level,
                    )
                    continue
                if not self._items:
                    self._chunk_first = index
                self._items.append(
                    ChunkItem(
                        task_id=task_id, kind=spec.kind, args=spec.args, max_attempts=attempts
                    )
                )
                if (index + 1) % self.chunk_size == 0:
                    yield self._chunk()

    def finish(self) -> Iterator[TaskMessage]:
        """The last, partial chunk, if any."""
        if self._items:
            yield self._chunk()

    def _chunk(self) -> TaskMessage:
        items, self._items = self._items, []
        return TaskMessage(
            job_id=self.job_id,
            task_id=chunk_id_for(self.job_id, self._chunk_first),
            kind=CHUNK_KIND,
            max_attempts=self.max_attempts,
            timeout_s=self.timeout_s,
            items=items,
            level=self.level,
        )


def _expander(job: JobSubmitted, *, chunked: bool) -> TaskExpander:
    return TaskExpander(
        job_id=job.job_id,
        max_attempts=job.max_attempts,
        timeout_s=job.timeout_s,
        chunk_size=job.chunk_size if chunked else None,
        level=level_of(job.priority),
    )


def expand_tasks(job: JobSubmitted) -> list[TaskMessage]:
    """One message per task of the job's own tasks."""
    return list(_expander(job, chunked=False).feed(0, job.tasks))


def chunk_id_for(job_id: str, first_index: int) -> str:
    """A chunk's id: distinct from its job's task ids (`<job>-<index>`)."""
    return f"{job_id}-c{first_index}"


def expand_chunks(job: JobSubmitted) -> list[TaskMessage]:
    """The job's own tasks in messages of up to `chunk_size` consecutive tasks each."""
    expander = _expander(job, chunked=True)
    return [*expander.feed(0, job.tasks), *expander.finish()]


def chunk_task_events(chunk: TaskChunkFinished) -> list[TaskSucceeded | TaskFailed]:
    """What a chunk's run says about each of its tasks, as their own events would."""
    events: list[TaskSucceeded | TaskFailed] = [
        TaskSucceeded(
            id=f"{chunk.id}-{index}",
            at=chunk.at,
            task_id=item.task_id,
            kind=item.kind,
            args=item.args,
            result=item.result,
            duration_s=item.duration_s,
            job_id=chunk.job_id,
            worker_id=chunk.worker_id,
            attempt=chunk.attempt,
        )
        for index, item in enumerate(chunk.results)
    ]
    events += [
        TaskFailed(
            id=f"{chunk.id}-f{index}",
            at=chunk.at,
            task_id=item.task_id,
            error=item.error,
            retryable=item.retryable,
            duration_s=item.duration_s,
            job_id=chunk.job_id,
            worker_id=chunk.worker_id,
            attempt=chunk.attempt,
        )
        for index, item in enumerate(chunk.failed)
    ]
    return events


def event_type(event: Event) -> str:
    """The event's wire name, such as `task.succeeded`."""
    return str(type(event).__struct_config__.tag)
