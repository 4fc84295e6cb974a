"""The read models folded in memory from the log, then written with COPY: the bulk replay.

Applying the log through the projector's statements costs a Postgres round of work per
event; a replay into an empty schema needs none of it. `ReadModelFold` applies each event to
rows held in dicts, with the very rules of `sql/projector.sql` (one event at a time, in log
order: the result the projector's rounds are built to equal; a `task.chunk_finished` as the
per-task events it stands for), and `write_fold` loads the final rows with one COPY per
table. tests/integration/test_replay.py and test_replay_fold.py hold the two to identical
tables; a change to a statement in `sql/projector.sql` needs its twin here.

Memory grows with the read model (about 1 KB per task), not with the log.
"""

import asyncio
import math
import operator
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
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
from jobstream.projections._migrate import quote_ident
from jobstream.projections._postgres import _counted_back, _utc
from jobstream.projections._task_rows import over_the_task_limit, spec_ranges

TERMINAL_TASK_STATES = frozenset({"succeeded", "dead_lettered", "cancelled"})
TERMINAL_JOB_STATUSES = frozenset({"completed", "failed", "cancelled", "rejected"})

_Row = dict[str, Any]

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
_JSON_COLUMNS = {"labels", "args", "result", "inputs", "output"}
_INPUTS = COLUMNS["results"].index("inputs")


def _float(value: float | None) -> float | None:
    """As the projector's JSON carries it: a number that is not finite becomes null."""
    return value if value is None or math.isfinite(value) else None


