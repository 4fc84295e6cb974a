"""The read models of a busy system, written straight into PostgreSQL for the `api` section:
many small finished jobs and one big running job, as the projector would have left them after
the events (the same tables, states, counts and sequences), by COPY — not through NATS, which
would take the projector minutes for a million tasks and is not what the section measures.

The big job is the newest (it runs on top of the list, as a big job does while small ones wait
behind it): `BIG_JOB_FINISHED_SHARE` of its tasks ended (1 in `DEAD_EVERY` of them
dead-lettered after `MAX_ATTEMPTS` attempts, the others succeeded once), `RUNNING_TASKS` are
running and the rest queued. Its tasks ended over the hour before the seed, so `/stats`'
default window holds them.

The counts the projector keeps (each job's tasks by state, the finished tasks per minute,
queue and kind: migration 008; the jobs by status: 010) are then made from the copied rows by
the migrations' own `recount_read_model()`, as the projector would have kept them.
"""

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from jobstream.events import new_id, task_id_for
from jobstream.projections import migrate, quote_ident

MAX_ATTEMPTS = 3
SMALL_JOB_TASKS = 5
SMALL_JOB_STEP_S = 8.0
QUEUED_SMALL_JOBS = 10
FAILED_SMALL_JOB_EVERY = 100
BIG_JOB_FINISHED_SHARE = 0.9
DEAD_EVERY = 1_000
RUNNING_TASKS = 128
BIG_JOB_AGE_S = 3_600.0
BATCH_TASKS = 5_000
COPY_ROWS = 50_000
BIG_QUEUE = "bench"
SMALL_QUEUES = ("default", "web", "reports")
WORKERS = ("bench-api-w1", "bench-api-w2", "bench-api-w3", "bench-api-w4")
ERROR = "RuntimeError: boom"
TASK_DURATION_S = 0.001
TASK_DURATION = timedelta(seconds=TASK_DURATION_S)

_TASK_COLUMNS = (
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
)
_ATTEMPT_COLUMNS = (
    "task_id",
    "attempt",
    "job_id",
    "worker_id",
    "outcome",
    "error",
    "started_at",
    "finished_at",
    "duration_s",
)
_JOB_COLUMNS = (
    "job_id",
    "name",
    "queue",
    "priority",
    "status",
    "total_tasks",
    "max_attempts",
    "submitted_by",
    "labels",
    "submitted_at",
    "started_at",
    "finished_at",
    "duration_s",
    "submitted_seq",
    "updated_seq",
)
_BATCH_COLUMNS = ("job_id", "first_index", "task_count", "seq", "listed")
_WORKER_COLUMNS = (
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
)

Row = tuple[Any, ...]


@dataclass(frozen=True, kw_only=True)
class SeedResult:
    """What was written, and how long it took (COPY, the kept counts, then VACUUM ANALYZE)."""

    jobs: int
    tasks: int
    results: int
    attempts: int
    dead_letters: int
    big_job_id: str
    big_job_tasks: int
    # A finished task of the big job and one deep in it, for the single-task reads.
    sample_task_ids: list[str]
    copy_s: float
    recount_s: float
    vacuum_s: float


_STATE = _TASK_COLUMNS.index("state")


def _task_row(
    task_id: str,
    job_id: str,
    index: int,
    *,
    state: str,
    seq: int,
    args: str = "{}",
    attempts: int = 0,
    worker: str | None = None,
    error: str | None = None,
    started: datetime | None = None,
    finished: datetime | None = None,
    duration_s: float | None = None,
) -> Row:
    """A `tasks` row (_TASK_COLUMNS); `result` is null: the no-op handler returns nothing."""
    return (
        *(task_id, job_id, index, "noop", args, state, attempts, worker, None, error),
        *(started, finished, duration_s, seq),
    )


def _attempt_row(
    task_id: str,
    attempt: int,
    job_id: str,
    worker: str,
    *,
    outcome: str,
    started: datetime,
    finished: datetime | None = None,
    duration_s: float | None = None,
    error: str | None = None,
) -> Row:
    """An `attempt_rows` row (_ATTEMPT_COLUMNS)."""
    return (task_id, attempt, job_id, worker, outcome, error, started, finished, duration_s)


