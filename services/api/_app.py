"""The read-only HTTP API over the PostgreSQL read models, and the dashboard page.

Settings arrive as arguments (the CLI reads the environment); this module reads none.
Every error body is `{"detail": "<a sentence>"}`; bad query values answer 422, a missing job
404, an unreachable or unmigrated database 503 — never a traceback.
"""

import asyncio
import html
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, JsonValue

from jobstream.events import (
    NO_SECURITY,
    READ_MODEL_SCHEMA,
    TASK_STATES,
    TERMINAL_JOB_STATUSES,
    JobStatus,
    JobstreamError,
    NatsSecurity,
    TaskState,
    load_queries,
)
from jobstream.services.api._crawl import crawl_router
from jobstream.services.api._cursors import (
    JobCursor,
    ResultCursor,
    TaskCursor,
    decode_cursor,
    encode_cursor,
)
from jobstream.services.api._errors import (
    RETRY_AFTER_S,
    ErrorBody,
    add_error_handlers,
    bad_query,
    error_response,
)
from jobstream.services.api._live import DEFAULT_READY_MAX_LAG_S, LiveLog, live_router
from jobstream.services.api._liveness import (
    WAITING_STATES,
    Live,
    LivenessWatch,
    LiveWork,
    overlay_counts,
    overlay_last_seen,
    overlay_status,
    overlay_task,
)
from jobstream.services.api._params import (
    READS,
    JobIdPath,
    OptionalDayQuery,
    OptionalJobIdQuery,
    OptionalQueueQuery,
    TaskIdPath,
)

DEFAULT_SCHEMA = READ_MODEL_SCHEMA
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
RECONNECT_INTERVAL_S = 1.0

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_SQL = load_queries("jobstream.services.api", "queries.sql")
log = logging.getLogger("jobstream.api")


# --- errors -----------------------------------------------------------------


class DatabaseUnavailableError(JobstreamError):
    """PostgreSQL cannot be reached (down, restarting, refusing, too slow)."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"the read-model database is unavailable: {cause}")
        self.cause = cause


class ReadModelsMissingError(JobstreamError):
    """PostgreSQL answers, but the read-model tables are not in the schema."""

    def __init__(self, schema: str, cause: str) -> None:
        super().__init__(f"the read models are missing from schema {schema!r}: {cause}")
        self.schema = schema


class BadQueryValueError(JobstreamError):
    """A value PostgreSQL refused as data (e.g. a NUL character in a text parameter)."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"invalid query value: {cause}")


# --- response models --------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Health(_Model):
    status: Literal["ok"] = "ok"


class TaskCounts(_Model):
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


# --- the database -----------------------------------------------------------

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.TooManyConnectionsError,
)
_MISSING = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError)


def _json_encode(value: object) -> str:
    return msgspec.json.encode(value).decode("utf-8")


async def init_connection(conn: asyncpg.Connection) -> None:
    """Set up a read-model connection as the API's pool does (jsonb as Python values): for a
    pool of a caller's own (`asyncpg.create_pool(..., init=init_connection)`)."""
    await conn.set_type_codec(
        "jsonb", encoder=_json_encode, decoder=msgspec.json.decode, schema="pg_catalog"
    )


class _ReadModels:
    """An asyncpg pool over the read-model schema; opened at start-up, or at the first request
    if PostgreSQL was down then, so the process outlives a database outage."""

    def __init__(self, *, database_url: str, schema: str, pool_max_size: int) -> None:
        self.schema = schema
        self._database_url = database_url
        self._pool_max_size = pool_max_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._reachable = True
        self._next_attempt = 0.0

    async def open(self) -> None:
        try:
            await self._get_pool()
        except DatabaseUnavailableError:
            log.warning("starting without the database; it is retried on each request")

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("connections still busy after %.0f s; terminating", CLOSE_TIMEOUT_S)
            pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; driver errors come out as this module's errors."""
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        except _MISSING as exc:
            raise ReadModelsMissingError(self.schema, str(exc)) from exc
        except asyncpg.DataError as exc:
            raise BadQueryValueError(str(exc)) from exc
        self._mark_reachable()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise DatabaseUnavailableError("the API is shutting down")
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                # While PostgreSQL is down, fail fast between attempts instead of queueing.
                now = asyncio.get_running_loop().time()
                if now < self._next_attempt:
                    raise DatabaseUnavailableError("still unreachable; not retried yet")
                self._next_attempt = now + RECONNECT_INTERVAL_S
                self._pool = await self._create_pool()
            return self._pool

    async def _create_pool(self) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(
                self._database_url,
                min_size=POOL_MIN_SIZE,
                max_size=self._pool_max_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                init=init_connection,
                server_settings={
                    "search_path": f'"{self.schema}"',
                    "application_name": "jobstream-api",
                    "default_transaction_read_only": "on",
                    # Plan each call with its values so optional filters pick their index.
                    "plan_cache_mode": "force_custom_plan",
                },
            )
        except asyncpg.ClientConfigurationError:
            raise  # a malformed URL or option: no retry will fix it
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._reachable:
            log.warning("PostgreSQL unavailable: %s", cause)
        self._reachable = False
        return DatabaseUnavailableError(cause)

    def _mark_reachable(self) -> None:
        if not self._reachable:
            log.info("PostgreSQL reachable again")
        self._reachable = True


