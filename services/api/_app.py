"""The read-only HTTP API over the PostgreSQL read models, and the dashboard page.

Settings arrive as arguments (the CLI reads the environment); this module reads none.
Every error body is `{"detail": "<a sentence>"}`; bad query values answer 422, a missing job
404, an unreachable or unmigrated database 503 — never a traceback.
"""

import asyncio
import html
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from jobstream.events import (
    NO_SECURITY,
    READ_MODEL_SCHEMA,
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
    keyset_page,
)
from jobstream.services.api._dead_letters import dead_letters_router
from jobstream.services.api._errors import (
    RETRY_AFTER_S,
    ErrorBody,
    add_error_handlers,
    bad_query,
    error_response,
)
from jobstream.services.api._live import DEFAULT_READY_MAX_LAG_S, LiveLog, live_router
from jobstream.services.api._liveness import (
    LivenessWatch,
    LiveWork,
)
from jobstream.services.api._params import (
    READS,
    JobIdPath,
    LabelQuery,
    OptionalDayQuery,
    OptionalJobIdQuery,
    OptionalQueueQuery,
    SinceQuery,
    TaskIdPath,
    UntilQuery,
    WorkerIdPath,
    parse_label_query,
)
from jobstream.services.api._queues import QueueDepthCache, queues_router
from jobstream.services.api._reads import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Health,
    Job,
    JobPage,
    Result,
    ResultPage,
    TaskDetail,
    TaskPage,
    WorkerDetail,
    WorkerList,
    _load_job,
    _worker,
    init_connection,
    jobs_page,
    task_detail,
    tasks_page,
    workers_list,
)
from jobstream.services.api._safety import (
    DEFAULT_RATE_LIMIT_BURST,
    DEFAULT_RATE_LIMIT_PER_S,
    add_safety,
    document_router,
    include_guarded,
)
from jobstream.services.api._stats import StatsCache, stats_router

DEFAULT_SCHEMA = READ_MODEL_SCHEMA
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQL = load_queries("jobstream.services.api", "queries.sql")
_OPS_SQL = load_queries("jobstream.services.api", "ops.sql")
log = logging.getLogger("jobstream.api")
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
RECONNECT_INTERVAL_S = 1.0
WORKER_RATE_WINDOW_S = 60

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


def _live_work(request: Request) -> LiveWork:
    watch: LivenessWatch = request.app.state.liveness
    return watch.work()


Live = Annotated[LiveWork, Depends(_live_work)]


# --- routes -----------------------------------------------------------------

router = APIRouter()
_ONE_JOB: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job"},
    **READS,
}
_ONE_WORKER: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such worker"},
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
MAX_SEARCH_LENGTH = 200
NameSearch = Annotated[
    str | None,
    Query(min_length=1, max_length=MAX_SEARCH_LENGTH, description="a part of the name, any case"),
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
    label: LabelQuery = None,
    since: SinceQuery = None,
    until: UntilQuery = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
    name: NameSearch = None,
) -> JobPage:
    """Jobs, newest first, with their task counts; `label` and `name` narrow the list."""
    after = decode_cursor(cursor, JobCursor)
    async with read_models.connection() as conn:
        return await jobs_page(
            conn,
            live,
            status=status,
            queue=queue,
            labels=parse_label_query(label),
            since=since,
            until=until,
            name=name,
            limit=limit,
            after=after,
        )


@router.get("/jobs/{job_id}", responses=_ONE_JOB)
async def get_job(job_id: JobIdPath, read_models: ReadModels, live: Live) -> Job:
    """One job with its task counts and progress (counts the projector keeps on the job's
    row: the read costs the same for a job of one task or of millions)."""
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


@router.get("/workers/{worker_id}", responses=_ONE_WORKER)
async def get_worker(worker_id: WorkerIdPath, read_models: ReadModels, live: Live) -> WorkerDetail:
    """One worker: state, host, concurrency, last seen, tasks succeeded and failed, the tasks
    it holds now and its recent rate."""
    since = datetime.now(UTC) - timedelta(seconds=WORKER_RATE_WINDOW_S)
    async with read_models.connection() as conn:
        row = await conn.fetchrow(_OPS_SQL["get_worker"], worker_id)
        if row is None:
            raise HTTPException(404, f"worker {worker_id} not found")
        finished = await conn.fetchval(_OPS_SQL["worker_finished_since"], worker_id, since)
    in_flight = sum(1 for holder in live.worker_by_task.values() if holder == worker_id)
    return WorkerDetail(
        **_worker(row, live).model_dump(),
        in_flight=in_flight,
        rate_per_s=finished / WORKER_RATE_WINDOW_S,
        rate_window_s=WORKER_RATE_WINDOW_S,
    )


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
    page, next_cursor = keyset_page(
        rows, limit, lambda last: ResultCursor(last["finished_at"], last["task_id"])
    )
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


def _static_dir() -> Path:
    return Path(str(resources.files("jobstream.services.api") / "static"))


def _dashboard_html(title: str) -> str:
    template = (_static_dir() / "index.html").read_text("utf-8")
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
    api_token: str | None = None,
    cors_origins: Sequence[str] = (),
    rate_limit_per_s: float | None = DEFAULT_RATE_LIMIT_PER_S,
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST,
) -> FastAPI:
    """The API over the read models in `schema` of `database_url`.

    With `nats_urls`, the endpoints that read the event log (a job's history, readiness, the
    live stream, queue depths) work too; the API starts without NATS and connects in the
    background. With `api_token`, every route but `/`, `/healthz` and `/readyz` needs it as a
    bearer token; `cors_origins` may call it from a browser; each client address may make
    `rate_limit_per_s` requests a second, in bursts of `rate_limit_burst` (None: no limit).
    """
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r}: use letters, digits and underscores")
    # The document is served by document_router, behind the token like any JSON route.
    app = FastAPI(title=title, lifespan=_lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.read_models = _ReadModels(
        database_url=database_url, schema=schema, pool_max_size=pool_max_size
    )
    app.state.live_log = LiveLog(list(nats_urls or []), nats_security)
    app.state.liveness = LivenessWatch(app.state.live_log.connected)
    app.state.sql = _SQL
    app.state.ready_max_lag_s = ready_max_lag_s
    app.state.dashboard_html = _dashboard_html(title)
    app.state.stats_cache = StatsCache()
    app.state.queue_depths = QueueDepthCache()
    add_safety(
        app,
        api_token=api_token,
        cors_origins=cors_origins,
        rate_limit_per_s=rate_limit_per_s,
        rate_limit_burst=rate_limit_burst,
    )
    include_guarded(
        app,
        [
            router,
            live_router,
            crawl_router,
            stats_router,
            queues_router,
            dead_letters_router,
            document_router,
        ],
        token=api_token is not None,
        rate_limited=rate_limit_per_s is not None,
    )
    add_error_handlers(app)
    app.add_exception_handler(BadQueryValueError, _on_bad_value)
    app.add_exception_handler(DatabaseUnavailableError, _on_unavailable)
    app.add_exception_handler(ReadModelsMissingError, _on_missing)
    # The dashboard's scripts, styles and vendored chart library (static/vendor/): public,
    # like the page, which asks for the API's token itself.
    app.mount("/static", StaticFiles(directory=str(_static_dir())), name="static")
    return app