def _json(value: Any) -> str | None:
    """A jsonb value as the projector's JSON input carries it (null: SQL NULL)."""
    return None if value is None else encode(value).decode()


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    """Postgres `greatest`: NULLs ignored."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b > a else a


class ReadModelFold:
    """The read-model tables as rows in memory, changed event by event."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Row] = {}
        self.tasks: dict[str, _Row] = {}
        self.attempts: dict[str, dict[int, _Row]] = {}
        self.workers: dict[str, _Row] = {}
        self.results: dict[str, tuple[Any, ...]] = {}  # never changed: kept in COLUMNS order
        self.rejected: dict[int, _Row] = {}
        self.batches: list[_Row] = []
        self.crawl = CrawlStatsFold()
        self.last_seq = 0

    def apply_item(self, item: SourceItem) -> None:
        self.last_seq = max(self.last_seq, item.seq)
        if item.event is None:
            self._reject(item, str(item.error))
            return
        try:
            self.apply(item.seq, item.event)
        except _Rejected as exc:
            self._reject(item, str(exc))

    def _reject(self, item: SourceItem, error: str) -> None:
        row = {"seq": item.seq, "subject": item.subject, "error": error, "payload": item.data}
        self.rejected.setdefault(item.seq, row)

    def apply(self, seq: int, event: Event) -> None:
        at = _utc(event.at)
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
        self._check_task_limit(job.job_id, 0, job.tasks)
        if job.job_id in self.jobs:
            return
        self.jobs[job.job_id] = _new_job(job.job_id, queue=job.queue, at=at, seq=seq) | {
            "name": job.name,
            "priority": job.priority,
            "status": "queued" if job.sealed else "submitting",
            "total_tasks": job.task_count,
            "max_attempts": job.max_attempts,
            "timeout_s": _float(job.timeout_s),
            "idempotency_key": job.idempotency_key,
            "submitted_by": job.submitted_by,
            "labels": _json(job.labels),
        }
        self._add_tasks(seq, job.job_id, 0, job.tasks)

    def _job_tasks_added(self, seq: int, event: JobTasksAdded) -> None:
        self._check_task_limit(event.job_id, event.first_index, event.tasks)
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
                "listed": True,
            }
        )
        self._list_tasks(seq, event.job_id, event.first_index, event.tasks)

    def _job_sealed(self, seq: int, event: JobSealed) -> None:
        job = self.jobs.get(event.job_id)
        if job is not None and job["status"] == "submitting":
            job.update(status="queued", updated_seq=seq)

    @staticmethod
    def _check_task_limit(job_id: str, first_index: int, specs: list[TaskSpec]) -> None:
        error = over_the_task_limit(job_id, first_index, specs)
        if error is not None:
            raise _Rejected(error)

    def _add_tasks(self, seq: int, job_id: str, first_index: int, specs: list[TaskSpec]) -> int:
        """The task rows of `specs` from `first_index` on, those not there yet; return how
        many were made."""
        added = 0
        for spec, first in spec_ranges(first_index, specs):
            args = _json(spec.args)
            for index in range(first, first + spec.count):
                task_id = task_id_for(job_id, index)
                if task_id not in self.tasks:
                    self.tasks[task_id] = _new_task(task_id, job_id, index, spec.kind, args, seq)
                    added += 1
        return added

    def _list_tasks(self, seq: int, job_id: str, first_index: int, specs: list[TaskSpec]) -> None:
        """A taken batch's task rows, as the projector's lister writes them: a row a task
        event made first gets its index, kind and args, and its result the args it lacked."""
        for spec, first in spec_ranges(first_index, specs):
            args = _json(spec.args) or "{}"
            for index in range(first, first + spec.count):
                task_id = task_id_for(job_id, index)
                task = self.tasks.get(task_id)
                if task is None:
                    self.tasks[task_id] = _new_task(task_id, job_id, index, spec.kind, args, seq)
                    continue
                task.update(task_index=index, kind=spec.kind, args=args)
                task["updated_seq"] = max(task["updated_seq"], seq)
                result = self.results.get(task_id)
                if result is not None and msgspec.json.decode(result[_INPUTS]) == {}:
                    self.results[task_id] = (*result[:_INPUTS], args, *result[_INPUTS + 1 :])

    def _job_finished(
        self, seq: int, at: datetime, job_id: str, status: str, duration_s: float | None
    ) -> None:
        job = self.jobs.get(job_id)
        if job is None or job["status"] in TERMINAL_JOB_STATUSES:
            return
        job["status"] = status
        job["finished_at"] = at
        duration = _float(duration_s)
        job["duration_s"] = (
            duration if duration is not None else (at - job["submitted_at"]) / timedelta(seconds=1)
        )
        job["updated_seq"] = seq

    def _job_rejected(self, seq: int, at: datetime, event: JobRejected) -> None:
        job = self.jobs.get(event.job_id)
        if job is None:
            job = self.jobs[event.job_id] = _new_job(event.job_id, queue="", at=at, seq=seq)
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
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job["status"] == "queued":
            job["status"] = "running"
        if job["started_at"] is None or started_at < job["started_at"]:
            job["started_at"] = started_at
        job["updated_seq"] = max(job["updated_seq"], seq)

    # --- tasks -----------------------------------------------------------------------------

    def _open_task(self, seq: int, event: OneTaskEvent, kind: str = "") -> _Row | None:
        """The event's task row unless it ended; made (as the projector's upserts make it)
        if it is not there yet, its job is known and its id is one of the job's."""
        task = self.tasks.get(event.task_id)
        if task is None:
            index = task_index_of(event.job_id, event.task_id)
            if index is None or event.job_id not in self.jobs:
                return None
            task = self.tasks[event.task_id] = _new_task(
                event.task_id, event.job_id, index, kind, "{}", seq
            )
        return None if task["state"] in TERMINAL_TASK_STATES else task

    def _task_started(self, seq: int, at: datetime, event: TaskStarted) -> None:
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
        task = self._open_task(seq, event)
        if task is not None:
            if event.fraction is not None:
                task["progress"] = _float(event.fraction)
            task.update(
                state="running",
                worker_id=event.worker_id,
                progress_message=event.message,
                updated_seq=seq,
            )
        self._job_running(seq, event.job_id, at)
        self._worker_seen(seq, at, event.worker_id)

    def _task_succeeded(self, seq: int, at: datetime, event: TaskSucceeded) -> None:
        started_at = _counted_back(at, event.duration_s)
        duration = _float(event.duration_s)
        result = _json(event.result)
        task = self._open_task(seq, event, event.kind)
        if task is not None:
            if not (task["attempts"] == event.attempt and task["started_at"] is not None):
                task["started_at"] = started_at
            task["state"] = "succeeded"
            task["attempts"] = event.attempt
            task["worker_id"] = event.worker_id
            task["result"] = result
            task["error"] = None
            task["finished_at"] = at
            task["duration_s"] = duration
            task["updated_seq"] = seq
        self._finish_attempt(event, "succeeded", None, started_at, at, duration)
        if event.task_id not in self.results:
            self.results[event.task_id] = _result_row(
                task_id=event.task_id,
                job_id=event.job_id,
                kind=event.kind,
                inputs=self._inputs(event.task_id, event.args),
                output=result,
                processed_by=event.worker_id,
                duration_s=duration,
                status="succeeded",
                error=None,
                attempts=event.attempt,
                finished_at=at,
                seq=seq,
            )
            if event.kind == CRAWL_KIND:
                self.crawl.count(page_facts(seq, event))
        self._job_running(seq, event.job_id, started_at)
        self._worker_seen(seq, at, event.worker_id, succeeded=1)

    def _task_failed(self, seq: int, at: datetime, event: TaskFailed) -> None:
        started_at = _counted_back(at, event.duration_s)
        duration = _float(event.duration_s)
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
        attempts = self.attempts.get(event.task_id)
        if attempts is None:
            attempts = self.attempts[event.task_id] = {}
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
        worker_id = event.worker_id or None
        error = event.last_error or event.reason
        task = self._open_task(seq, event, event.kind)
        if task is not None:
            task.update(
                state="dead_lettered",
                attempts=event.attempts,
                worker_id=worker_id if worker_id is not None else task["worker_id"],
                error=error,
                finished_at=at,
                updated_seq=seq,
            )
        for attempt in self.attempts.get(event.task_id, {}).values():
            if attempt["outcome"] == "running":
                attempt.update(outcome="failed", error=error, finished_at=at)
        if event.task_id not in self.results:
            self.results[event.task_id] = _result_row(
                task_id=event.task_id,
                job_id=event.job_id,
                kind=event.kind,
                inputs=self._inputs(event.task_id, event.args),
                output=None,
                processed_by=worker_id or "",
                duration_s=None,
                status="dead_lettered",
                error=error,
                attempts=event.attempts,
                finished_at=at,
                seq=seq,
            )
            if event.kind == CRAWL_KIND:
                self.crawl.count(page_facts(seq, event))

    def _task_requeued(self, seq: int, event: TaskRequeued) -> None:
        task = self.tasks.get(event.task_id)
        if task is not None and task["state"] == "dead_lettered":
            task.update(state="queued", finished_at=None, duration_s=None, updated_seq=seq)
            result = self.results.pop(event.task_id, None)
            if event.kind == CRAWL_KIND and result is not None:
                self._crawl_failure_undone(seq, event, result)
        job = self.jobs.get(event.job_id)
        if job is None:
            return
        if job["status"] in ("failed", "completed"):
            job.update(status="running", finished_at=None, duration_s=None)
        job["updated_seq"] = max(job["updated_seq"], seq)

    def _crawl_failure_undone(self, seq: int, event: TaskRequeued, result: tuple[Any, ...]) -> None:
        row = dict(zip(COLUMNS["results"], result, strict=True))
        if row["status"] == "dead_lettered" and row["kind"] == CRAWL_KIND:
            self.crawl.undo_failure(failure_undone(seq, event), row["error"])

    def _task_cancelled(self, seq: int, at: datetime, event: TaskCancelled) -> None:
        task = self._open_task(seq, event)
        if task is not None:
            task.update(state="cancelled", finished_at=at, updated_seq=seq)

    def _inputs(self, task_id: str, args: dict[str, Any]) -> str:
        if args:
            return _json(args) or "{}"
        task = self.tasks.get(task_id)
        return task["args"] if task is not None else "{}"

    # --- workers ---------------------------------------------------------------------------

    def _worker_started(self, seq: int, at: datetime, event: WorkerStarted) -> None:
        worker = self.workers.get(event.worker_id)
        if worker is None:
            worker = self.workers[event.worker_id] = _new_worker(event.worker_id, seq)
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
        worker = self.workers.get(event.worker_id)
        if worker is None or worker["state"] != "active":
            return
        if event.last_seen is not None:
            worker["last_seen_at"] = _utc(event.last_seen)
        worker.update(state="lost", updated_seq=seq)

    def _worker_seen(
        self, seq: int, at: datetime, worker_id: str, *, succeeded: int = 0, failed: int = 0
    ) -> None:
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = _new_worker(worker_id, seq)
            worker.update(tasks_succeeded=succeeded, tasks_failed=failed, last_seen_at=at)
            return
        if worker["state"] == "lost":  # seen working again
            worker["state"] = "active"
        worker["tasks_succeeded"] += succeeded
        worker["tasks_failed"] += failed
        worker["last_seen_at"] = _later(worker["last_seen_at"], at)
        worker["updated_seq"] = max(worker["updated_seq"], seq)

    # --- output ----------------------------------------------------------------------------

    def table_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Each table's rows as tuples in `COLUMNS` order."""
        attempts = (a for per_task in self.attempts.values() for a in per_task.values())
        return {
            "jobs": _in_columns("jobs", self.jobs.values()),
            "tasks": _in_columns("tasks", self.tasks.values()),
            "task_attempts": _in_columns("task_attempts", attempts),
            "workers": _in_columns("workers", self.workers.values()),
            "results": list(self.results.values()),
            "rejected_events": _in_columns("rejected_events", self.rejected.values()),
            "job_batches": _in_columns("job_batches", self.batches),
            "crawl_stats": _in_columns("crawl_stats", self.crawl.table_rows()),
        }