def _read_models(request: Request) -> _ReadModels:
    read_models: _ReadModels = request.app.state.read_models
    return read_models


ReadModels = Annotated[_ReadModels, Depends(_read_models)]


# --- rows to models ---------------------------------------------------------


async def _task_counts(
    conn: asyncpg.Connection, job_ids: Sequence[str], live: LiveWork
) -> dict[str, dict[str, int]]:
    """Task counts by state for many jobs, in one query, with their tasks in flight (`live`)
    that the read model still has as queued or failed counted as running."""
    counts: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
    waiting: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if job_ids:
        for row in await conn.fetch(_SQL["task_counts"], list(job_ids)):
            counts[row["job_id"]][row["state"]] = row["n"]
        live_ids = live.live_task_ids(job_ids)
        if live_ids:
            for row in await conn.fetch(_SQL["waiting_task_counts"], live_ids, WAITING_STATES):
                waiting[row["job_id"]][row["state"]] = row["n"]
    return {job_id: overlay_counts(counts[job_id], waiting[job_id]) for job_id in job_ids}


def _counts(by_state: Mapping[str, int], total_tasks: int) -> TaskCounts:
    """Counts from the tasks table; tasks the job announced but the projector has not written
    yet count as queued, so a fresh job never shows 0 of 0."""
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
    fields = dict(row)
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
    counts = await _task_counts(conn, [job_id], live)
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
        _SQL["list_tasks"], job_id, "running", None, None, limit, live.tasks_of(job_id)
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
    limit: int = DEFAULT_PAGE_SIZE,
    after: JobCursor | None = None,
) -> JobPage:
    """A page of jobs, newest first, with their task counts (and the tasks in flight of
    `live`), on the caller's connection (search_path: the read-model schema; jsonb decoded
    as the API's pool does it: `init_connection`)."""
    rows = await conn.fetch(
        _SQL["list_jobs"],
        status,
        queue,
        after.submitted_at if after else None,
        after.job_id if after else None,
        limit + 1,
        list(live.tasks_by_job),
    )
    page = rows[:limit]
    counts = await _task_counts(conn, [row["job_id"] for row in page], live)
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(JobCursor(last["submitted_at"], last["job_id"]))
    return JobPage(jobs=[_job(row, counts[row["job_id"]]) for row in page], next_cursor=next_cursor)


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
    rows = await conn.fetch(
        _SQL["list_tasks"],
        job_id,
        state,
        after.task_index if after else None,
        after.task_id if after else None,
        limit + 1,
        live.tasks_of(job_id),
    )
    if not rows and not await conn.fetchval(_SQL["job_exists"], job_id):
        return None
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(TaskCursor(last["task_index"], last["task_id"]))
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


# --- routes -----------------------------------------------------------------

router = APIRouter()
_ONE_JOB: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job"},
    **READS,
}
_ONE_TASK: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such task"},
    **READS,
}
Limit = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"rows per page, 1..{MAX_PAGE_SIZE}")
]
Cursor = Annotated[
    str | None, Query(min_length=1, description="the next_cursor of the previous page")
]


@router.get("/healthz")
async def healthz() -> Health:
    """The process is alive (no database call)."""
    return Health()


