"""The rule set of the read models: what each event does to the rows of the tables, written once.

`ReadModel` holds rows (plain dicts in `COLUMNS` order, tuples for `results`) and changes them
event by event, in log order (a `task.chunk_finished` as the per-task events it stands for).
It does no I/O: its callers give it the rows an event may touch and write back what changed.

- the live Postgres projector (`_postgres.py`) loads the rows a batch's events name, applies
  the batch here and writes the rows that changed (one statement per table), in the batch's
  transaction, with its checkpoint;
- the replay (`_fold.py`) starts from no rows, applies the whole log here and COPYs the
  final rows into a fresh schema;
- the NDJSON projector (`_ndjson.py`) writes `result_of` of each finished task: the same
  result the `results` table holds.

So the three outputs cannot drift apart. A job's tasks are not expanded row by row: a
`job.submitted` (or a listed `job.tasks_added` batch) leaves a `TaskRange` per TaskSpec, and a
task's row is made from its range when an event touches it. The live projector writes the
ranges in SQL (`generate_series`), the replay expands them when it writes.

jsonb values are kept as their JSON text (`msgspec.Raw`), never decoded.
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from jobstream.events import (
    JOB_EVENTS,
    Event,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobSealed,
    JobSubmitted,
    JobTasksAdded,
    OneTaskEvent,
    SourceItem,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRequeued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerForgotten,
    WorkerLost,
    WorkerStarted,
    WorkerStopped,
    chunk_task_events,
    encode,
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
from jobstream.projections._task_rows import over_the_task_limit, spec_ranges

TERMINAL_TASK_STATES = frozenset({"succeeded", "dead_lettered", "cancelled"})
TERMINAL_JOB_STATUSES = frozenset({"completed", "failed", "cancelled", "rejected"})

Row = dict[str, Any]

COLUMNS: dict[str, tuple[str, ...]] = {
    "jobs": (
        "job_id",
        "name",
        "queue",
        "priority",
        "status",
        "total_tasks",
        "max_attempts",
        "timeout_s",
        "idempotency_key",
        "submitted_by",
        "labels",
        "submitted_at",
        "started_at",
        "finished_at",
        "duration_s",
        "error",
        "submitted_seq",
        "updated_seq",
    ),
    "tasks": (
        "task_id",
        "job_id",
        "task_index",
        "kind",
        "args",
        "state",
        "attempts",
        "worker_id",
        "result",
        "error",
        "started_at",
        "finished_at",
        "duration_s",
        "updated_seq",
        "progress",
        "progress_message",
    ),
    "task_attempts": (
        "task_id",
        "attempt",
        "job_id",
        "worker_id",
        "outcome",
        "error",
        "started_at",
        "finished_at",
        "duration_s",
    ),
    "workers": (
        "worker_id",
        "host",
        "pid",
        "queues",
        "concurrency",
        "version",
        "state",
        "started_at",
        "last_seen_at",
        "stopped_at",
        "tasks_succeeded",
        "tasks_failed",
        "updated_seq",
    ),
    "results": (
        "task_id",
        "job_id",
        "kind",
        "inputs",
        "output",
        "processed_by",
        "duration_s",
        "status",
        "error",
        "attempts",
        "finished_at",
        "seq",
    ),
    "rejected_events": ("seq", "subject", "error", "payload"),
    "job_batches": ("job_id", "first_index", "task_count", "seq", "listed"),
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
JSON_COLUMNS = frozenset(
    {"labels", "args", "result", "inputs", "output", "status_counts", "cache_counts", "response_ms"}
)
EMPTY_JSON = msgspec.Raw(b"{}")


class RejectedEvent(ValueError):
    """An event that decodes but cannot be projected: it is parked in `rejected_events`."""


# --- values ---------------------------------------------------------------------------------


def utc(at: datetime) -> datetime:
    """`at` in UTC (a naive time taken as UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def counted_back(at: datetime, duration_s: float) -> datetime:
    """`at` less `duration_s` (a negative or NaN duration as 0; `at` itself on overflow):
    when an attempt began, from its finish event."""
    try:
        return at - timedelta(seconds=max(0.0, duration_s))
    except OverflowError:
        return at


def finite(value: float | None) -> float | None:
    """A number that is not finite is stored as NULL."""
    return value if value is None or math.isfinite(value) else None


def json_value(value: Any) -> msgspec.Raw | None:
    """A jsonb value as its JSON text (None: SQL NULL)."""
    return None if value is None else msgspec.Raw(encode(value))


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    """Postgres `greatest`: NULLs ignored."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b > a else a


# --- the result of a finished task ------------------------------------------------------------


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """A finished task as the `results` table and the NDJSON files both show it.

    `inputs` are the args the finishing event reports, and only those: a result is made
    from its event alone, so the NDJSON projector (which keeps no task rows) and the
    `results` table agree, and a result never changes once made. Every worker of ours
    reports the task's args; an event that reports none shows `{}` (the task's row keeps
    its args)."""

    seq: int
    at: datetime
    job_id: str
    task_id: str
    kind: str
    status: str  # succeeded | dead_lettered
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


def result_row(result: Result) -> tuple[Any, ...]:
    """`result` as a `results` row, in `COLUMNS["results"]` order."""
    return (
        result.task_id,
        result.job_id,
        result.kind,
        json_value(result.inputs),
        json_value(result.output),
        result.worker_id,
        result.duration_s,
        result.status,
        result.error,
        result.attempts,
        result.at,
        result.seq,
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

    def holds(self, index: int) -> bool:
        return self.first_index <= index < self.first_index + self.count

    def row(self, index: int) -> Row:
        return new_task(
            task_id_for(self.job_id, index), self.job_id, index, self.kind, self.args, self.seq
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
    return [
        TaskRange(job_id, first, spec.count, spec.kind, json_value(spec.args) or EMPTY_JSON, seq)
        for spec, first in spec_ranges(first_index, specs)
        if spec.count > 0
    ]


# --- the rules --------------------------------------------------------------------------------


class ReadModel:
    """Rows of the read-model tables, changed event by event.

    Rows not held are taken not to exist: a caller applying events to a part of the tables
    must first put in every row the events name (`keys_of` says which).

    `list_batches`: a taken `job.tasks_added` batch gets its task rows at once (the replay);
    else it is only recorded, unlisted, for the projector's lister (`list_batch`).
    """

    def __init__(self, *, list_batches: bool) -> None:
        self.list_batches = list_batches
        self.jobs: dict[str, Row] = {}
        self.tasks: dict[str, Row] = {}
        self.attempts: dict[str, dict[int, Row]] = {}
        self.workers: dict[str, Row] = {}
        self.results: dict[str, tuple[Any, ...]] = {}  # never changed: kept in COLUMNS order
        self.rejected: dict[int, Row] = {}
        self.batches: list[Row] = []
        self.ranges: dict[str, list[TaskRange]] = {}  # by job: task rows not made yet
        self.crawl = CrawlStatsFold()
        self.last_seq = 0

    def apply_item(self, item: SourceItem) -> None:
        """Apply a log item; park it (`rejected`) if it is not an event or cannot be
        projected."""
        self.last_seq = max(self.last_seq, item.seq)
        if item.event is None:
            self._reject(item, str(item.error))
            return
        try:
            self.apply(item.seq, item.event)
        except RejectedEvent as exc:
            self._reject(item, str(exc))

    def _reject(self, item: SourceItem, error: str) -> None:
        row = {"seq": item.seq, "subject": item.subject, "error": error, "payload": item.data}
        self.rejected.setdefault(item.seq, row)

    def apply(self, seq: int, event: Event) -> None:
        """Apply `event`; `RejectedEvent` (nothing changed) if it cannot be projected."""
        at = utc(event.at)
        if isinstance(event, JOB_EVENTS):
            self._job_event(seq, at, event)
            return
        match event:
            case WorkerStarted():
                self._worker_started(seq, at, event)
            case WorkerStopped():
                self._worker_stopped(seq, at, event)
            case WorkerLost():
                self._worker_lost(seq, event)
            case WorkerForgotten():
                worker = self.workers.get(event.worker_id)
                if worker is not None and worker["state"] != "active":
                    del self.workers[event.worker_id]
            case TaskChunkFinished():
                for task_event in chunk_task_events(event):
                    self._task_event(seq, at, task_event)
            case _:
                self._task_event(seq, at, event)

    def _task_event(self, seq: int, at: datetime, event: OneTaskEvent) -> None:
        match event:
            case TaskStarted():
                self._task_started(seq, at, event)
            case TaskProgress():
                self._task_progress(seq, at, event)
            case TaskSucceeded():
                self._task_succeeded(seq, at, event)
            case TaskFailed():
                self._task_failed(seq, at, event)
            case TaskDeadLettered():
                self._task_dead_lettered(seq, at, event)
            case TaskRequeued():
                self._task_requeued(seq, event)
            case TaskCancelled():
                self._task_cancelled(seq, at, event)

    # --- jobs ------------------------------------------------------------------------------

    def _job_event(self, seq: int, at: datetime, event: JobEvent) -> None:
        match event:
            case JobSubmitted():
                self._job_submitted(seq, at, event)
            case JobTasksAdded():
                self._job_tasks_added(seq, event)
            case JobSealed():
                self._job_sealed(seq, event)
            case JobCancelled():
                self._job_finished(seq, at, event.job_id, "cancelled", None)
            case JobCompleted():
                self._job_finished(seq, at, event.job_id, "completed", event.duration_s)
            case JobFailed():
                self._job_finished(seq, at, event.job_id, "failed", event.duration_s)
            case JobRejected():
                self._job_rejected(seq, at, event)

    def _job_submitted(self, seq: int, at: datetime, job: JobSubmitted) -> None:
        """A second job.submitted for a known job id changes nothing, its tasks included. A
        streamed job is `submitting` until its job.sealed."""
        _check_task_limit(job.job_id, 0, job.tasks)
        if job.job_id in self.jobs:
            return
        self.jobs[job.job_id] = new_job(job.job_id, queue=job.queue, at=at, seq=seq) | {
            "name": job.name,
            "priority": job.priority,
            "status": "queued" if job.sealed else "submitting",
            "total_tasks": job.task_count,
            "max_attempts": job.max_attempts,
            "timeout_s": finite(job.timeout_s),
            "idempotency_key": job.idempotency_key,
            "submitted_by": job.submitted_by,
            "labels": json_value(job.labels),
        }
        # A new job has no task rows yet: a task event makes one only for a known job.
        self.ranges.setdefault(job.job_id, []).extend(task_ranges(job.job_id, 0, job.tasks, seq))

    def _job_tasks_added(self, seq: int, event: JobTasksAdded) -> None:
        """A job still submitting takes the batch that goes on where its tasks end (as the
        dispatcher does); any other (a repeat, a gap, an overlap, an empty batch, one of an
        unknown, sealed or ended job) changes nothing."""
        _check_task_limit(event.job_id, event.first_index, event.tasks)
        job = self.jobs.get(event.job_id)
        if job is None or job["status"] != "submitting":
            return
        if job["total_tasks"] != event.first_index or event.task_count == 0:
            return
        job["total_tasks"] += event.task_count
        job["updated_seq"] = seq
        self.batches.append(
            {
                "job_id": event.job_id,
                "first_index": event.first_index,
                "task_count": event.task_count,
                "seq": seq,
                "listed": self.list_batches,
            }
        )
        if self.list_batches:
            self.list_batch(event.job_id, event.first_index, event.tasks, seq)

    def list_batch(self, job_id: str, first_index: int, specs: list[TaskSpec], seq: int) -> None:
        """The task rows of a taken batch. A row a task event made first (the batch's rows
        are written apart from the log's order: `TaskLister`) keeps its state and gets its
        index, kind and args; the others are queued."""
        for task_range in task_ranges(job_id, first_index, specs, seq):
            for index in range(task_range.first_index, task_range.first_index + task_range.count):
                task = self.tasks.get(task_id_for(job_id, index))
                if task is not None:
                    task.update(task_index=index, kind=task_range.kind, args=task_range.args)
                    task["updated_seq"] = max(task["updated_seq"], seq)
            self.ranges.setdefault(job_id, []).append(task_range)

    def _job_sealed(self, seq: int, event: JobSealed) -> None:
        """A streamed job is whole: it is queued, and runs. Only a job still submitting."""
        job = self.jobs.get(event.job_id)
        if job is not None and job["status"] == "submitting":
            job.update(status="queued", updated_seq=seq)

    def _job_finished(
        self, seq: int, at: datetime, job_id: str, status: str, duration_s: float | None
    ) -> None:
        """An ended job stays as it ended; no duration: the time since submission."""
        job = self.jobs.get(job_id)
        if job is None or job["status"] in TERMINAL_JOB_STATUSES:
            return
        job["status"] = status
        job["finished_at"] = at
        duration = finite(duration_s)
        job["duration_s"] = (
            duration if duration is not None else (at - job["submitted_at"]) / timedelta(seconds=1)
        )
        job["updated_seq"] = seq

    def _job_rejected(self, seq: int, at: datetime, event: JobRejected) -> None:
        """A job the dispatcher set aside ends as rejected; its row is made if its submission
        could not be read (then it has no tasks)."""
        job = self.jobs.get(event.job_id)
        if job is None:
            job = self.jobs[event.job_id] = new_job(event.job_id, queue="", at=at, seq=seq)
        if job["status"] in TERMINAL_JOB_STATUSES:
            return
        job.update(
            status="rejected",
            finished_at=at,
            duration_s=(at - job["submitted_at"]) / timedelta(seconds=1),
            error=event.reason,
            updated_seq=seq,
        )

    def _job_running(self, seq: int, job_id: str, started_at: datetime) -> None:
        """A task at work: a queued job runs, from its earliest attempt's start."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job["status"] == "queued":
            job["status"] = "running"
        if job["started_at"] is None or started_at < job["started_at"]:
            job["started_at"] = started_at
        job["updated_seq"] = max(job["updated_seq"], seq)

    # --- tasks -----------------------------------------------------------------------------

    def task(self, job_id: str, task_id: str) -> Row | None:
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
        for task_range in ranges:
            if task_range.holds(index):
                task = self.tasks[task_id] = task_range.row(index)
                return task
        return None

    def _open_task(self, seq: int, event: OneTaskEvent, kind: str = "") -> Row | None:
        """The event's task row unless it ended; made if it is not there yet, its job is
        known and its id is one of the job's (a streamed job's rows may come later)."""
        task = self.task(event.job_id, event.task_id)
        if task is None:
            index = task_index_of(event.job_id, event.task_id)
            if index is None or event.job_id not in self.jobs:
                return None
            task = self.tasks[event.task_id] = new_task(
                event.task_id, event.job_id, index, kind, EMPTY_JSON, seq
            )
        return None if task["state"] in TERMINAL_TASK_STATES else task

    def _task_started(self, seq: int, at: datetime, event: TaskStarted) -> None:
        """An earlier attempt still running never reported an outcome: its lease expired."""
        task = self._open_task(seq, event)
        if task is not None:
            task.update(
                state="running",
                attempts=event.attempt,
                worker_id=event.worker_id,
                started_at=at,
                updated_seq=seq,
            )
        attempts = self.attempts.setdefault(event.task_id, {})
        for number, attempt in attempts.items():
            if number < event.attempt and attempt["outcome"] == "running":
                attempt.update(outcome="failed", error="lease expired", finished_at=at)
        if event.attempt not in attempts:
            attempts[event.attempt] = _new_attempt(event, "running", started_at=at)
        self._job_running(seq, event.job_id, at)
        self._worker_seen(seq, at, event.worker_id)

    def _task_progress(self, seq: int, at: datetime, event: TaskProgress) -> None:
        """A report of a task in flight: it is running (a task.started may never come); a
        report without a fraction keeps the last one."""
        task = self._open_task(seq, event)
        if task is not None:
            if event.fraction is not None:
                task["progress"] = finite(event.fraction)
            task.update(
                state="running",
                worker_id=event.worker_id,
                progress_message=event.message,
                updated_seq=seq,
            )
        self._job_running(seq, event.job_id, at)
        self._worker_seen(seq, at, event.worker_id)

    def _task_succeeded(self, seq: int, at: datetime, event: TaskSucceeded) -> None:
        """started_at: when the attempt started (counted back from its duration unless its
        task.started said)."""
        started_at = counted_back(at, event.duration_s)
        result = result_of(seq, event)
        output = json_value(event.result)
        task = self._open_task(seq, event, event.kind)
        if task is not None:
            if not (task["attempts"] == event.attempt and task["started_at"] is not None):
                task["started_at"] = started_at
            task["state"] = "succeeded"
            task["attempts"] = event.attempt
            task["worker_id"] = event.worker_id
            task["result"] = output
            task["error"] = None
            task["finished_at"] = at
            task["duration_s"] = result.duration_s
            task["updated_seq"] = seq
        self._finish_attempt(event, "succeeded", None, started_at, at, result.duration_s)
        self._add_result(seq, event, result)
        self._job_running(seq, event.job_id, started_at)
        self._worker_seen(seq, at, event.worker_id, succeeded=1)

    def _task_failed(self, seq: int, at: datetime, event: TaskFailed) -> None:
        """Not terminal: a retry or a dead letter follows. Progress belongs to the attempt."""
        started_at = counted_back(at, event.duration_s)
        duration = finite(event.duration_s)
        task = self._open_task(seq, event)
        if task is not None:
            task.update(
                state="failed",
                attempts=event.attempt,
                worker_id=event.worker_id,
                error=event.error,
                progress=None,
                progress_message=None,
                updated_seq=seq,
            )
        self._finish_attempt(event, "failed", event.error, started_at, at, duration)
        self._job_running(seq, event.job_id, started_at)
        self._worker_seen(seq, at, event.worker_id, failed=1)

    def _finish_attempt(
        self,
        event: TaskSucceeded | TaskFailed,
        outcome: str,
        error: str | None,
        started_at: datetime,
        at: datetime,
        duration: float | None,
    ) -> None:
        attempts = self.attempts.setdefault(event.task_id, {})
        attempt = attempts.get(event.attempt)
        if attempt is None:
            attempts[event.attempt] = _new_attempt(
                event,
                outcome,
                started_at=started_at,
                error=error,
                finished_at=at,
                duration_s=duration,
            )
            return
        if attempt["started_at"] is None:
            attempt["started_at"] = started_at
        attempt["worker_id"] = event.worker_id
        attempt["outcome"] = outcome
        attempt["error"] = error
        attempt["finished_at"] = at
        attempt["duration_s"] = duration

    def _task_dead_lettered(self, seq: int, at: datetime, event: TaskDeadLettered) -> None:
        """No worker: the one the task had. Attempts still running end as failed."""
        worker_id = event.worker_id or None
        result = result_of(seq, event)
        task = self._open_task(seq, event, event.kind)
        if task is not None:
            task.update(
                state="dead_lettered",
                attempts=event.attempts,
                worker_id=worker_id if worker_id is not None else task["worker_id"],
                error=result.error,
                finished_at=at,
                updated_seq=seq,
            )
        for attempt in self.attempts.get(event.task_id, {}).values():
            if attempt["outcome"] == "running":
                attempt.update(outcome="failed", error=result.error, finished_at=at)
        self._add_result(seq, event, result)

    def _add_result(
        self, seq: int, event: TaskSucceeded | TaskDeadLettered, result: Result
    ) -> None:
        """The first finishing event of a task makes its result; a page of a crawl counts."""
        if event.task_id in self.results:
            return
        self.results[event.task_id] = result_row(result)
        if event.kind == CRAWL_KIND:
            self.crawl.count(page_facts(seq, event))

    def _task_requeued(self, seq: int, event: TaskRequeued) -> None:
        """A dead-lettered task given another round is queued again and no longer finished:
        its result goes, and its job runs again."""
        task = self.tasks.get(event.task_id)
        if task is not None and task["state"] == "dead_lettered":
            task.update(state="queued", finished_at=None, duration_s=None, updated_seq=seq)
            result = self.results.pop(event.task_id, None)
            if event.kind == CRAWL_KIND and result is not None:
                row = dict(zip(COLUMNS["results"], result, strict=True))
                if row["status"] == "dead_lettered" and row["kind"] == CRAWL_KIND:
                    self.crawl.undo_failure(failure_undone(seq, event), row["error"])
        job = self.jobs.get(event.job_id)
        if job is None:
            return
        if job["status"] in ("failed", "completed"):
            job.update(status="running", finished_at=None, duration_s=None)
        job["updated_seq"] = max(job["updated_seq"], seq)

    def _task_cancelled(self, seq: int, at: datetime, event: TaskCancelled) -> None:
        task = self._open_task(seq, event)
        if task is not None:
            task.update(state="cancelled", finished_at=at, updated_seq=seq)

    # --- workers ---------------------------------------------------------------------------

    def _worker_started(self, seq: int, at: datetime, event: WorkerStarted) -> None:
        """A restarted worker keeps its counters."""
        worker = self.workers.get(event.worker_id)
        if worker is None:
            worker = self.workers[event.worker_id] = new_worker(event.worker_id, seq)
            worker.update(tasks_succeeded=0, tasks_failed=0, last_seen_at=at)
        worker.update(
            host=event.host,
            pid=event.pid,
            queues=list(event.queues),
            concurrency=event.concurrency,
            version=event.version,
            state="active",
            started_at=at,
            last_seen_at=_later(worker["last_seen_at"], at),
            stopped_at=None,
            updated_seq=seq,
        )

    def _worker_stopped(self, seq: int, at: datetime, event: WorkerStopped) -> None:
        worker = self.workers.get(event.worker_id)
        if worker is not None:
            worker.update(
                state="stopped",
                stopped_at=at,
                last_seen_at=_later(worker["last_seen_at"], at),
                updated_seq=seq,
            )

    def _worker_lost(self, seq: int, event: WorkerLost) -> None:
        """Only an active worker is lost."""
        worker = self.workers.get(event.worker_id)
        if worker is None or worker["state"] != "active":
            return
        if event.last_seen is not None:
            worker["last_seen_at"] = utc(event.last_seen)
        worker.update(state="lost", updated_seq=seq)

    def _worker_seen(
        self, seq: int, at: datetime, worker_id: str, *, succeeded: int = 0, failed: int = 0
    ) -> None:
        """A worker known only from its task events gets a row, shown active; a lost one seen
        working again is active again."""
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = new_worker(worker_id, seq)
            worker.update(tasks_succeeded=succeeded, tasks_failed=failed, last_seen_at=at)
            return
        if worker["state"] == "lost":
            worker["state"] = "active"
        worker["tasks_succeeded"] += succeeded
        worker["tasks_failed"] += failed
        worker["last_seen_at"] = _later(worker["last_seen_at"], at)
        worker["updated_seq"] = max(worker["updated_seq"], seq)

    # --- output ----------------------------------------------------------------------------

    def expanded_tasks(self) -> Iterator[Row]:
        """Every task row, those of the ranges included (the replay's COPY)."""
        yield from self.tasks.values()
        for ranges in self.ranges.values():
            for task_range in ranges:
                end = task_range.first_index + task_range.count
                for index in range(task_range.first_index, end):
                    if task_id_for(task_range.job_id, index) not in self.tasks:
                        yield task_range.row(index)


class Keys:
    """The rows a run of events may touch, by table key: what to load before applying them."""

    def __init__(self) -> None:
        self.jobs: set[str] = set()
        self.tasks: set[str] = set()
        self.workers: set[str] = set()
        self.crawl_jobs: set[str] = set()

    def add(self, event: Event) -> None:
        if isinstance(event, WorkerStarted | WorkerStopped | WorkerLost | WorkerForgotten):
            self.workers.add(event.worker_id)
            return
        self.jobs.add(event.job_id)
        if isinstance(event, JOB_EVENTS):
            return
        if isinstance(event, TaskChunkFinished):
            self.workers.add(event.worker_id)
            self.tasks.update(item.task_id for item in event.results)
            self.tasks.update(item.task_id for item in event.failed)
            if any(item.kind == CRAWL_KIND for item in event.results):
                self.crawl_jobs.add(event.job_id)
            return
        self.tasks.add(event.task_id)
        if isinstance(event, TaskStarted | TaskProgress | TaskSucceeded | TaskFailed):
            self.workers.add(event.worker_id)
        if isinstance(event, TaskSucceeded | TaskDeadLettered | TaskRequeued) and (
            event.kind == CRAWL_KIND
        ):
            self.crawl_jobs.add(event.job_id)


def _check_task_limit(job_id: str, first_index: int, specs: list[TaskSpec]) -> None:
    error = over_the_task_limit(job_id, first_index, specs)
    if error is not None:
        raise RejectedEvent(error)


def new_job(job_id: str, *, queue: str, at: datetime, seq: int) -> Row:
    """A jobs row with the table's defaults."""
    return {
        "job_id": job_id,
        "name": "",
        "queue": queue,
        "priority": 0,
        "status": "queued",
        "total_tasks": 0,
        "max_attempts": 0,
        "timeout_s": None,
        "idempotency_key": None,
        "submitted_by": "",
        "labels": EMPTY_JSON,
        "submitted_at": at,
        "started_at": None,
        "finished_at": None,
        "duration_s": None,
        "error": None,
        "submitted_seq": seq,
        "updated_seq": seq,
    }


def new_task(task_id: str, job_id: str, index: int, kind: str, args: msgspec.Raw, seq: int) -> Row:
    """A queued tasks row."""
    return {
        "task_id": task_id,
        "job_id": job_id,
        "task_index": index,
        "kind": kind,
        "args": args,
        "state": "queued",
        "attempts": 0,
        "worker_id": None,
        "result": None,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "duration_s": None,
        "updated_seq": seq,
        "progress": None,
        "progress_message": None,
    }


def _new_attempt(
    event: TaskStarted | TaskSucceeded | TaskFailed,
    outcome: str,
    *,
    started_at: datetime,
    error: str | None = None,
    finished_at: datetime | None = None,
    duration_s: float | None = None,
) -> Row:
    return {
        "task_id": event.task_id,
        "attempt": event.attempt,
        "job_id": event.job_id,
        "worker_id": event.worker_id,
        "outcome": outcome,
        "error": error,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_s": duration_s,
    }


def new_worker(worker_id: str, seq: int) -> Row:
    """A workers row with the table's defaults."""
    return {
        "worker_id": worker_id,
        "host": "",
        "pid": 0,
        "queues": [],
        "concurrency": 0,
        "version": "",
        "state": "active",
        "started_at": None,
        "last_seen_at": None,
        "stopped_at": None,
        "tasks_succeeded": 0,
        "tasks_failed": 0,
        "updated_seq": seq,
    }