def _jsonb(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class _BigJob:
    job_id: str
    tasks: int
    submitted_at: datetime
    first_seq: int

    @property
    def finished(self) -> int:
        return int(self.tasks * BIG_JOB_FINISHED_SHARE)

    @property
    def running(self) -> int:
        return min(RUNNING_TASKS, self.tasks - self.finished)

    def dead(self, index: int) -> bool:
        return index < self.finished and index % DEAD_EVERY == 7

    def finished_at(self, index: int) -> datetime:
        span_s = BIG_JOB_AGE_S - 10.0
        return self.submitted_at + timedelta(seconds=1.0 + span_s * index / max(1, self.finished))

    def seq(self, index: int) -> int:
        # After job.submitted and its job.tasks_added batches, one terminal event per task.
        return self.first_seq + 1 + -(-self.tasks // BATCH_TASKS) + index

    def worker(self, index: int) -> str:
        return WORKERS[index % 2]


def _big_task_rows(job: _BigJob, start: int, stop: int) -> Iterator[Row]:
    running_started = job.submitted_at + timedelta(seconds=BIG_JOB_AGE_S - 1.0)
    for index in range(start, stop):
        task_id = task_id_for(job.job_id, index)
        args = f'{{"i":{index}}}'
        if index >= job.finished + job.running:
            yield _task_row(
                task_id, job.job_id, index, state="queued", seq=job.first_seq, args=args
            )
            continue
        seq, worker = job.seq(index), job.worker(index)
        if index >= job.finished:
            yield _task_row(
                task_id,
                job.job_id,
                index,
                state="running",
                attempts=1,
                started=running_started,
                seq=seq,
                args=args,
                worker=worker,
            )
        elif job.dead(index):
            yield _task_row(
                task_id,
                job.job_id,
                index,
                state="dead_lettered",
                attempts=MAX_ATTEMPTS,
                error=ERROR,
                finished=job.finished_at(index),
                seq=seq,
                args=args,
                worker=worker,
            )
        else:
            at = job.finished_at(index)
            yield _task_row(
                task_id,
                job.job_id,
                index,
                state="succeeded",
                attempts=1,
                finished=at,
                started=at - TASK_DURATION,
                duration_s=TASK_DURATION_S,
                seq=seq,
                args=args,
                worker=worker,
            )


def _big_attempt_rows(job: _BigJob, start: int, stop: int) -> Iterator[Row]:
    running_started = job.submitted_at + timedelta(seconds=BIG_JOB_AGE_S - 1.0)
    for index in range(start, min(stop, job.finished + job.running)):
        task_id = task_id_for(job.job_id, index)
        worker = job.worker(index)
        if index >= job.finished:
            yield _attempt_row(
                task_id, 1, job.job_id, worker, outcome="running", started=running_started
            )
        elif job.dead(index):
            yield from _failed_attempts(task_id, job.job_id, worker, job.finished_at(index))
        # A task that succeeded at once has no attempt row: its task row tells the attempt.


def _failed_attempts(task_id: str, job_id: str, worker: str, last_at: datetime) -> list[Row]:
    """A dead letter's attempts: each failed, a second apart, the last at `last_at`."""
    rows = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        ended = last_at - timedelta(seconds=MAX_ATTEMPTS - attempt)
        rows.append(
            _attempt_row(
                task_id,
                attempt,
                job_id,
                worker,
                outcome="failed",
                error=ERROR,
                started=ended - TASK_DURATION,
                finished=ended,
                duration_s=TASK_DURATION_S,
            )
        )
    return rows


@dataclass(kw_only=True)
class _SmallJobs:
    """Rows of the small jobs: all of them fit in memory (a few per job)."""

    jobs: list[Row]
    tasks: list[Row]
    attempts: list[Row]
    dead_letters: int
    last_seq: int
    # Tasks succeeded and failed attempts per worker (workers' counters).
    succeeded: dict[str, int]
    failed: dict[str, int]


def _small_job_rows(
    job_id: str, submitted: datetime, seq: int, *, queued: bool, failed: bool, worker: str
) -> tuple[list[Row], list[Row], int]:
    """One small job's task and attempt rows, and its last sequence: each task ended
    0.1 s after the previous one (the last dead-lettered if `failed`), or all queued."""
    tasks: list[Row] = []
    attempts: list[Row] = []
    for index in range(SMALL_JOB_TASKS):
        task_id = task_id_for(job_id, index)
        if queued:
            tasks.append(_task_row(task_id, job_id, index, state="queued", seq=seq))
            continue
        at = submitted + timedelta(seconds=0.1 * (index + 1))
        seq += 1
        if failed and index == SMALL_JOB_TASKS - 1:
            tasks.append(
                _task_row(
                    task_id,
                    job_id,
                    index,
                    state="dead_lettered",
                    seq=seq,
                    attempts=MAX_ATTEMPTS,
                    worker=worker,
                    error=ERROR,
                    finished=at,
                )
            )
            attempts += _failed_attempts(task_id, job_id, worker, at)
            continue
        started = at - TASK_DURATION
        tasks.append(
            _task_row(
                task_id,
                job_id,
                index,
                state="succeeded",
                seq=seq,
                attempts=1,
                worker=worker,
                started=started,
                finished=at,
                duration_s=TASK_DURATION_S,
            )
        )
    return tasks, attempts, seq


def _job_row(
    job_id: str,
    name: str,
    queue: str,
    *,
    status: str,
    tasks: int,
    submitted: datetime,
    submitted_seq: int,
    seq: int,
    started: datetime | None = None,
    finished: datetime | None = None,
) -> Row:
    """A `jobs` row (_JOB_COLUMNS)."""
    duration_s = None if finished is None else (finished - submitted).total_seconds()
    labels = _jsonb({"team": queue})
    return (
        *(job_id, name, queue, 0, status, tasks, MAX_ATTEMPTS, "bench", labels, submitted),
        *(started, finished, duration_s, submitted_seq, seq),
    )


def _small_jobs(count: int, *, newest_at: datetime) -> _SmallJobs:
    """`count` jobs of SMALL_JOB_TASKS tasks, SMALL_JOB_STEP_S apart up to `newest_at`: the
    newest QUEUED_SMALL_JOBS still queued, 1 in FAILED_SMALL_JOB_EVERY failed (a dead letter),
    the others completed."""
    small = _SmallJobs(
        jobs=[],
        tasks=[],
        attempts=[],
        dead_letters=0,
        last_seq=0,
        succeeded=dict.fromkeys(WORKERS, 0),
        failed=dict.fromkeys(WORKERS, 0),
    )
    seq = 0
    for k in range(count):
        job_id = new_id()
        queue = SMALL_QUEUES[k % len(SMALL_QUEUES)]
        submitted = newest_at - timedelta(seconds=SMALL_JOB_STEP_S * (count - 1 - k))
        submitted_seq = seq = seq + 1
        queued = k >= count - QUEUED_SMALL_JOBS
        failed = not queued and k % FAILED_SMALL_JOB_EVERY == FAILED_SMALL_JOB_EVERY // 2
        worker = WORKERS[2 + k % 2]
        tasks, attempts, seq = _small_job_rows(
            job_id, submitted, seq, queued=queued, failed=failed, worker=worker
        )
        small.tasks.extend(tasks)
        small.attempts.extend(attempts)
        name = f"small-{k}"
        if queued:
            small.jobs.append(
                _job_row(
                    job_id,
                    name,
                    queue,
                    status="queued",
                    tasks=SMALL_JOB_TASKS,
                    submitted=submitted,
                    submitted_seq=submitted_seq,
                    seq=submitted_seq,
                )
            )
            continue
        seq += 1  # job.completed or job.failed
        small.dead_letters += failed
        small.succeeded[worker] += SMALL_JOB_TASKS - failed
        small.failed[worker] += MAX_ATTEMPTS * failed
        small.jobs.append(
            _job_row(
                job_id,
                name,
                queue,
                status="failed" if failed else "completed",
                tasks=SMALL_JOB_TASKS,
                submitted=submitted,
                submitted_seq=submitted_seq,
                seq=seq,
                started=submitted + TASK_DURATION,
                finished=submitted + timedelta(seconds=0.1 * SMALL_JOB_TASKS),
            )
        )
    small.last_seq = seq
    return small


def _big_job_row(job: _BigJob) -> Row:
    return _job_row(
        job.job_id,
        "bench-api-big",
        BIG_QUEUE,
        status="running",
        tasks=job.tasks,
        submitted=job.submitted_at,
        submitted_seq=job.first_seq,
        seq=job.seq(job.finished + job.running - 1),
        started=job.submitted_at + timedelta(seconds=0.5),
    )


def _worker_rows(small: _SmallJobs, big: _BigJob, at: datetime) -> list[Row]:
    """The workers that ran the tasks, their counters summed as the projector sums them: two
    active (holding the big job's running tasks), one stopped, one lost."""
    succeeded = dict(small.succeeded)
    failed = dict(small.failed)
    for index in range(big.finished):
        if big.dead(index):
            failed[big.worker(index)] += MAX_ATTEMPTS
        else:
            succeeded[big.worker(index)] += 1
    states = ("active", "active", "stopped", "lost")
    rows: list[Row] = []
    for n, (worker, state) in enumerate(zip(WORKERS, states, strict=True)):
        last_seen = at if state == "active" else at - timedelta(hours=1)
        stopped = last_seen if state == "stopped" else None
        queues = [*SMALL_QUEUES, BIG_QUEUE]
        rows.append(
            (
                *(worker, "bench-host", 1000 + n, queues, 64, "0.1.0", state),
                *(at - timedelta(days=1), last_seen, stopped, succeeded[worker], failed[worker]),
                big.seq(big.finished + big.running - 1),
            )
        )
    return rows


def _chunks(total: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, COPY_ROWS):
        yield start, min(total, start + COPY_ROWS)


async def _copy(
    pool: asyncpg.Pool, schema: str, table: str, columns: Sequence[str], rows: Iterator[Row]
) -> None:
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(table, records=rows, columns=columns, schema_name=schema)


BigRows = Callable[[_BigJob, int, int], Iterator[Row]]


async def _copy_big(
    pool: asyncpg.Pool,
    schema: str,
    job: _BigJob,
    table: str,
    columns: Sequence[str],
    make: BigRows,
) -> None:
    """One table's rows of the big job, COPY by COPY (rows made as they are sent)."""
    async with pool.acquire() as conn:
        for start, stop in _chunks(job.tasks):
            await conn.copy_records_to_table(
                table, records=list(make(job, start, stop)), columns=columns, schema_name=schema
            )


async def _copy_all(
    pool: asyncpg.Pool, schema: str, small: _SmallJobs, big: _BigJob, now: datetime
) -> None:
    """The big job's tables side by side (a connection each), then the small ones."""
    await asyncio.gather(
        _copy(pool, schema, "jobs", _JOB_COLUMNS, iter([*small.jobs, _big_job_row(big)])),
        _copy_big(pool, schema, big, "tasks", _TASK_COLUMNS, _big_task_rows),
        _copy_big(pool, schema, big, "attempt_rows", _ATTEMPT_COLUMNS, _big_attempt_rows),
    )
    batches = [
        (big.job_id, first, min(BATCH_TASKS, big.tasks - first), big.first_seq + 1 + n, True)
        for n, first in enumerate(range(0, big.tasks, BATCH_TASKS))
    ]
    small_tables = (
        ("tasks", _TASK_COLUMNS, small.tasks),
        ("attempt_rows", _ATTEMPT_COLUMNS, small.attempts),
        ("job_batches", _BATCH_COLUMNS, batches),
        ("workers", _WORKER_COLUMNS, _worker_rows(small, big, now)),
    )
    await asyncio.gather(
        *(_copy(pool, schema, table, cols, iter(rows)) for table, cols, rows in small_tables)
    )


async def seed(
    database_url: str, schema: str, *, small_jobs: int, big_job_tasks: int
) -> SeedResult:
    """A fresh `schema` (dropped first if there), migrated, then the rows; VACUUM ANALYZE after,
    as autovacuum would have left the tables of a system that has been running a while."""
    now = datetime.now(UTC)
    big_submitted = now - timedelta(seconds=BIG_JOB_AGE_S)
    small = _small_jobs(small_jobs, newest_at=big_submitted - timedelta(seconds=1))
    big = _BigJob(
        job_id=new_id(),
        tasks=big_job_tasks,
        submitted_at=big_submitted,
        first_seq=small.last_seq + 1,
    )
    pool: asyncpg.Pool = await asyncpg.create_pool(database_url, min_size=4, max_size=4)
    try:
        await pool.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        async with pool.acquire() as conn:
            await migrate(conn, schema)
        started = time.monotonic()
        await _copy_all(pool, schema, small, big, now)
        copy_s = time.monotonic() - started
        started = time.monotonic()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
            await conn.execute("SELECT recount_read_model()")
        recount_s = time.monotonic() - started
        started = time.monotonic()
        tables = ("jobs", "tasks", "attempt_rows", "workers", "job_batches")
        for table in (*tables, "stats_per_minute", "job_status_counts"):
            await pool.execute(f"VACUUM ANALYZE {quote_ident(schema)}.{quote_ident(table)}")
        vacuum_s = time.monotonic() - started
    finally:
        await pool.close()
    big_dead = sum(1 for index in range(big.finished) if big.dead(index))
    big_attempts = (big.finished - big_dead) + MAX_ATTEMPTS * big_dead + big.running
    return SeedResult(
        jobs=small_jobs + 1,
        tasks=len(small.tasks) + big.tasks,
        results=sum(row[_STATE] in ("succeeded", "dead_lettered") for row in small.tasks)
        + big.finished,
        attempts=len(small.attempts) + sum(small.succeeded.values()) + big_attempts,
        dead_letters=small.dead_letters + big_dead,
        big_job_id=big.job_id,
        big_job_tasks=big.tasks,
        sample_task_ids=[
            task_id_for(big.job_id, 0),
            task_id_for(big.job_id, big.finished // 2),
            task_id_for(big.job_id, big.finished - 1),
        ],
        copy_s=round(copy_s, 2),
        recount_s=round(recount_s, 2),
        vacuum_s=round(vacuum_s, 2),
    )
