"""The counts the projector keeps (migrations 008 and 010) against the scans they replace (issue
14): after a run with retries, dead letters, a requeue, a cancel, a chunked and a streamed job,
each job's counts are the GROUP BY over its task rows, `/stats` reads from `stats_per_minute`
what the scan of `results` gave (percentiles within the histogram's 5%), the jobs by status
(`job_status_counts`, which `/metrics` shows) are the GROUP BY over the jobs, and the
migrations' recount of the rows (run on read models written before them) gives the very rows
the projector kept."""

import asyncio
import re
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from jobstream.cli._dlq import retry_dead_letters
from jobstream.cli._jobs import cancel_job
from jobstream.cli._stream import stream_job
from jobstream.events import (
    TASK_COUNT_COLUMNS,
    Bus,
    JobRejected,
    JobSubmitted,
    TaskDeadLettered,
    TaskSpec,
    job_subject,
    new_id,
)
from jobstream.projections import PostgresProjector, caught_up, migrate
from jobstream.services.api import create_app
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import HandlerRegistry, Worker, WorkerOptions
from tests.integration.test_api import _serve, get_ok
from tests.integration.test_worker_dispatcher import read_log, running, wait_for_job_end

# The scans /stats made before the per-minute sums (services/api/ops.sql before migration 008),
# over the whole log's window.
OLD_BUCKETS = """
    SELECT date_bin('1 minute', r.finished_at, $1::timestamptz) AS at,
           count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE r.status = 'dead_lettered') AS failed
    FROM results AS r
    WHERE r.finished_at >= $1::timestamptz AND r.finished_at < $2::timestamptz
    GROUP BY 1 ORDER BY 1"""
OLD_DURATIONS = """
    SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]::float8[]) WITHIN GROUP (ORDER BY r.duration_s)
    FROM results AS r
    WHERE r.finished_at >= $1::timestamptz AND r.finished_at < $2::timestamptz
      AND r.status = 'succeeded'"""
OLD_BY_QUEUE_KIND = """
    SELECT coalesce(j.queue, '') AS queue, r.kind,
           count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE r.status = 'dead_lettered') AS failed,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_s)
               FILTER (WHERE r.status = 'succeeded') AS p50_s,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY r.duration_s)
               FILTER (WHERE r.status = 'succeeded') AS p99_s
    FROM results AS r
    LEFT JOIN jobs AS j ON j.job_id = r.job_id
    WHERE r.finished_at >= $1::timestamptz AND r.finished_at < $2::timestamptz
    GROUP BY 1, 2
    ORDER BY count(*) DESC, 1, 2"""
# What /metrics counted before migration 010.
JOBS_BY_STATUS = "SELECT status, count(*) AS n FROM jobs GROUP BY status"
KEPT_BY_STATUS = "SELECT status, sum(jobs) AS n FROM job_status_counts GROUP BY status"
# The rows of the statuses jobs are in (the projector keeps a row a status's last job left).
STATUS_ROWS = "SELECT * FROM job_status_counts WHERE jobs <> 0 ORDER BY status, partition"
GAUGE = re.compile(r'^jobstream_jobs\{status="([a-z_]+)"\} (\S+)$', re.MULTILINE)
GROUPED = """
    SELECT j.job_id, t.state, count(t.task_id) AS n
    FROM jobs AS j LEFT JOIN tasks AS t USING (job_id)
    GROUP BY 1, 2"""
# The histogram's bucket middles are within 4.9% of the durations in them; a duration under
# 1 µs counts as 1 µs.
REL = 0.05
ABS_S = 2e-6


def _sleep(seconds: float, count: int) -> TaskSpec:
    return TaskSpec(kind="sleep", args={"seconds": seconds}, count=count)


