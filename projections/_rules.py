"""The rule set of the read models: what each event does to the rows of the tables, written once.

Each rule is a pure function of an event and the current row (or none) that returns the new
row, or rows to insert (`job_submitted` → a job and its `TaskRange`s); rows are the frozen
Structs of the read-model contract (`events/_read_model.py`). `ReadModel` holds rows and
applies events to them in log order (a `task.chunk_finished` as the per-task events it
stands for), routing each to its rules. It does no I/O: its callers give it the rows the
events may touch (`Keys`) and write back what changed:

- the live Postgres projector (`_postgres.py`, `_rows.py`) loads the rows a batch's events
  name, applies the batch here and writes what changed, in the batch's transaction, with its
  checkpoint; its lister (`_listing.py`) lists a streamed job's batch with `list_batch`;
- the replay (`_fold.py`) starts from no rows, applies the whole log here and COPYs the
  final rows into a fresh schema;
- the NDJSON projector (`_ndjson.py`) writes `result_of` of each first finishing event. The
  `results` of the read models are no table of their own but the view of the finished task
  rows (migration 013; `result_row` is a row of it).

So the three outputs cannot drift apart. A job's tasks come as batches (a `job.submitted`'s,
then a streamed job's `job.tasks_added`), and are not expanded row by row: a listed batch
leaves a `TaskRange` per TaskSpec, and a task's row is made from its range when an event
touches it. The replay lists each batch as it takes it and expands the ranges when it writes.
The live projector only records a batch; its lister lists it a little later, once most of
its tasks may have ended (`_listing.py`), and writes the rest of the ranges in SQL
(`generate_series`): a task that ends first has its row written once, by its event.

jsonb values are kept as their JSON text (`msgspec.Raw`), never decoded.
"""

import dataclasses
import functools
import math
import typing
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from jobstream.events import (
    EMPTY_JSON,
    JSON_NULL,
    TABLE_ROWS,
    TASK_COUNT_COLUMNS,
    TERMINAL_JOB_STATUSES,
    TERMINAL_TASK_STATES,
    AttemptOutcome,
    AttemptRow,
    BatchRow,
    Event,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobRow,
    JobSealed,
    JobStatus,
    JobStatusCountRow,
    JobSubmitted,
    JobTasksAdded,
    MinuteStatsRow,
    OneTaskEvent,
    RejectedRow,
    ResultRow,
    ResultStatus,
    SourceItem,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRequeued,
    TaskRow,
    TaskSpec,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    WorkerForgotten,
    WorkerLost,
    WorkerRow,
    WorkerStarted,
    WorkerStopped,
    chunk_index_of,
    chunk_task_events,
    duration_bucket,
    encode,
    is_job_event,
    is_one_task_event,
    is_worker_event,
    task_id_for,
    task_index_of,
)
from jobstream.projections._crawl import (
    CRAWL_KIND,
    SUMMED,
    CrawlStatsFold,
    failure_undone,
    page_facts,
)
from jobstream.projections._partitions import (
    is_task_subject_of,
    job_of_event_subject,
    parks,
    worker_subject_of,
)
from jobstream.projections._task_rows import over_the_task_limit, spec_ranges


class RejectedEvent(ValueError):
    """An event that decodes but cannot be projected: it is parked in `rejected_events`."""


# The tables' columns, in order.
COLUMNS: dict[str, tuple[str, ...]] = {
    **{table: row.__struct_fields__ for table, row in TABLE_ROWS.items()},
    "crawl_stats": (
        "job_id",
        "pass",
        "domain",
        *SUMMED,
        "min_ms",
        "max_ms",
        "status_counts",
        "cache_counts",
        "response_ms",
        "updated_seq",
    ),
}

replace = msgspec.structs.replace


# --- values ---------------------------------------------------------------------------------


def utc(at: datetime) -> datetime:
    """`at` in UTC (a naive time taken as UTC)."""
    if at.tzinfo is UTC:
        return at
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def minute_of(at: datetime) -> datetime:
    """The UTC minute holding `at` (the `minute` of its `stats_per_minute` row)."""
    at = utc(at)
    return _minute(at.year, at.month, at.day, at.hour, at.minute)