class _Rejected(ValueError):
    pass


def _new_job(job_id: str, *, queue: str, at: datetime, seq: int) -> _Row:
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
        "labels": _json({}),
        "submitted_at": at,
        "started_at": None,
        "finished_at": None,
        "duration_s": None,
        "error": None,
        "submitted_seq": seq,
        "updated_seq": seq,
    }


def _in_columns(table: str, rows: Iterable[_Row]) -> list[tuple[Any, ...]]:
    return list(map(operator.itemgetter(*COLUMNS[table]), rows))


def _new_task(task_id: str, job_id: str, index: int, kind: str, args: str | None, seq: int) -> _Row:
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
) -> _Row:
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


def _result_row(
    *,
    task_id: str,
    job_id: str,
    kind: str,
    inputs: str,
    output: str | None,
    processed_by: str,
    duration_s: float | None,
    status: str,
    error: str | None,
    attempts: int,
    finished_at: datetime,
    seq: int,
) -> tuple[Any, ...]:
    """A `results` row, as `table_rows` gives it: in `COLUMNS["results"]` order."""
    return (
        task_id,
        job_id,
        kind,
        inputs,
        output,
        processed_by,
        duration_s,
        status,
        error,
        attempts,
        finished_at,
        seq,
    )


def _new_worker(worker_id: str, seq: int) -> _Row:
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