async def _workload(bus: Bus, pool: asyncpg.Pool) -> dict[str, str]:
    """Jobs of every kind of ending, projected as they run; the job ids by role."""
    options = WorkerOptions(lease_s=1, retry_base_s=0.01, retry_cap_s=0.02)
    worker = Worker(bus, options=options, handlers=HandlerRegistry.default())
    mixed = JobSubmitted(
        job_id=new_id(),
        queue="default",
        tasks=[
            _sleep(0.01, 10),
            _sleep(0.03, 10),
            _sleep(0.1, 5),
            TaskSpec(kind="fail", args={"succeed_on_attempt": 2}, count=4),
            TaskSpec(kind="fail", args={"message": "no"}, count=2),
        ],
    )
    chunked = JobSubmitted(
        job_id=new_id(),
        chunk_size=4,
        max_attempts=2,
        tasks=[
            TaskSpec(kind="sum", args={"a": 1, "b": 2}, count=10),
            TaskSpec(kind="fail", args={"succeed_on_attempt": 2}),
            TaskSpec(kind="fail", args={"message": "no"}),
        ],
    )
    streamed = JobSubmitted(job_id=new_id(), tasks=[], sealed=False)
    cancelled = JobSubmitted(job_id=new_id(), tasks=[_sleep(30, 3)])
    projector = PostgresProjector(bus, pool, batch_max=7)
    async with running(Dispatcher(bus, lease_s=0.5).run, worker.run, projector.run):
        await bus.publish_event(mixed)
        await bus.publish_event(chunked)
        await stream_job(
            bus,
            streamed,
            (_sleep(0.02, 1) for _ in range(60)),
            start=None,
            on_sent=lambda _: None,
        )
        await bus.publish_event(cancelled)
        for job in (mixed, chunked, streamed):
            await wait_for_job_end(bus, job.job_id)
        await cancel_job(bus, cancelled.job_id)
        await _caught_up(bus, pool)
        async with pool.acquire() as conn:
            await conn.execute("SET search_path TO jobstream")
            dead = f"{mixed.job_id}-{mixed.task_count - 1}"
            outcome = await retry_dead_letters(bus, conn, target=dead, retry_all=False)
            assert outcome.requeued == [dead]
        await _dead_lettered_twice(bus, dead)
        await wait_for_job_end(bus, mixed.job_id)
        await asyncio.sleep(0.5)
        await _caught_up(bus, pool)
    return {
        "mixed": mixed.job_id,
        "chunked": chunked.job_id,
        "streamed": streamed.job_id,
        "cancelled": cancelled.job_id,
    }


async def _caught_up(bus: Bus, pool: asyncpg.Pool) -> None:
    last = await bus.stream_last_seq()
    while not await caught_up(pool, last):
        await asyncio.sleep(0.05)


async def _dead_lettered_twice(bus: Bus, task_id: str) -> None:
    while True:
        log = await read_log(bus)
        if sum(isinstance(e, TaskDeadLettered) and e.task_id == task_id for e in log) == 2:
            return
        await asyncio.sleep(0.1)