@functools.lru_cache(maxsize=4096)
def _minute(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    # A cache: the events of a batch fall in a few minutes, and datetime.replace costs
    # more than the rest of a result's count.
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def counted_back(at: datetime, duration_s: float) -> datetime:
    """`at` less `duration_s` (a negative or NaN duration as 0; `at` itself on overflow):
    when an attempt began, from its finish event."""
    try:
        # Positional, not `seconds=`: timedelta parses keywords slowly, and this runs for
        # every finishing event.
        return at - timedelta(0, duration_s if duration_s > 0.0 else 0.0)
    except OverflowError:
        return at


def finite(value: float | None) -> float | None:
    """A number that is not finite is stored as NULL."""
    return value if value is None or math.isfinite(value) else None


def json_value(value: Any) -> msgspec.Raw:
    """A jsonb value as its JSON text (None: SQL NULL, `JSON_NULL`)."""
    return JSON_NULL if value is None else msgspec.Raw(encode(value))


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    """Postgres `greatest`: NULLs ignored."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b > a else a


def _seconds(since: datetime, until: datetime) -> float:
    return (until - since) / timedelta(seconds=1)


# --- the result of a finished task ------------------------------------------------------------


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """A finished task as the NDJSON files show it, made from its finishing event alone (the
    NDJSON projector keeps no task rows): `inputs` are the args the event reports. The
    `results` view shows the same for every task the read models hold (every worker of ours
    reports its task's args), from the task's row (`result_row`)."""

    seq: int
    at: datetime
    job_id: str
    task_id: str
    kind: str
    status: ResultStatus
    inputs: dict[str, Any]
    output: Any
    worker_id: str
    attempts: int
    duration_s: float | None
    error: str | None


def result_of(seq: int, event: TaskSucceeded | TaskDeadLettered) -> Result:
    """The result of the task `event` finishes."""
    if isinstance(event, TaskSucceeded):
        return Result(
            seq=seq,
            at=utc(event.at),
            job_id=event.job_id,
            task_id=event.task_id,
            kind=event.kind,
            status="succeeded",
            inputs=event.args,
            output=event.result,
            worker_id=event.worker_id,
            attempts=event.attempt,
            duration_s=finite(event.duration_s),
            error=None,
        )
    return Result(
        seq=seq,
        at=utc(event.at),
        job_id=event.job_id,
        task_id=event.task_id,
        kind=event.kind,
        status="dead_lettered",
        inputs=event.args,
        output=None,
        worker_id=event.worker_id,
        attempts=event.attempts,
        duration_s=None,
        error=event.last_error or event.reason,
    )


# The states of the task rows the `results` view shows.
RESULT_STATES: frozenset[str] = frozenset(typing.get_args(ResultStatus))


def result_row(task: TaskRow) -> ResultRow:
    """A finished task's row of the `results` view (migration 013 selects the same)."""
    if task.state not in RESULT_STATES:
        raise ValueError(f"task {task.task_id} is {task.state}: it has no result")
    if task.finished_at is None:
        raise ValueError(f"task {task.task_id} is {task.state} with no finished_at")
    status: ResultStatus = "succeeded" if task.state == "succeeded" else "dead_lettered"
    return ResultRow(
        task_id=task.task_id,
        job_id=task.job_id,
        kind=task.kind,
        inputs=task.args,
        output=task.result,
        processed_by=task.worker_id or "",
        duration_s=task.duration_s,
        status=status,
        error=task.error,
        attempts=task.attempts,
        finished_at=task.finished_at,
        seq=task.updated_seq,
    )


# --- task ranges ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskRange:
    """`count` queued task rows of one TaskSpec, indexes from `first_index` on."""

    job_id: str
    first_index: int
    count: int
    kind: str
    args: msgspec.Raw
    seq: int

    @property
    def end(self) -> int:
        return self.first_index + self.count

    def without(self, indexes: Sequence[int]) -> list["TaskRange"]:
        """This range less the task indexes `indexes` (sorted): the parts between them."""
        parts: list[TaskRange] = []
        start = self.first_index
        for index in indexes[bisect_left(indexes, start) : bisect_left(indexes, self.end)]:
            if index > start:
                parts.append(dataclasses.replace(self, first_index=start, count=index - start))
            start = index + 1
        if start < self.end:
            parts.append(dataclasses.replace(self, first_index=start, count=self.end - start))
        return parts

    def row(self, index: int) -> TaskRow:
        return TaskRow(
            task_id=task_id_for(self.job_id, index),
            job_id=self.job_id,
            task_index=index,
            kind=self.kind,
            args=self.args,
            updated_seq=self.seq,
        )

    def as_json(self) -> dict[str, Any]:
        """The JSON input of `insert_task_ranges` (sql/projector.sql)."""
        return {
            "job_id": self.job_id,
            "first_index": self.first_index,
            "count": self.count,
            "kind": self.kind,
            "args": self.args,
            "seq": self.seq,
        }


def task_ranges(
    job_id: str, first_index: int, specs: Iterable[TaskSpec], seq: int
) -> list[TaskRange]:
    """The ranges of `specs`, task indexes from `first_index` on."""
    return [
        TaskRange(job_id, first, spec.count, spec.kind, json_value(spec.args), seq)
        for spec, first in spec_ranges(first_index, specs)
        if spec.count > 0
    ]


def check_task_limit(job_id: str, first_index: int, specs: list[TaskSpec]) -> None:
    """`RejectedEvent` if the task indexes of `specs` reach over the limit of tasks per job."""
    error = over_the_task_limit(job_id, first_index, specs)
    if error is not None:
        raise RejectedEvent(error)


# --- job rules --------------------------------------------------------------------------------


def job_submitted(
    job: JobRow | None, seq: int, at: datetime, event: JobSubmitted, *, listed: bool
) -> tuple[JobRow, BatchRow | None]:
    """The job, and its tasks as its first batch (`listed`: its task rows come with it; else
    the lister writes them later, as a streamed job's batches). A second job.submitted for a
    known job id changes nothing, its tasks included. A streamed job is `submitting` until
    its job.sealed. The job counts no task row yet: a batch's rows count when they are made
    (`ReadModel.list_batch`), and readers show the rest of `total_tasks` as queued."""
    check_task_limit(event.job_id, 0, event.tasks)
    if job is not None:
        return job, None
    row = JobRow(
        job_id=event.job_id,
        name=event.name,
        queue=event.queue,
        priority=event.priority,
        status="queued" if event.sealed else "submitting",
        total_tasks=event.task_count,
        max_attempts=event.max_attempts,
        timeout_s=finite(event.timeout_s),
        idempotency_key=event.idempotency_key,
        submitted_by=event.submitted_by,
        labels=json_value(event.labels),
        submitted_at=at,
        submitted_seq=seq,
        updated_seq=seq,
    )
    if event.task_count == 0:
        return row, None
    batch = BatchRow(
        job_id=event.job_id, first_index=0, task_count=event.task_count, seq=seq, listed=listed
    )
    return row, batch


def job_tasks_added(
    job: JobRow | None, seq: int, event: JobTasksAdded, *, listed: bool
) -> tuple[JobRow | None, BatchRow | None]:
    """A job still submitting takes the batch that goes on where its tasks end (as the
    dispatcher does): its count grows and the batch is recorded (`listed`: its task rows
    come with it). Any other (a repeat, a gap, an overlap, an empty batch, one of an unknown,
    sealed or ended job) changes nothing."""
    check_task_limit(event.job_id, event.first_index, event.tasks)
    if job is None or job.status != "submitting":
        return job, None
    if job.total_tasks != event.first_index or event.task_count == 0:
        return job, None
    batch = BatchRow(
        job_id=event.job_id,
        first_index=event.first_index,
        task_count=event.task_count,
        seq=seq,
        listed=listed,
    )
    return replace(job, total_tasks=job.total_tasks + event.task_count, updated_seq=seq), batch


def job_sealed(job: JobRow, seq: int) -> JobRow:
    """A streamed job is whole: it is queued, and runs. Only a job still submitting (a
    rejected or cancelled one stays so)."""
    if job.status != "submitting":
        return job
    return replace(job, status="queued", updated_seq=seq)


def job_finished(
    job: JobRow, seq: int, at: datetime, status: JobStatus, duration_s: float | None
) -> JobRow:
    """An ended job stays as it ended. No duration: the time since submission."""
    if job.status in TERMINAL_JOB_STATUSES:
        return job
    duration = finite(duration_s)
    return replace(
        job,
        status=status,
        finished_at=at,
        duration_s=duration if duration is not None else _seconds(job.submitted_at, at),
        updated_seq=seq,
    )


def job_rejected(job: JobRow | None, seq: int, at: datetime, event: JobRejected) -> JobRow:
    """A job the dispatcher set aside ends as rejected; its row is made if its submission
    could not be read (then it has no tasks)."""
    if job is None:
        job = JobRow(job_id=event.job_id, submitted_at=at, submitted_seq=seq, updated_seq=seq)
    if job.status in TERMINAL_JOB_STATUSES:
        return job
    return replace(
        job,
        status="rejected",
        finished_at=at,
        duration_s=_seconds(job.submitted_at, at),
        error=event.reason,
        updated_seq=seq,
    )


def job_running(job: JobRow, seq: int, started_at: datetime) -> JobRow:
    """A task at work: a queued job runs, from its earliest attempt's start."""
    return replace(
        job,
        status="running" if job.status == "queued" else job.status,
        started_at=started_at
        if job.started_at is None or started_at < job.started_at
        else job.started_at,
        updated_seq=max(job.updated_seq, seq),
    )


def tasks_moved(job: JobRow, before: TaskState | None, after: TaskState, count: int = 1) -> JobRow:
    """`count` of the job's task rows went from state `before` (None: rows just made) to
    `after`: its counts by state follow."""
    if before == after or count == 0:
        return job
    counts = {TASK_COUNT_COLUMNS[after]: getattr(job, TASK_COUNT_COLUMNS[after]) + count}
    if before is not None:
        counts[TASK_COUNT_COLUMNS[before]] = getattr(job, TASK_COUNT_COLUMNS[before]) - count
    return replace(job, **counts)


def job_reopened(job: JobRow, seq: int) -> JobRow:
    """A task requeued: a failed or completed job runs again."""
    if job.status in ("failed", "completed"):
        job = replace(job, status="running", finished_at=None, duration_s=None)
    return replace(job, updated_seq=max(job.updated_seq, seq))


# --- task rules -------------------------------------------------------------------------------
# Each takes the row of a task that has not ended (a terminal state is never left: see
# `ReadModel.open_task`) and returns its new row.


def task_started(task: TaskRow, seq: int, at: datetime, event: TaskStarted) -> TaskRow:
    return replace(
        task,
        state="running",
        attempts=event.attempt,
        worker_id=event.worker_id,
        started_at=at,
        updated_seq=seq,
    )


def task_progress(task: TaskRow, seq: int, event: TaskProgress) -> TaskRow:
    """A report of a task in flight: it is running (a task.started may never come: a worker
    sends one only for tasks slower than its tick); a report without a fraction keeps the
    last one."""
    return replace(
        task,
        state="running",
        worker_id=event.worker_id,
        progress=task.progress if event.fraction is None else finite(event.fraction),
        progress_message=event.message,
        updated_seq=seq,
    )


def task_succeeded(
    task: TaskRow,
    seq: int,
    event: TaskSucceeded,
    result: Result,
    output: msgspec.Raw,
    started_at: datetime,
) -> TaskRow:
    """started_at: when the attempt started, as its task.started said, else counted back. The
    kind is the one the event reports, as a result shows what ran (`task_listed` keeps it)."""
    same_attempt_started = task.attempts == event.attempt and task.started_at is not None
    return replace(
        task,
        kind=event.kind,
        state="succeeded",
        attempts=event.attempt,
        worker_id=event.worker_id,
        result=output,
        error=None,
        started_at=task.started_at if same_attempt_started else started_at,
        finished_at=result.at,
        duration_s=result.duration_s,
        updated_seq=seq,
    )


def task_failed(task: TaskRow, seq: int, event: TaskFailed) -> TaskRow:
    """Not terminal: a retry or a dead letter follows. Progress belongs to the attempt."""
    return replace(
        task,
        state="failed",
        attempts=event.attempt,
        worker_id=event.worker_id,
        error=event.error,
        progress=None,
        progress_message=None,
        updated_seq=seq,
    )


def task_dead_lettered(
    task: TaskRow, seq: int, at: datetime, event: TaskDeadLettered, error: str | None
) -> TaskRow:
    """No worker in the event: the one the task had. The kind is the event's, as in
    `task_succeeded`."""
    return replace(
        task,
        kind=event.kind,
        state="dead_lettered",
        attempts=event.attempts,
        worker_id=event.worker_id or task.worker_id,
        error=error,
        finished_at=at,
        updated_seq=seq,
    )


def task_requeued(task: TaskRow, seq: int) -> TaskRow:
    """A dead-lettered task given another round (`jobstream dlq retry`) is queued again and
    no longer finished; any other stays."""
    if task.state != "dead_lettered":
        return task
    return replace(task, state="queued", finished_at=None, duration_s=None, updated_seq=seq)


def task_cancelled(task: TaskRow, seq: int, at: datetime) -> TaskRow:
    return replace(task, state="cancelled", finished_at=at, updated_seq=seq)


def task_listed(task: TaskRow, task_range: TaskRange, index: int) -> TaskRow:
    """A row a task event made before its batch was listed keeps its state and gets its
    index, kind and args; a finished row keeps the kind its finishing event reported (its
    result's, counted in its minute's stats as that)."""
    finished = task.state in RESULT_STATES
    return replace(
        task,
        task_index=index,
        kind=task.kind if finished else task_range.kind,
        args=task_range.args,
        updated_seq=max(task.updated_seq, task_range.seq),
    )


# --- attempt rules ----------------------------------------------------------------------------


def attempt_started(event: TaskStarted, at: datetime) -> AttemptRow:
    return AttemptRow(
        task_id=event.task_id,
        attempt=event.attempt,
        job_id=event.job_id,
        worker_id=event.worker_id,
        outcome="running",
        started_at=at,
    )


def attempt_of_task(task: TaskRow) -> AttemptRow:
    """The last attempt of a succeeded task, as its row tells it: the row of the
    `task_attempts` view (migration 014) for an attempt that has none of its own."""
    return AttemptRow(
        task_id=task.task_id,
        attempt=task.attempts,
        job_id=task.job_id,
        worker_id=task.worker_id or "",
        outcome="succeeded",
        started_at=task.started_at,
        finished_at=task.finished_at,
        duration_s=task.duration_s,
    )


def attempt_abandoned(attempt: AttemptRow, error: str | None, at: datetime) -> AttemptRow:
    """An attempt still running when a later one starts (its lease expired) or the task is
    dead-lettered: it failed."""
    if attempt.outcome != "running":
        return attempt
    return replace(attempt, outcome="failed", error=error, finished_at=at)


def attempt_finished(
    attempt: AttemptRow | None,
    event: TaskSucceeded | TaskFailed,
    outcome: AttemptOutcome,
    error: str | None,
    started_at: datetime,
    at: datetime,
    duration_s: float | None,
) -> AttemptRow:
    """An attempt's outcome; its start, as its task.started said, else counted back."""
    if attempt is None:
        return AttemptRow(
            task_id=event.task_id,
            attempt=event.attempt,
            job_id=event.job_id,
            worker_id=event.worker_id,
            outcome=outcome,
            error=error,
            started_at=started_at,
            finished_at=at,
            duration_s=duration_s,
        )
    return replace(
        attempt,
        worker_id=event.worker_id,
        outcome=outcome,
        error=error,
        started_at=started_at if attempt.started_at is None else attempt.started_at,
        finished_at=at,
        duration_s=duration_s,
    )


# --- per-minute statistics -------------------------------------------------------------------


def minute_counted(row: MinuteStatsRow, result: ResultRow, sign: int) -> MinuteStatsRow:
    """A results row made (`sign` 1) or taken back by a requeue (-1), in its minute's row: a
    dead letter as failed, a success as succeeded with its duration in the histogram (a
    bucket emptied leaves it)."""
    if result.status == "dead_lettered":
        return replace(row, failed=row.failed + sign)
    durations = row.durations
    if result.duration_s is not None:
        bucket = str(duration_bucket(result.duration_s))
        durations = dict(durations)
        count = durations.get(bucket, 0) + sign
        if count:
            durations[bucket] = count
        else:
            del durations[bucket]
    return replace(row, succeeded=row.succeeded + sign, durations=durations)


# --- jobs by status ---------------------------------------------------------------------------


def status_counted(row: JobStatusCountRow, sign: int) -> JobStatusCountRow:
    """A job into (`sign` 1) or out of (-1) the row's status."""
    return replace(row, jobs=row.jobs + sign)


# --- worker rules -----------------------------------------------------------------------------


def worker_started(
    worker: WorkerRow | None, seq: int, at: datetime, event: WorkerStarted, partition: int
) -> WorkerRow:
    """A restarted worker keeps its counters."""
    if worker is None:
        worker = WorkerRow(
            worker_id=event.worker_id, last_seen_at=at, updated_seq=seq, partition=partition
        )
    return replace(
        worker,
        host=event.host,
        pid=event.pid,
        queues=list(event.queues),
        concurrency=event.concurrency,
        version=event.version,
        state="active",
        started_at=at,
        last_seen_at=_later(worker.last_seen_at, at),
        stopped_at=None,
        updated_seq=seq,
    )


def worker_stopped(worker: WorkerRow, seq: int, at: datetime) -> WorkerRow:
    return replace(
        worker,
        state="stopped",
        stopped_at=at,
        last_seen_at=_later(worker.last_seen_at, at),
        updated_seq=seq,
    )


def worker_lost(worker: WorkerRow, seq: int, event: WorkerLost) -> WorkerRow:
    """Only an active worker is lost; no last_seen: the one it had."""
    if worker.state != "active":
        return worker
    last_seen = worker.last_seen_at if event.last_seen is None else utc(event.last_seen)
    return replace(worker, state="lost", last_seen_at=last_seen, updated_seq=seq)


def worker_seen(
    worker: WorkerRow | None,
    seq: int,
    at: datetime,
    worker_id: str,
    partition: int,
    *,
    succeeded: int = 0,
    failed: int = 0,
) -> WorkerRow:
    """A task event of the worker's: a worker known only from its task events gets a row,
    shown active; a lost one seen working again is active again."""
    if worker is None:
        return WorkerRow(
            worker_id=worker_id,
            tasks_succeeded=succeeded,
            tasks_failed=failed,
            last_seen_at=at,
            updated_seq=seq,
            partition=partition,
        )
    return replace(
        worker,
        state="active" if worker.state == "lost" else worker.state,
        tasks_succeeded=worker.tasks_succeeded + succeeded,
        tasks_failed=worker.tasks_failed + failed,
        last_seen_at=_later(worker.last_seen_at, at),
        updated_seq=max(worker.updated_seq, seq),
    )


def _job_ended(
    job: JobRow, seq: int, at: datetime, event: JobSealed | JobCancelled | JobCompleted | JobFailed
) -> JobRow:
    match event:
        case JobSealed():
            return job_sealed(job, seq)
        case JobCancelled():
            return job_finished(job, seq, at, "cancelled", None)
        case JobCompleted():
            return job_finished(job, seq, at, "completed", event.duration_s)
        case JobFailed():
            return job_finished(job, seq, at, "failed", event.duration_s)


def check_subject(subject: str, event: Event) -> None:
    """`RejectedEvent` unless `event` came on the subject of its job or worker (what
    `subject_for` gives): a partition picks its events by subject, so an event on another
    job's subject would change rows another partition keeps."""
    if is_worker_event(event):
        if subject != worker_subject_of(event.worker_id):
            raise RejectedEvent(f"a {_tag(event)} of worker {event.worker_id!r} on {subject!r}")
    elif is_job_event(event):
        if job_of_event_subject(subject) != event.job_id:
            raise RejectedEvent(f"a {_tag(event)} of job {event.job_id!r} on {subject!r}")
    elif not is_task_subject_of(subject, event.job_id, event.task_id):
        raise RejectedEvent(f"a {_tag(event)} of task {event.task_id!r} on {subject!r}")
    else:
        named = [event.task_id]
        if type(event) is TaskChunkFinished:
            named += [item.task_id for item in event.results]
            named += [item.task_id for item in event.failed]
        for task_id in named:
            if not is_task_of(event.job_id, task_id):
                raise RejectedEvent(
                    f"a {_tag(event)} of job {event.job_id!r} names {task_id!r}, not one of"
                    " its tasks"
                )


def is_task_of(job_id: str, task_id: str) -> bool:
    """Whether `task_id` is a task's or a chunk's id of job `job_id`, as `task_id_for` and
    `chunk_id_for` make them: an event of one job naming another's task would change rows
    that job's partition keeps."""
    return task_index_of(job_id, task_id) is not None or chunk_index_of(job_id, task_id) is not None


def _tag(event: Event) -> str:
    return str(type(event).__struct_config__.tag)


# --- the read model ---------------------------------------------------------------------------


class ReadModel:
    """Rows of the read-model tables, and the rules applied to them event by event.

    Rows not held are taken not to exist: a caller applying events to a part of the tables
    must first put in every row the events name (`Keys` says which).

    `list_batches`: a batch taken (a job.submitted's tasks, a job.tasks_added) gets its task
    rows at once (the replay); else it is only recorded, unlisted, for the projector's lister
    (`list_batch`).

    `partition`: the index of the projection partition these rows are of (`_partitions.py`):
    the events given are that partition's, and the rows it alone keeps say so: a worker's
    (every partition keeps one) and those of tables that sum many jobs (`stats_per_minute`,
    `job_status_counts`).

    A job's counts by state (`JobRow.tasks_*`) count its task rows: a row is counted when it
    is made (the ranges of a batch when it is listed, a row a task event makes on its own)
    and moves between counts with its state; readers show the job's tasks with no row yet
    as queued. Likewise the jobs by status (`status_counts`): a job is counted when its row
    is made and moves with its status (`_put_job`, which every change of a job row goes
    through).
    """

    def __init__(self, *, list_batches: bool, partition: int = 0) -> None:
        self.list_batches = list_batches
        self.partition = partition
        self.jobs: dict[str, JobRow] = {}
        self.tasks: dict[str, TaskRow] = {}
        self.attempts: dict[str, dict[int, AttemptRow]] = {}
        self.workers: dict[str, WorkerRow] = {}
        self.rejected: dict[int, RejectedRow] = {}
        self.batches: list[BatchRow] = []
        # By job, in index order: task rows not made yet (`task` makes one when needed).
        self.ranges: dict[str, list[TaskRange]] = {}
        self._range_starts: dict[str, list[int]] = {}
        self.crawl = CrawlStatsFold()
        # By (minute, queue, kind): this partition's rows of stats_per_minute.
        self.minute_stats: dict[tuple[datetime, str, str], MinuteStatsRow] = {}
        # By status: this partition's rows of job_status_counts.
        self.status_counts: dict[JobStatus, JobStatusCountRow] = {}
        self.last_seq = 0

    def apply_item(self, item: SourceItem) -> None:
        """Apply a log item; park it (`rejected`) if it is not an event, is not on its own
        subject, or cannot be projected. A skipped item (another partition's) only moves
        `last_seq`."""
        self.last_seq = max(self.last_seq, item.seq)
        if item.skipped:
            return
        if item.event is None:
            self._reject(item, str(item.error))
            return
        try:
            check_subject(item.subject, item.event)
            self.apply(item.seq, item.event)
        except RejectedEvent as exc:
            self._reject(item, str(exc))

    def _reject(self, item: SourceItem, error: str) -> None:
        """Park `item`, if this partition parks what comes on its subject (`parks`)."""
        if not parks(self.partition, item.subject):
            return
        row = RejectedRow(seq=item.seq, subject=item.subject, error=error, payload=item.data)
        self.rejected.setdefault(item.seq, row)

    def apply(self, seq: int, event: Event) -> None:
        """Apply `event`; `RejectedEvent` (nothing changed) if it cannot be projected."""
        at = utc(event.at)
        if is_one_task_event(event):
            self._task_event(seq, at, event)
            return
        if is_job_event(event):
            self._job_event(seq, at, event)
            return
        match event:
            case WorkerStarted():
                self.workers[event.worker_id] = worker_started(
                    self.workers.get(event.worker_id), seq, at, event, self.partition
                )
            case WorkerStopped():
                worker = self.workers.get(event.worker_id)
                if worker is not None:
                    self.workers[event.worker_id] = worker_stopped(worker, seq, at)
            case WorkerLost():
                worker = self.workers.get(event.worker_id)
                if worker is not None:
                    self.workers[event.worker_id] = worker_lost(worker, seq, event)
            case WorkerForgotten():
                # Unconditional, in every layout. The row's state cannot decide: each
                # partition keeps its own row of the worker, and a late task event of one
                # partition's job may have made that row active again after worker.lost, so
                # keeping active rows would keep the worker in one layout and drop it in
                # another. Nor does it need to: the event is published only for a worker
                # that is gone (`jobstream workers prune`, cli/_prune.py, picks stopped and
                # lost workers and fences the event on the worker's own subject, so a
                # worker.started since wins). A task event of the worker's after it makes a
                # row afresh, alike in every layout.
                self.workers.pop(event.worker_id, None)
            case TaskChunkFinished():
                for task_event in chunk_task_events(event):
                    self._task_event(seq, at, task_event)

    # --- jobs ------------------------------------------------------------------------------

    def _job_event(self, seq: int, at: datetime, event: JobEvent) -> None:
        job = self.jobs.get(event.job_id)
        match event:
            case JobSubmitted():
                job, batch = job_submitted(job, seq, at, event, listed=self.list_batches)
                if batch is not None:
                    # A new job: no task event made a row of it yet.
                    job = self._take_batch(job, batch, event.tasks, present=())
            case JobTasksAdded():
                job, batch = job_tasks_added(job, seq, event, listed=self.list_batches)
                if job is not None and batch is not None:
                    job = self._take_batch(job, batch, event.tasks, present=None)
            case JobRejected():
                job = job_rejected(job, seq, at, event)
            case _ if job is not None:
                job = _job_ended(job, seq, at, event)
        if job is not None:
            self._put_job(job)

    def _put_job(self, job: JobRow) -> None:
        """Put a job's new row, and count it by status: a row not held before is a job made
        now, one whose status changed moves between counts."""
        before = self.jobs.get(job.job_id)
        self.jobs[job.job_id] = job
        if before is not None and before.status == job.status:
            return
        if before is not None:
            self._count_status(before.status, -1)
        self._count_status(job.status, 1)

    def _count_status(self, status: JobStatus, sign: int) -> None:
        row = self.status_counts.get(status)
        if row is None:
            row = JobStatusCountRow(status=status, partition=self.partition)
        self.status_counts[status] = status_counted(row, sign)

    def _take_batch(
        self, job: JobRow, batch: BatchRow, specs: list[TaskSpec], *, present: Sequence[int] | None
    ) -> JobRow:
        """Record a batch the job took; its task rows come now if `list_batches`
        (`present`: as `list_batch` takes it)."""
        self.batches.append(batch)
        if not self.list_batches:
            return job
        self._put_job(job)
        ranges = task_ranges(batch.job_id, batch.first_index, specs, batch.seq)
        self.list_batch(batch.job_id, ranges, present=present)
        return self.jobs[batch.job_id]

    def list_batch(
        self, job_id: str, ranges: list[TaskRange], *, present: Sequence[int] | None = None
    ) -> None:
        """The task rows of a taken batch (its `task_ranges`): its ranges, and the rows task
        events made first (the batch's rows are written apart from the log's order:
        `TaskLister`) listed. `present` (sorted): the indexes of the batch's rows the table
        holds already, of which the model holds those the listing changes, the others staying
        as they are; None: the model holds every row there is (each index of the batch is
        looked up). The rows the ranges make count as queued in the job's row (if held)."""
        starts = [task_range.first_index for task_range in ranges]
        if present is None:
            present = [
                index
                for task_range in ranges
                for index in range(task_range.first_index, task_range.end)
                if task_id_for(job_id, index) in self.tasks
            ]
        made = sum(task_range.count for task_range in ranges) - len(present)
        for index in present:
            task_id = task_id_for(job_id, index)
            task = self.tasks.get(task_id)
            if task is not None:
                task_range = ranges[bisect_right(starts, index) - 1]
                self.tasks[task_id] = task_listed(task, task_range, index)
        for task_range in ranges:
            for part in task_range.without(present) if present else [task_range]:
                self._add_range(part)
        job = self.jobs.get(job_id)
        if job is not None:
            self._put_job(tasks_moved(job, None, "queued", made))

    def _add_range(self, task_range: TaskRange) -> None:
        """Ranges come in index order: a job's tasks, then its batches, each where the last
        ended."""
        self.ranges.setdefault(task_range.job_id, []).append(task_range)
        self._range_starts.setdefault(task_range.job_id, []).append(task_range.first_index)

    def _job_running(self, seq: int, job_id: str, started_at: datetime) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            self._put_job(job_running(job, seq, started_at))

    # --- tasks -----------------------------------------------------------------------------

    def task(self, job_id: str, task_id: str) -> TaskRow | None:
        """The task's row, made from its job's ranges if it is one of them."""
        task = self.tasks.get(task_id)
        if task is not None:
            return task
        ranges = self.ranges.get(job_id)
        if not ranges:
            return None
        index = task_index_of(job_id, task_id)
        if index is None:
            return None
        task_range = ranges[bisect_right(self._range_starts[job_id], index) - 1]
        if not task_range.first_index <= index < task_range.end:
            return None
        task = self.tasks[task_id] = task_range.row(index)
        return task

    def open_task(self, seq: int, event: OneTaskEvent) -> TaskRow | None:
        """The event's task row unless it ended (a terminal state is never left). A task
        event makes its task's row if it is not there yet (a streamed job's rows may come
        later), provided its job is known and its id is one of the job's; a finishing event
        gives it the `kind` and `args` it reports (the listing gives the batch's)."""
        task = self.task(event.job_id, event.task_id)
        if task is None:
            index = task_index_of(event.job_id, event.task_id)
            if index is None or event.job_id not in self.jobs:
                return None
            kind, args = "", EMPTY_JSON
            if isinstance(event, TaskSucceeded | TaskDeadLettered):
                kind, args = event.kind, json_value(event.args)
            task = TaskRow(
                task_id=event.task_id,
                job_id=event.job_id,
                task_index=index,
                kind=kind,
                args=args,
                updated_seq=seq,
            )
        return None if task.state in TERMINAL_TASK_STATES else task

    def _set_task(self, task: TaskRow) -> None:
        """Put a task's new row, and count it in its job's row: a row not held before is a
        row made now."""
        before = self.tasks.get(task.task_id)
        self.tasks[task.task_id] = task
        job = self.jobs.get(task.job_id)
        if job is not None:
            state = None if before is None else before.state
            self._put_job(tasks_moved(job, state, task.state))

    def _task_event(self, seq: int, at: datetime, event: OneTaskEvent) -> None:
        # The most frequent first: a case whose class the event is not of costs ~0.1 µs.
        match event:
            case TaskSucceeded():
                self._task_succeeded(seq, at, event)
            case TaskStarted():
                self._task_started(seq, at, event)
            case TaskProgress():
                task = self.open_task(seq, event)
                if task is not None:
                    self._set_task(task_progress(task, seq, event))
                self._job_running(seq, event.job_id, at)
                self._worker_seen(seq, at, event.worker_id)
            case TaskFailed():
                self._task_failed(seq, at, event)
            case TaskDeadLettered():
                self._task_dead_lettered(seq, at, event)
            case TaskRequeued():
                self._task_requeued(seq, event)
            case TaskCancelled():
                task = self.open_task(seq, event)
                if task is not None:
                    self._set_task(task_cancelled(task, seq, at))

    def _task_started(self, seq: int, at: datetime, event: TaskStarted) -> None:
        task = self.open_task(seq, event)
        if task is not None:
            self._set_task(task_started(task, seq, at, event))
        attempts = self.attempts.setdefault(event.task_id, {})
        for number, attempt in attempts.items():
            if number < event.attempt:
                attempts[number] = attempt_abandoned(attempt, "lease expired", at)
        if self.attempt(event.task_id, event.attempt) is None:
            attempts[event.attempt] = attempt_started(event, at)
        self._job_running(seq, event.job_id, at)
        self._worker_seen(seq, at, event.worker_id)

    def _task_succeeded(self, seq: int, at: datetime, event: TaskSucceeded) -> None:
        started_at = counted_back(at, event.duration_s)
        result = result_of(seq, event)
        task = self.open_task(seq, event)
        if task is not None:
            output = json_value(event.result)
            finished = task_succeeded(task, seq, event, result, output, started_at)
            self._set_task(finished)
            self._result_made(seq, event, finished)
        if task is None or event.attempt in self.attempts.get(event.task_id, {}):
            self._finish_attempt(event, "succeeded", None, started_at, at, result.duration_s)
        # Else the attempt has no row of its own, and the task's row, succeeded by it, tells
        # it (`attempt`).
        self._job_running(seq, event.job_id, started_at)
        self._worker_seen(seq, at, event.worker_id, succeeded=1)

    def _task_failed(self, seq: int, at: datetime, event: TaskFailed) -> None:
        started_at = counted_back(at, event.duration_s)
        task = self.open_task(seq, event)
        if task is not None:
            self._set_task(task_failed(task, seq, event))
        duration = finite(event.duration_s)
        self._finish_attempt(event, "failed", event.error, started_at, at, duration)
        self._job_running(seq, event.job_id, started_at)
        self._worker_seen(seq, at, event.worker_id, failed=1)

    def _finish_attempt(
        self,
        event: TaskSucceeded | TaskFailed,
        outcome: AttemptOutcome,
        error: str | None,
        started_at: datetime,
        at: datetime,
        duration_s: float | None,
    ) -> None:
        attempt = self.attempt(event.task_id, event.attempt)
        self.attempts.setdefault(event.task_id, {})[event.attempt] = attempt_finished(
            attempt, event, outcome, error, started_at, at, duration_s
        )

    def attempt(self, task_id: str, number: int) -> AttemptRow | None:
        """An attempt: its row, else, of the last attempt of a succeeded task, the one its task
        row tells (`attempt_of_task`: an attempt that succeeded its task at once has no row
        of its own, as most have none). A later event of that attempt gives it a row."""
        attempt = self.attempts.get(task_id, {}).get(number)
        if attempt is not None:
            return attempt
        task = self.tasks.get(task_id)
        if task is not None and task.state == "succeeded" and task.attempts == number:
            return attempt_of_task(task)
        return None

    def attempt_view(self) -> dict[str, dict[int, AttemptRow]]:
        """The rows of the `task_attempts` view, by task and attempt: those of
        `attempt_rows`, and the last attempt of each succeeded task that has none."""
        rows = {task_id: dict(attempts) for task_id, attempts in self.attempts.items()}
        for task in self.tasks.values():
            if task.state == "succeeded" and task.attempts not in rows.get(task.task_id, {}):
                rows.setdefault(task.task_id, {})[task.attempts] = attempt_of_task(task)
        return {task_id: attempts for task_id, attempts in rows.items() if attempts}

    def _task_dead_lettered(self, seq: int, at: datetime, event: TaskDeadLettered) -> None:
        result = result_of(seq, event)
        task = self.open_task(seq, event)
        if task is not None:
            finished = task_dead_lettered(task, seq, at, event, result.error)
            self._set_task(finished)
            self._result_made(seq, event, finished)
        attempts = self.attempts.get(event.task_id, {})
        for number, attempt in attempts.items():
            attempts[number] = attempt_abandoned(attempt, result.error, at)

    def _result_made(
        self, seq: int, event: TaskSucceeded | TaskDeadLettered, task: TaskRow
    ) -> None:
        """A task that finished now has a result (a row of the `results` view), counted in
        its minute's stats; a page of a crawl counts. A finishing event of a task that ended
        already (or that the read models do not hold) makes none."""
        self._count_result(result_row(task), 1)
        if event.kind == CRAWL_KIND:
            self.crawl.count(page_facts(seq, event))

    def _count_result(self, result: ResultRow, sign: int) -> None:
        """A results row made (1) or gone (-1), in its minute's stats_per_minute row."""
        job = self.jobs.get(result.job_id)
        key = (minute_of(result.finished_at), "" if job is None else job.queue, result.kind)
        row = self.minute_stats.get(key)
        if row is None:
            row = MinuteStatsRow(minute=key[0], queue=key[1], kind=key[2], partition=self.partition)
        self.minute_stats[key] = minute_counted(row, result, sign)

    def _task_requeued(self, seq: int, event: TaskRequeued) -> None:
        """Requeued: the task's result goes (and with it a failed page's count), its job runs
        again."""
        task = self.tasks.get(event.task_id)
        if task is not None and task.state == "dead_lettered":
            self._set_task(task_requeued(task, seq))
            self._count_result(result_row(task), -1)
            if event.kind == CRAWL_KIND == task.kind:
                self.crawl.undo_failure(failure_undone(seq, event), task.error)
        job = self.jobs.get(event.job_id)
        if job is not None:
            self._put_job(job_reopened(job, seq))

    # --- workers ---------------------------------------------------------------------------

    def _worker_seen(
        self, seq: int, at: datetime, worker_id: str, *, succeeded: int = 0, failed: int = 0
    ) -> None:
        self.workers[worker_id] = worker_seen(
            self.workers.get(worker_id),
            seq,
            at,
            worker_id,
            self.partition,
            succeeded=succeeded,
            failed=failed,
        )

    # --- output ----------------------------------------------------------------------------

    def unmade_ranges(self) -> list[TaskRange]:
        """The ranges less the rows held (made from them, or by task events before the
        listing of a batch): the task rows still to make, each once."""
        held: dict[str, list[int]] = {}
        for task in self.tasks.values():
            if task.job_id in self.ranges:
                held.setdefault(task.job_id, []).append(task.task_index)
        parts: list[TaskRange] = []
        for job_id, ranges in self.ranges.items():
            indexes = sorted(held.get(job_id, ()))
            for task_range in ranges:
                parts += task_range.without(indexes) if indexes else [task_range]
        return parts

    def result_rows(self) -> dict[str, ResultRow]:
        """The rows of the `results` view, by task id: those of the finished task rows."""
        return {
            task.task_id: result_row(task)
            for task in self.tasks.values()
            if task.state in RESULT_STATES
        }

    def expanded_tasks(self) -> Iterator[TaskRow]:
        """Every task row, those of the ranges included (the replay's COPY)."""
        yield from self.tasks.values()
        for task_range in self.unmade_ranges():
            for index in range(task_range.first_index, task_range.end):
                yield task_range.row(index)


class Keys:
    """The rows a run of events may touch, by table key: what to load before applying them."""

    def __init__(self) -> None:
        self.jobs: set[str] = set()
        self.tasks: set[str] = set()
        self.workers: set[str] = set()
        self.crawl_jobs: set[str] = set()
        # stats_per_minute: the minutes tasks finish in, and the tasks whose results row a
        # requeue may take back (its minute is the row's, read where the row is).
        self.minutes: set[datetime] = set()
        self.requeued: set[str] = set()

    def add(self, event: Event) -> None:
        if is_worker_event(event):
            self.workers.add(event.worker_id)
            return
        self.jobs.add(event.job_id)
        if is_job_event(event):
            return
        if type(event) is TaskChunkFinished:
            self.workers.add(event.worker_id)
            self.tasks.update(item.task_id for item in event.results)
            self.tasks.update(item.task_id for item in event.failed)
            if event.results:
                self.minutes.add(minute_of(event.at))
            if any(item.kind == CRAWL_KIND for item in event.results):
                self.crawl_jobs.add(event.job_id)
            return
        self.tasks.add(event.task_id)
        # The most frequent first: a case whose class the event is not of costs ~0.1 µs.
        match event:
            case TaskSucceeded():
                self.minutes.add(minute_of(event.at))
                self.workers.add(event.worker_id)
                self._crawl_page(event)
            case TaskStarted() | TaskProgress() | TaskFailed():
                self.workers.add(event.worker_id)
            case TaskDeadLettered():
                self.minutes.add(minute_of(event.at))
                self._crawl_page(event)
            case TaskRequeued():
                self.requeued.add(event.task_id)
                self._crawl_page(event)

    def _crawl_page(self, event: TaskSucceeded | TaskDeadLettered | TaskRequeued) -> None:
        if event.kind == CRAWL_KIND:
            self.crawl_jobs.add(event.job_id)
