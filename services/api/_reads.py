"""The read models as the API shows them, without the web stack: the response models and the
reads behind each page (a job, its tasks, a task's attempts, the workers), on a caller's
connection. The API's routes call them, and so do the CLI's read commands, which start
without loading FastAPI."""

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec
from pydantic import BaseModel, ConfigDict, JsonValue

from jobstream.events import (
    TASK_COUNT_COLUMNS,
    TASK_STATES,
    TERMINAL_JOB_STATUSES,
    load_queries,
)
from jobstream.services.api._cursors import (
    JobCursor,
    TaskCursor,
    keyset_page,
)
from jobstream.services.api._liveness import (
    WAITING_STATES,
    LiveWork,
    overlay_counts,
    overlay_last_seen,
    overlay_status,
    overlay_task,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_SQL = load_queries("jobstream.services.api", "queries.sql")
_COUNT_FIELDS = frozenset(TASK_COUNT_COLUMNS.values())
_OPS_SQL = load_queries("jobstream.services.api", "ops.sql")
log = logging.getLogger("jobstream.api")


# --- response models --------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Health(_Model):
    status: Literal["ok"] = "ok"


class TaskCounts(_Model):
    """A job's tasks by state: the counts the projector keeps on the job's row (a read counts
    nothing). Tasks the job announced whose rows are not written yet (a streamed job's batch
    still being listed) count as queued; tasks in flight that the read model still has as
    queued or failed count as running."""

    total: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    dead_lettered: int = 0
    cancelled: int = 0


class Job(_Model):
    job_id: str
    name: str
    queue: str
    status: str
    priority: int
    labels: dict[str, str]
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    # Why the job was rejected (status "rejected"), else null.
    error: str | None
    total_tasks: int
    max_attempts: int
    timeout_s: float | None
    idempotency_key: str | None
    submitted_by: str
    tasks: TaskCounts
    progress: float


class JobPage(_Model):
    jobs: list[Job]
    next_cursor: str | None


class Task(_Model):
    task_id: str
    job_id: str
    task_index: int
    kind: str
    args: dict[str, JsonValue]
    state: str
    attempts: int
    worker_id: str | None
    result: JsonValue
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    progress: float | None
    progress_message: str | None


class TaskPage(_Model):
    tasks: list[Task]
    next_cursor: str | None


class Attempt(_Model):
    attempt: int
    worker_id: str
    # running | succeeded | failed
    outcome: str
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None


class TaskDetail(Task):
    # Each attempt, oldest first (`attempts` is how many there were).
    history: list[Attempt]


class Worker(_Model):
    worker_id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    version: str
    state: str
    started_at: datetime | None
    last_seen_at: datetime | None
    stopped_at: datetime | None
    tasks_succeeded: int
    tasks_failed: int


class WorkerDetail(Worker):
    # Tasks it holds right now (from the liveness records).
    in_flight: int
    # Tasks it finished (succeeded or dead-lettered) per second over the last rate_window_s.
    rate_per_s: float
    rate_window_s: int


class WorkerList(_Model):
    workers: list[Worker]


class Result(_Model):
    task_id: str
    job_id: str
    kind: str
    inputs: JsonValue
    output: JsonValue
    processed_by: str
    duration_s: float | None
    status: str
    error: str | None
    attempts: int
    finished_at: datetime
    seq: int


class ResultPage(_Model):
    results: list[Result]
    next_cursor: str | None


def _json_encode(value: object) -> str:
    return msgspec.json.encode(value).decode("utf-8")


async def init_connection(conn: asyncpg.Connection) -> None:
    """Set up a read-model connection as the API's pool does (jsonb as Python values): for a
    pool of a caller's own (`asyncpg.create_pool(..., init=init_connection)`)."""
    await conn.set_type_codec(
        "jsonb", encoder=_json_encode, decoder=msgspec.json.decode, schema="pg_catalog"
    )


# --- rows to models ---------------------------------------------------------


async def _task_counts(
    conn: asyncpg.Connection, rows: Sequence[asyncpg.Record], live: LiveWork
) -> dict[str, dict[str, int]]:
    """Task counts by state of the jobs of `rows` (the counts the projector keeps on each job's
    row: nothing is counted here), with their tasks in flight (`live`) that the read model
    still has as queued or failed counted as running (a lookup of those tasks alone)."""
    counts: dict[str, dict[str, int]] = {
        row["job_id"]: {state: row[column] for state, column in TASK_COUNT_COLUMNS.items()}
        for row in rows
    }
    waiting: dict[str, dict[str, int]] = {job_id: {} for job_id in counts}
    live_ids = live.live_task_ids(list(counts))
    if live_ids:
        for row in await conn.fetch(_SQL["waiting_task_counts"], live_ids, WAITING_STATES):
            waiting[row["job_id"]][row["state"]] = row["n"]
    return {job_id: overlay_counts(counts[job_id], waiting[job_id]) for job_id in counts}


def _counts(by_state: Mapping[str, int], total_tasks: int) -> TaskCounts:
    """Counts of the job's task rows; tasks the job announced but the projector has not
    written yet (a streamed job's batch not listed yet) count as queued, so a fresh job
    never shows 0 of 0."""
    per_state = {state: by_state.get(state, 0) for state in TASK_STATES}
    counted = sum(by_state.values())
    unprojected = max(total_tasks - counted, 0)
    per_state["queued"] += unprojected
    return TaskCounts(total=counted + unprojected, **per_state)


def _progress(counts: TaskCounts, status: str) -> float:
    if counts.total == 0:
        return 1.0 if status in TERMINAL_JOB_STATUSES else 0.0
    terminal = counts.succeeded + counts.dead_lettered + counts.cancelled
    return terminal / counts.total


def _job(row: asyncpg.Record, by_state: Mapping[str, int]) -> Job:
    fields = {key: value for key, value in row.items() if key not in _COUNT_FIELDS}
    if isinstance(fields["labels"], str):  # a caller's connection without our jsonb codec
        fields["labels"] = msgspec.json.decode(fields["labels"])
    counts = _counts(by_state, row["total_tasks"])
    fields["status"] = overlay_status(row["status"], counts.running)
    return Job(**fields, tasks=counts, progress=_progress(counts, row["status"]))


def _task(row: asyncpg.Record, live: LiveWork) -> Task:
    fields = dict(row)
    live_worker = live.worker_by_task.get(row["task_id"])
    fields["state"], fields["worker_id"] = overlay_task(row["state"], row["worker_id"], live_worker)
    return Task(**fields)


def _worker(row: asyncpg.Record, live: LiveWork) -> Worker:
    fields = dict(row)
    live_seen = live.seen_at.get(row["worker_id"])
    fields["last_seen_at"] = overlay_last_seen(row["last_seen_at"], live_seen)
    return Worker(**fields)


async def _load_job(conn: asyncpg.Connection, job_id: str, live: LiveWork) -> Job | None:
    row = await conn.fetchrow(_SQL["get_job"], job_id)
    if row is None:
        return None
    counts = await _task_counts(conn, [row], live)
    return _job(row, counts[job_id])


async def job_summary(
    conn: asyncpg.Connection, job_id: str, live: LiveWork | None = None
) -> dict[str, object] | None:
    """One job as `GET /jobs/{job_id}` shows it, JSON-safe, read on the caller's connection
    (its search_path must name the read-model schema), with the tasks in flight of `live`;
    None if the job is not there."""
    job = await _load_job(conn, job_id, live or LiveWork())
    return None if job is None else job.model_dump(mode="json")


async def running_tasks(
    conn: asyncpg.Connection, job_id: str, live: LiveWork | None = None, *, limit: int = 10
) -> list[dict[str, object]]:
    """A job's first `limit` running tasks, as `GET /jobs/{id}/tasks?state=running` shows
    them (with the tasks in flight in `live`), JSON-safe, on the caller's connection."""
    live = live or LiveWork()
    await init_connection(conn)  # the caller's connection may decode jsonb as text
    rows = await conn.fetch(
        _SQL["list_tasks"], job_id, "running", None, limit, live.tasks_of(job_id)
    )
    return [_task(row, live).model_dump(mode="json") for row in rows]


async def dead_letters(
    conn: asyncpg.Connection, *, job_id: str | None = None, limit: int = 1000
) -> list[dict[str, object]]:
    """Dead-lettered tasks from the read model, JSON-safe, on the caller's connection."""
    rows = await conn.fetch(_SQL["list_dead_letters"], job_id, limit)
    return [
        {
            "task_id": row["task_id"],
            "job_id": row["job_id"],
            "kind": row["kind"],
            "attempts": row["attempts"],
            "error": row["error"],
            "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        }
        for row in rows
    ]


async def jobs_page(
    conn: asyncpg.Connection,
    live: LiveWork,
    *,
    status: str | None = None,
    queue: str | None = None,
    labels: dict[str, str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    after: JobCursor | None = None,
    name: str | None = None,
) -> JobPage:
    """A page of jobs, newest first, with their task counts (and the tasks in flight of
    `live`), on the caller's connection (search_path: the read-model schema; jsonb decoded
    as the API's pool does it: `init_connection`). `labels`: jobs with all of them; `name`:
    a part of the name, any case."""
    rows = await conn.fetch(
        _SQL["list_jobs"],
        status,
        queue,
        after.submitted_at if after else None,
        after.job_id if after else None,
        limit + 1,
        list(live.tasks_by_job),
        labels or None,
        since,
        until,
        None if name is None else f"%{_like_escaped(name)}%",
    )
    page, next_cursor = keyset_page(
        rows, limit, lambda last: JobCursor(last["submitted_at"], last["job_id"])
    )
    counts = await _task_counts(conn, page, live)
    return JobPage(jobs=[_job(row, counts[row["job_id"]]) for row in page], next_cursor=next_cursor)


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def tasks_page(
    conn: asyncpg.Connection,
    job_id: str,
    live: LiveWork,
    *,
    state: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    after: TaskCursor | None = None,
) -> TaskPage | None:
    """A page of a job's tasks in task order; None if the job is not there."""
    arguments = (
        job_id,
        state,
        after.task_index if after else None,
        limit + 1,
        live.tasks_of(job_id),
    )
    rows = await conn.fetch(_SQL["list_tasks"], *arguments)
    if not rows:
        if not await conn.fetchval(_SQL["job_exists"], job_id):
            return None
        # The job may have been projected, with its tasks, between the two statements: list
        # again, now that it is known to exist, rather than show it without its tasks.
        rows = await conn.fetch(_SQL["list_tasks"], *arguments)
    page, next_cursor = keyset_page(
        rows, limit, lambda last: TaskCursor(last["task_index"], last["task_id"])
    )
    return TaskPage(tasks=[_task(row, live) for row in page], next_cursor=next_cursor)


async def task_detail(
    conn: asyncpg.Connection, task_id: str, live: LiveWork
) -> "TaskDetail | None":
    """One task with its attempts, oldest first; None if the read model has no such task."""
    row = await conn.fetchrow(_SQL["get_task"], task_id)
    if row is None:
        return None
    history = [Attempt(**dict(a)) for a in await conn.fetch(_SQL["list_attempts"], task_id)]
    return TaskDetail(**_task(row, live).model_dump(), history=history)


async def workers_list(conn: asyncpg.Connection, live: LiveWork) -> WorkerList:
    """Every worker the log has seen, active ones first."""
    rows = await conn.fetch(_SQL["list_workers"])
    return WorkerList(workers=[_worker(row, live) for row in rows])