async def write_fold(pool: asyncpg.Pool, schema: str, fold: ReadModelFold) -> None:
    """Load the fold's rows into the empty tables of `schema`: indexes dropped, one COPY per
    table on its own connection, indexes built again (a sort each, not row by row)."""
    tables = fold.table_rows()
    async with pool.acquire() as conn:
        rebuild = await _drop_indexes(conn, schema)

    async def run(statements: list[str]) -> None:
        async with pool.acquire() as conn:
            for statement in statements:
                await conn.execute(statement)

    async def copy(table: str, rows: list[tuple[Any, ...]]) -> None:
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(
                table, schema_name=schema, columns=list(COLUMNS[table]), records=rows
            )

    await asyncio.gather(*(copy(table, rows) for table, rows in tables.items() if rows))
    await asyncio.gather(*(run(statements) for statements in rebuild.values()))


async def _drop_indexes(conn: asyncpg.Connection, schema: str) -> dict[str, list[str]]:
    """Drop the primary keys and indexes of `schema`'s tables; return, per table, the
    statements that make them again."""
    rebuild: dict[str, list[str]] = {}
    drops: list[str] = []
    keys = await conn.fetch(
        """
        SELECT t.relname AS table_name, c.conname, pg_get_constraintdef(c.oid) AS definition
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = $1 AND c.contype = 'p'
        """,
        schema,
    )
    indexes = await conn.fetch(
        """
        SELECT i.tablename AS table_name, i.indexname, i.indexdef
        FROM pg_indexes i
        WHERE i.schemaname = $1
          AND NOT EXISTS (
              SELECT 1 FROM pg_constraint c
              JOIN pg_namespace n ON n.oid = c.connamespace
              WHERE n.nspname = $1 AND c.conname = i.indexname
          )
        """,
        schema,
    )
    for key in keys:
        table = f"{quote_ident(schema)}.{quote_ident(key['table_name'])}"
        drops.append(f"ALTER TABLE {table} DROP CONSTRAINT {quote_ident(key['conname'])}")
        rebuild.setdefault(key["table_name"], []).insert(
            0,
            f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(key['conname'])} {key['definition']}",
        )
    for index in indexes:
        drops.append(f"DROP INDEX {quote_ident(schema)}.{quote_ident(index['indexname'])}")
        rebuild.setdefault(index["table_name"], []).append(index["indexdef"])
    async with conn.transaction():
        for statement in drops:
            await conn.execute(statement)
    return rebuild
