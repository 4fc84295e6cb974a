"""Replay rebuilds identical read models and NDJSON files from the log (DESIGN §7.5)."""

import asyncio
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from jobstream.cli._jobs import cancel_job
from jobstream.events import (
    Bus,
    JobSubmitted,
    TaskSpec,
    WorkerLost,
    WorkerStarted,
    new_id,
)
from jobstream.projections import (
    NdjsonProjector,
    PostgresProjector,
    caught_up,
    checkpoint,
    last_written_seq,
    replay_ndjson,
    replay_postgres,
    replay_stdout,
)
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import HandlerRegistry, TaskContext, Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import read_log, running, wait_for_job_end

# Columns a replay may legitimately change: when a row was written, not what it says.
VOLATILE = {
    "projection_checkpoints": {"updated_at", "writer", "prior_writer"},
    "rejected_events": {"seen_at"},
}
TABLES = {
    "jobs": "job_id",
    "tasks": "task_id",
    "task_attempts": "task_id, attempt",
    "attempt_rows": "task_id, attempt",
    "workers": "worker_id, partition",
    "results": "task_id",
    "rejected_events": "seq",
    "job_batches": "job_id, first_index",
    "projection_checkpoints": "projection",
    "projection_layouts": "projection",
    "crawl_stats": "job_id, pass, domain",
    "stats_per_minute": "minute, queue, kind, partition",
    "job_status_counts": "status, partition",
}


async def table_rows(conn: asyncpg.Connection, schema: str, table: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(f'SELECT * FROM "{schema}".{table} ORDER BY {TABLES[table]}')
    return [
        {k: v for k, v in dict(row).items() if k not in VOLATILE.get(table, set())} for row in rows
    ]


async def report_half(args: Mapping[str, Any], ctx: TaskContext) -> None:
    ctx.progress(0.5, "half")
    await asyncio.sleep(0.3)


async def mixed_workload(bus: Bus) -> None:
    """Successes, retries, dead letters, progress reports, a chunked job, a cancel, a lost
    worker and a malformed event."""
    options = WorkerOptions(lease_s=1, retry_base_s=0.01, retry_cap_s=0.02)
    handlers = HandlerRegistry.default()
    handlers.add("report", report_half)
    worker = Worker(bus, options=options, handlers=handlers)
    async with running(Dispatcher(bus, lease_s=0.5).run, worker.run):
        jobs = [
            JobSubmitted(
                job_id=new_id(),
                tasks=[
                    TaskSpec(kind="sum", args={"a": 1, "b": 2}, count=50),
                    TaskSpec(kind="fail", args={"succeed_on_attempt": 2}, count=5),
                    TaskSpec(kind="fail", args={"message": "no"}, count=3),
                ],
            ),
            JobSubmitted(
                job_id=new_id(),
                tasks=[TaskSpec(kind="noop", count=20), TaskSpec(kind="report", count=2)],
            ),
            JobSubmitted(
                job_id=new_id(),
                chunk_size=7,
                max_attempts=2,
                tasks=[
                    TaskSpec(kind="sum", args={"a": 2, "b": 2}, count=20),
                    TaskSpec(kind="fail", args={"succeed_on_attempt": 2}, count=2),
                    TaskSpec(kind="fail", args={"message": "no"}),
                    TaskSpec(kind="sum", args={"a": "two", "b": 2}),
                ],
            ),
        ]
        for job in jobs:
            await bus.publish_event(job)
        cancelled = JobSubmitted(
            job_id=new_id(), tasks=[TaskSpec(kind="sleep", args={"seconds": 30}, count=3)]
        )
        await bus.publish_event(cancelled)
        ghost = WorkerStarted(
            worker_id="ghost", host="h", pid=1, queues=["default"], concurrency=1, version="0"
        )
        await bus.publish_event(ghost)
        await bus.js.publish("evt.task.bad.bad", b"{not json")
        for job in jobs:
            await wait_for_job_end(bus, job.job_id)
        await asyncio.sleep(0.3)
        await cancel_job(bus, cancelled.job_id)

        async def settled() -> bool:
            log = await read_log(bus)
            return any(isinstance(e, WorkerLost) and e.worker_id == "ghost" for e in log)

        while not await settled():
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)


async def test_replay_rebuilds_identical_read_models_and_files(
    bus: Bus, database_url: str, tmp_path: Path
) -> None:
    await mixed_workload(bus)
    results_dir = tmp_path / "results"
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        last = await bus.stream_last_seq()
        async with running(PostgresProjector(bus, pool).run, NdjsonProjector(bus, results_dir).run):
            while not await caught_up(pool, last) or last_written_seq(results_dir) == 0:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        live_files = {p.name: p.read_bytes() for p in results_dir.glob("results-*.ndjson")}

        for bulk in (True, False):
            report = await replay_postgres(bus, pool, swap=False, bulk=bulk)
            assert report.events == last and report.schema != "jobstream"
            async with pool.acquire() as conn:
                for table in TABLES:
                    live = await table_rows(conn, "jobstream", table)
                    rebuilt = await table_rows(conn, report.schema, table)
                    assert rebuilt == live, (table, "bulk" if bulk else "by the projector")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM jobstream.rejected_events") == 1
            statuses = await conn.fetch("SELECT status FROM jobstream.jobs ORDER BY status")
            assert [r["status"] for r in statuses] == ["cancelled", "completed", "failed", "failed"]
            reported = await conn.fetch(
                "SELECT state, progress, progress_message FROM jobstream.tasks"
                " WHERE progress IS NOT NULL"
            )
            assert [tuple(row) for row in reported] == [("succeeded", 0.5, "half")] * 2

        ndjson = await replay_ndjson(bus, results_dir)
        rebuilt_files = {p.name: p.read_bytes() for p in results_dir.glob("results-*.ndjson")}
        assert ndjson.files == len(live_files) >= 1
        assert rebuilt_files == live_files
    finally:
        await pool.close()


async def test_replay_swaps_while_the_api_schema_keeps_its_name(
    bus: Bus, database_url: str
) -> None:
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=3)])
    await bus.publish_event(job)
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        async with running(PostgresProjector(bus, pool).run) as _:
            while await checkpoint(pool) < 1:
                await asyncio.sleep(0.05)
            progress: list[tuple[int, int]] = []
            report = await replay_postgres(
                bus, pool, on_progress=lambda done, total: progress.append((done, total))
            )
            assert report.schema == "jobstream" and report.replaced_schema is None
            assert progress[-1] == (1, 1)
            # The live projector goes on in the swapped-in schema.
            second = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")])
            await bus.publish_event(second)
            while await checkpoint(pool) < 2:
                await asyncio.sleep(0.05)
        async with pool.acquire() as conn:
            jobs = await conn.fetchval("SELECT count(*) FROM jobstream.jobs")
            schemas = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'jobstream%'"
            )
        assert jobs == 2
        assert [r["nspname"] for r in schemas] == ["jobstream"]
    finally:
        await pool.close()


async def test_replay_to_stdout_filters_one_job(bus: Bus) -> None:
    one = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")])
    other = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")])
    await bus.publish_event(one)
    await bus.publish_event(other)
    out = io.BytesIO()
    report = await replay_stdout(bus, out, job_id=one.job_id)
    lines: list[Mapping[str, Any]] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert report.events == 1
    assert [(x["type"], x["job_id"]) for x in lines] == [("job.submitted", one.job_id)]
