"""SIGKILL the projector process mid-batch, 20 times at random points: the read models end
identical to a fresh replay, and the NDJSON files hold each finished task exactly once."""

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobstream.events import Bus, JobSubmitted, TaskFailed, TaskSpec, TaskSucceeded, task_id_for
from jobstream.projections import last_written_seq, replay_postgres
from tests.faults._harness import (
    Processes,
    ndjson_task_counts,
    projected_up_to,
    wait_for,
    wait_until_projected,
)
from tests.integration.test_replay import TABLES, table_rows

KILLS = 20
TASKS = 60_000  # enough that twenty restarts cannot finish the log
CRAWLED = TASKS // 4  # every fourth task is a crawled page: its crawl_stats counted once


def _kind_and_result(index: int) -> tuple[str, Any]:
    if index % 4 != 1:
        return "sum", {"sum": index + 1}
    url = f"https://d{index % 3}.example/{index}"
    return "http.warm", {
        "url": url,
        "domain": f"d{index % 3}.example",
        "pass": 1,
        "status": 404 if index % 20 == 1 else 200,
        "cache": "HIT",
        "timings_ms": {"total": float(index % 5000)},
        "bytes": 100,
        "redirects": [],
        "warm": None,
        "time_saved_ms": None,
    }


async def publish_workload(bus: Bus) -> str:
    job = JobSubmitted(job_id="KILLS", tasks=[TaskSpec(kind="sum", count=TASKS)])
    await bus.publish_event(job)
    events: list[TaskFailed | TaskSucceeded] = []
    for index in range(TASKS):
        task_id = task_id_for(job.job_id, index)
        if index % 10 == 0:
            events.append(
                TaskFailed(
                    job_id=job.job_id, task_id=task_id, worker_id="w1", attempt=1, error="boom"
                )
            )
        kind, result = _kind_and_result(index)
        events.append(
            TaskSucceeded(
                job_id=job.job_id,
                task_id=task_id,
                kind=kind,
                args={"a": index, "b": 1},
                worker_id="w2" if index % 10 == 0 else "w1",
                attempt=2 if index % 10 == 0 else 1,
                result=result,
                duration_s=0.001,
            )
        )
    for start in range(0, len(events), 1000):
        await asyncio.gather(*(bus.publish_event(e) for e in events[start : start + 1000]))
    return job.job_id


async def checkpoint_of(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval(
            "SELECT last_seq FROM jobstream.projection_checkpoints WHERE projection = 'postgres'"
        )
    finally:
        await conn.close()
    return int(value or 0)


@pytest.mark.faults
async def test_projector_sigkilled_twenty_times(
    bus: Bus, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    url = nats_url
    data = tmp_path / "data"
    results = data / "results"
    rng = random.Random(20)
    job_id = await publish_workload(bus)
    last = await bus.stream_last_seq()
    mid_batch_kills = 0
    with Processes(tmp_path / "logs") as procs:
        for round_number in range(KILLS):
            before = await checkpoint_of(database_url)
            projector = procs.projector(url, database_url=database_url, data_dir=data)

            async def progressed(before: int = before) -> bool:
                return await checkpoint_of(database_url) > before

            await wait_for(progressed, timeout_s=30, what=f"progress in round {round_number}")
            await asyncio.sleep(rng.uniform(0.0, 0.08))
            projector.kill()
            mid_batch_kills += not await projected_up_to(database_url, last)
        procs.projector(url, database_url=database_url, data_dir=data)
        await wait_until_projected(bus, database_url, timeout_s=60)

        async def all_lines() -> bool:
            return await asyncio.to_thread(last_written_seq, results) >= last

        await wait_for(all_lines, timeout_s=60, what="every NDJSON line")
    assert mid_batch_kills >= KILLS - 2, "the projector finished before it could be killed"

    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        rebuilt = await replay_postgres(bus, pool, swap=False)
        async with pool.acquire() as conn:
            for table in TABLES:
                live = await table_rows(conn, "jobstream", table)
                assert await table_rows(conn, rebuilt.schema, table) == live, table
            results_rows = await conn.fetchval("SELECT count(*) FROM jobstream.results")
            crawled = await conn.fetchrow(
                "SELECT sum(pages_done) AS pages, sum(broken_links) AS broken,"
                " sum(bytes) AS bytes FROM jobstream.crawl_stats"
            )
            workers = await conn.fetch(
                "SELECT worker_id, tasks_succeeded, tasks_failed FROM jobstream.workers"
                " ORDER BY worker_id"
            )
    finally:
        await pool.close()
    assert results_rows == TASKS
    assert tuple(crawled) == (CRAWLED, TASKS // 20, CRAWLED * 100)
    assert [tuple(row) for row in workers] == [
        ("w1", TASKS * 9 // 10, TASKS // 10),
        ("w2", TASKS // 10, 0),
    ]
    lines = ndjson_task_counts(results, job_id)
    assert len(lines) == TASKS and set(lines.values()) == {1}
