"""Dead letters: listed from the read model, requeued through the log, finished once."""

import asyncio
from collections.abc import Mapping
from typing import Any

import asyncpg
import pytest

from jobstream.cli._dlq import list_dead_letters, retry_dead_letters
from jobstream.events import (
    Bus,
    JobCompleted,
    JobFailed,
    JobstreamError,
    JobSubmitted,
    TaskRequeued,
    TaskSpec,
    TaskSucceeded,
    new_id,
)
from jobstream.projections import PostgresProjector, checkpoint
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import HandlerRegistry, TaskContext, Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import read_log, running, wait_for_job_end

BROKEN = {"on": True}


async def sometimes_broken(args: Mapping[str, Any], ctx: TaskContext) -> str:
    if BROKEN["on"]:
        raise RuntimeError("downstream is down")
    return "fixed"


async def projected(bus: Bus, pool: asyncpg.Pool) -> None:
    last = await bus.stream_last_seq()
    while await checkpoint(pool) < last:
        await asyncio.sleep(0.05)


async def test_dead_letter_retry_finishes_the_task_and_reopens_the_job(
    bus: Bus, database_url: str
) -> None:
    registry = HandlerRegistry.default()
    registry.add("sometimes_broken", sometimes_broken)
    options = WorkerOptions(lease_s=5, retry_base_s=0.01, retry_cap_s=0.02)
    job = JobSubmitted(
        job_id=new_id(),
        tasks=[TaskSpec(kind="sometimes_broken", count=2), TaskSpec(kind="noop")],
        max_attempts=2,
        priority=-1,
    )
    BROKEN["on"] = True
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=3, server_settings={"search_path": "jobstream"}
    )
    try:
        async with running(
            Dispatcher(bus, lease_s=5).run,
            Worker(bus, options=options, handlers=registry).run,
            PostgresProjector(bus, pool).run,
        ):
            await bus.publish_event(job)
            assert isinstance(await wait_for_job_end(bus, job.job_id), JobFailed)
            await asyncio.wait_for(projected(bus, pool), 10)
            async with pool.acquire() as conn:
                listed = await list_dead_letters(conn, job_id=job.job_id, limit=10)
                assert sorted(str(row["task_id"]) for row in listed) == [
                    f"{job.job_id}-0",
                    f"{job.job_id}-1",
                ]
                assert all(row["attempts"] == 2 for row in listed)

                BROKEN["on"] = False
                outcome = await retry_dead_letters(bus, conn, target=job.job_id, retry_all=False)
                assert len(outcome.requeued) == 2 and not outcome.skipped
                # A second retry finds nothing dead-lettered in the log any more.
                again = await retry_dead_letters(bus, conn, target=job.job_id, retry_all=False)
                assert not again.requeued

            async def completed() -> None:
                while not any(
                    isinstance(e, JobCompleted) and e.job_id == job.job_id
                    for e in await read_log(bus)
                ):
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(completed(), 20)
            await asyncio.wait_for(projected(bus, pool), 10)
            async with pool.acquire() as conn:
                status = await conn.fetchval(
                    "SELECT status FROM jobs WHERE job_id = $1", job.job_id
                )
                states = await conn.fetch(
                    "SELECT task_id, state, attempts FROM tasks WHERE job_id = $1", job.job_id
                )
                results = await conn.fetch(
                    "SELECT status FROM results WHERE job_id = $1", job.job_id
                )
                assert not await list_dead_letters(conn, job_id=job.job_id, limit=10)
    finally:
        await pool.close()
    assert status == "completed"
    assert {row["state"] for row in states} == {"succeeded"}
    assert {row["attempts"] for row in states if not row["task_id"].endswith("-2")} == {3}
    assert [row["status"] for row in results] == ["succeeded"] * 3
    log = await read_log(bus)
    requeued = [e for e in log if isinstance(e, TaskRequeued)]
    assert [e.priority for e in requeued] == [-1, -1]  # queued again at the job's level
    succeeded = [e for e in log if isinstance(e, TaskSucceeded)]
    assert len(succeeded) == len({e.task_id for e in succeeded}) == 3


async def test_retry_needs_a_target(bus: Bus, database_url: str) -> None:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "jobstream"})
    try:
        with pytest.raises(JobstreamError, match="--all"):
            await retry_dead_letters(bus, conn, target=None, retry_all=False)
        with pytest.raises(JobstreamError, match="no dead-lettered task"):
            await retry_dead_letters(bus, conn, target="01NOPE", retry_all=False)
    finally:
        await conn.close()