async def _kept(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    columns = ", ".join(TASK_COUNT_COLUMNS.values())
    rows = await conn.fetch(f"SELECT job_id, {columns} FROM jobs")
    return {
        row["job_id"]: {state: row[column] for state, column in TASK_COUNT_COLUMNS.items()}
        for row in rows
    }


async def _grouped(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in await conn.fetch(GROUPED):
        job = counts.setdefault(row["job_id"], dict.fromkeys(TASK_COUNT_COLUMNS, 0))
        if row["state"] is not None:
            job[row["state"]] = row["n"]
    return counts


def _close(kept: float | None, scanned: float | None) -> bool:
    if kept is None or scanned is None:
        return kept is scanned
    return kept == pytest.approx(scanned, rel=REL, abs=ABS_S)


async def test_kept_counts_are_what_the_scans_gave(bus: Bus, database_url: str) -> None:
    pool = await asyncpg.create_pool(
        database_url, min_size=2, max_size=4, server_settings={"search_path": "jobstream"}
    )
    try:
        jobs = await _workload(bus, pool)
        async with pool.acquire() as conn:
            kept = await _kept(conn)
            assert kept == await _grouped(conn)
            states = {role: kept[job_id] for role, job_id in jobs.items()}
            assert states["mixed"]["dead_lettered"] == 2  # one of them requeued and dead again
            assert states["chunked"]["dead_lettered"] == 1
            assert states["streamed"]["succeeded"] == 60
            assert states["cancelled"]["cancelled"] + states["cancelled"]["running"] == 3
            stats_rows = await conn.fetch("SELECT * FROM stats_per_minute ORDER BY 1, 2, 3, 4")
            assert {row["partition"] for row in stats_rows} == {0}

        async with _serve(create_app(database_url=database_url)) as client:
            body: dict[str, Any] = await get_ok(client, "/stats", window_s=3600)
        since, until = (datetime.fromisoformat(body[key]) for key in ("since", "until"))
        async with pool.acquire() as conn:
            old_buckets = {
                row["at"]: (row["succeeded"], row["failed"])
                for row in await conn.fetch(OLD_BUCKETS, since, until)
            }
            old_durations = await conn.fetchval(OLD_DURATIONS, since, until)
            old_by_queue_kind = await conn.fetch(OLD_BY_QUEUE_KIND, since, until)
        new_buckets = {
            datetime.fromisoformat(b["at"]): (b["succeeded"], b["failed"])
            for b in body["buckets"]
            if b["succeeded"] or b["failed"]
        }
        assert new_buckets == old_buckets
        assert sum(failed for _, failed in new_buckets.values()) == 3  # the requeued one once
        new_durations = [body["durations"][key] for key in ("p50_s", "p90_s", "p99_s")]
        assert all(map(_close, new_durations, old_durations)), (new_durations, old_durations)
        assert len(body["by_queue_kind"]) == len(old_by_queue_kind) == 3  # sleep, fail, sum
        for new, old in zip(body["by_queue_kind"], old_by_queue_kind, strict=True):
            assert (new["queue"], new["kind"], new["succeeded"], new["failed"]) == (
                old["queue"],
                old["kind"],
                old["succeeded"],
                old["failed"],
            )
            assert _close(new["p50_s"], old["p50_s"]), (new, dict(old))
            assert _close(new["p99_s"], old["p99_s"]), (new, dict(old))

        async with pool.acquire() as conn:
            await conn.execute("SELECT recount_read_model()")  # migration 008's backfill
            assert await _kept(conn) == kept
            recounted = await conn.fetch("SELECT * FROM stats_per_minute ORDER BY 1, 2, 3, 4")
            assert [dict(row) for row in recounted] == [dict(row) for row in stats_rows]

            # Read models written before migration 008: it counts them when it runs.
            zeros = ", ".join(f"{column} = 0" for column in TASK_COUNT_COLUMNS.values())
            await conn.execute(f"UPDATE jobs SET {zeros}")
            await conn.execute("DELETE FROM stats_per_minute")
            await conn.execute("DELETE FROM schema_migrations WHERE version = 8")
            assert await migrate(conn, "jobstream") == ["008_kept_counts.sql"]
            assert await _kept(conn) == kept
            migrated = await conn.fetch("SELECT * FROM stats_per_minute ORDER BY 1, 2, 3, 4")
            assert [dict(row) for row in migrated] == [dict(row) for row in stats_rows]
    finally:
        await pool.close()


async def _rejected(bus: Bus, job_id: str) -> None:
    while True:
        last = await bus.last_on_subject(job_subject(job_id))
        if last is not None and isinstance(last[1], JobRejected):
            return
        await asyncio.sleep(0.05)


async def _by_status(conn: asyncpg.Connection, sql: str) -> dict[str, int]:
    return {row["status"]: row["n"] for row in await conn.fetch(sql) if row["n"]}


async def test_kept_jobs_by_status_are_what_the_count_gave(bus: Bus, database_url: str) -> None:
    pool = await asyncpg.create_pool(
        database_url, min_size=2, max_size=4, server_settings={"search_path": "jobstream"}
    )
    try:
        await _workload(bus, pool)
        # A job no worker serves, and a submission the dispatcher cannot read: its job's row
        # is made by its job.rejected.
        waiting = JobSubmitted(job_id=new_id(), queue="nobody", tasks=[_sleep(0.01, 2)])
        unreadable = new_id()
        async with running(Dispatcher(bus, lease_s=0.5).run, PostgresProjector(bus, pool).run):
            await bus.publish_event(waiting)
            await bus.js.publish(job_subject(unreadable), b'{"type": "job.submitted"}')
            await _rejected(bus, unreadable)
            await _caught_up(bus, pool)

        async with pool.acquire() as conn:
            grouped = await _by_status(conn, JOBS_BY_STATUS)
            assert grouped == {
                "failed": 2,  # mixed (its requeued task dead again), chunked
                "completed": 1,  # streamed
                "cancelled": 1,
                "queued": 1,  # waiting
                "rejected": 1,  # unreadable
            }
            assert await _by_status(conn, KEPT_BY_STATUS) == grouped
            kept_rows = [dict(row) for row in await conn.fetch(STATUS_ROWS)]
            assert {row["partition"] for row in kept_rows} == {0}

        async with _serve(create_app(database_url=database_url)) as client:
            response = await client.get("/metrics")
        assert response.status_code == 200, response.text
        gauges = {status: float(value) for status, value in GAUGE.findall(response.text)}
        assert gauges == {status: float(jobs) for status, jobs in grouped.items()}

        async with pool.acquire() as conn:
            await conn.execute("SELECT recount_read_model()")  # migration 010's backfill
            assert [dict(row) for row in await conn.fetch(STATUS_ROWS)] == kept_rows

            # Read models written before migration 010: it counts their jobs when it runs.
            await conn.execute("DROP TABLE job_status_counts")
            await conn.execute("DELETE FROM schema_migrations WHERE version = 10")
            assert await migrate(conn, "jobstream") == ["010_job_status_counts.sql"]
            assert [dict(row) for row in await conn.fetch(STATUS_ROWS)] == kept_rows
    finally:
        await pool.close()