@router.get("/jobs", responses=READS)
async def list_jobs(
    read_models: ReadModels,
    live: Live,
    status: Annotated[JobStatus | None, Query()] = None,
    queue: OptionalQueueQuery = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> JobPage:
    """Jobs, newest first, with their task counts."""
    after = decode_cursor(cursor, JobCursor)
    async with read_models.connection() as conn:
        return await jobs_page(conn, live, status=status, queue=queue, limit=limit, after=after)


@router.get("/jobs/{job_id}", responses=_ONE_JOB)
async def get_job(job_id: JobIdPath, read_models: ReadModels, live: Live) -> Job:
    """One job with its task counts and progress."""
    async with read_models.connection() as conn:
        job = await _load_job(conn, job_id, live)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


@router.get("/jobs/{job_id}/tasks", responses=_ONE_JOB)
async def list_tasks(
    job_id: JobIdPath,
    read_models: ReadModels,
    live: Live,
    state: Annotated[TaskState | None, Query()] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> TaskPage:
    """A job's tasks in task order."""
    after = decode_cursor(cursor, TaskCursor)
    async with read_models.connection() as conn:
        page = await tasks_page(conn, job_id, live, state=state, limit=limit, after=after)
    if page is None:
        raise HTTPException(404, f"job {job_id} not found")
    return page


@router.get("/tasks/{task_id}", responses=_ONE_TASK)
async def get_task(task_id: TaskIdPath, read_models: ReadModels, live: Live) -> TaskDetail:
    """One task with each of its attempts (worker, outcome, error, times)."""
    async with read_models.connection() as conn:
        task = await task_detail(conn, task_id, live)
    if task is None:
        raise HTTPException(404, f"task {task_id} not found")
    return task


@router.get("/workers", responses={503: READS[503]})
async def list_workers(read_models: ReadModels, live: Live) -> WorkerList:
    """Every worker the log has seen: active ones first."""
    async with read_models.connection() as conn:
        return await workers_list(conn, live)


@router.get("/results", responses=READS)
async def list_results(
    read_models: ReadModels,
    day: OptionalDayQuery = None,
    job_id: OptionalJobIdQuery = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> ResultPage:
    """Finished tasks' results, in the order they finished."""
    after = decode_cursor(cursor, ResultCursor)
    since = until = None
    if day is not None:
        if day >= date.max:
            raise bad_query("day", day.isoformat(), f"must be before {date.max.isoformat()}")
        since = datetime.combine(day, time(), tzinfo=UTC)
        until = since + timedelta(days=1)
    async with read_models.connection() as conn:
        rows = await conn.fetch(
            _SQL["list_results"],
            since,
            until,
            job_id,
            after.finished_at if after else None,
            after.task_id if after else None,
            limit + 1,
        )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(ResultCursor(last["finished_at"], last["task_id"]))
    return ResultPage(results=[Result(**dict(row)) for row in page], next_cursor=next_cursor)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request) -> HTMLResponse:
    page: str = request.app.state.dashboard_html
    return HTMLResponse(page)


# --- error handlers ---------------------------------------------------------


async def _on_bad_value(request: Request, exc: Exception) -> JSONResponse:
    return error_response(422, str(exc))


async def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    detail = "the read-model database is unavailable; try again shortly"
    return error_response(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _on_missing(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ReadModelsMissingError)
    detail = f"the read models are not ready: schema {exc.schema!r} is not migrated"
    return error_response(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


# --- the factory ------------------------------------------------------------


def _dashboard_html(title: str) -> str:
    template = (resources.files("jobstream.services.api") / "static" / "index.html").read_text(
        "utf-8"
    )
    return template.replace("{{title}}", html.escape(title))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    read_models: _ReadModels = app.state.read_models
    live_log: LiveLog = app.state.live_log
    liveness: LivenessWatch = app.state.liveness
    await read_models.open()
    await live_log.open()
    liveness.start()
    try:
        yield
    finally:
        await liveness.close()
        await live_log.close()
        await read_models.close()


def create_app(
    *,
    database_url: str,
    schema: str = DEFAULT_SCHEMA,
    nats_urls: list[str] | None = None,
    nats_security: NatsSecurity = NO_SECURITY,
    title: str = "jobstream",
    pool_max_size: int = POOL_MAX_SIZE,
    ready_max_lag_s: float = DEFAULT_READY_MAX_LAG_S,
) -> FastAPI:
    """The API over the read models in `schema` of `database_url`.

    With `nats_urls`, the endpoints that read the event log (a job's history, readiness, the
    live stream) work too; the API starts without NATS and connects in the background.
    """
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r}: use letters, digits and underscores")
    app = FastAPI(title=title, lifespan=_lifespan)
    app.state.read_models = _ReadModels(
        database_url=database_url, schema=schema, pool_max_size=pool_max_size
    )
    app.state.live_log = LiveLog(list(nats_urls or []), nats_security)
    app.state.liveness = LivenessWatch(app.state.live_log.connected)
    app.state.sql = _SQL
    app.state.ready_max_lag_s = ready_max_lag_s
    app.state.dashboard_html = _dashboard_html(title)
    app.include_router(router)
    app.include_router(live_router)
    app.include_router(crawl_router)
    add_error_handlers(app)
    app.add_exception_handler(BadQueryValueError, _on_bad_value)
    app.add_exception_handler(DatabaseUnavailableError, _on_unavailable)
    app.add_exception_handler(ReadModelsMissingError, _on_missing)
    return app
