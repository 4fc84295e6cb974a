"""SIGKILL the projector process mid-batch, 20 times at random points: the read models end
identical to a fresh replay, and the NDJSON files hold each finished task exactly once. With
two partitions, one of the two projector processes is killed each time, at random: the read
models end identical to a replay into one partition and to one into two."""

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobstream.events import Bus, JobSubmitted, TaskFailed, TaskSpec, TaskSucceeded, task_id_for
from jobstream.projections import Connections, last_written_seq, partition_of, replay_postgres
from tests.faults._harness import (
    Processes,
    ndjson_task_counts,
    wait_for,
    wait_until_projected,
)
from tests.integration.test_replay import TABLES, table_rows
from tests.integration.test_replay_fold import merged_tables

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


# Jobs of both partitions of two (`partition_of`): KILLS-d is partition 0's, KILLS-a 1's.
JOBS = {1: ["KILLS"], 2: ["KILLS-a", "KILLS-d"]}


async def publish_workload(bus: Bus, job_ids: list[str]) -> None:
    """TASKS tasks over `job_ids`, their events interleaved."""
    per_job = TASKS // len(job_ids)
    for job_id in job_ids:
        await bus.publish_event(
            JobSubmitted(job_id=job_id, tasks=[TaskSpec(kind="sum", count=per_job)])
        )
    events: list[TaskFailed | TaskSucceeded] = []
    for index in range(TASKS):
        job_id = job_ids[index % len(job_ids)]
        task_id = task_id_for(job_id, index // len(job_ids))
        if index % 10 == 0:
            events.append(
                TaskFailed(job_id=job_id, task_id=task_id, worker_id="w1", attempt=1, error="boom")
            )
        kind, result = _kind_and_result(index)
        events.append(
            TaskSucceeded(
                job_id=job_id,
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


async def checkpoint_of(database_url: str, name: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval(
            "SELECT last_seq FROM jobstream.projection_checkpoints WHERE projection = $1", name
        )
    finally:
        await conn.close()
    return int(value or 0)


@pytest.mark.faults
@pytest.mark.parametrize("partitions", [1, 2])
async def test_projector_sigkilled_twenty_times(
    bus: Bus, nats_url: str, database_url: str, tmp_path: Path, partitions: int
) -> None:
    url = nats_url
    data = tmp_path / "data"
    results = data / "results"
    rng = random.Random(20)
    job_ids = JOBS[partitions]
    assert {partition_of(job_id, partitions) for job_id in job_ids} == set(range(partitions))
    await publish_workload(bus, job_ids)
    last = await bus.stream_last_seq()
    mid_batch_kills = 0
    names = ["postgres"] if partitions == 1 else [f"postgres/{i}-of-2" for i in range(2)]
    with Processes(tmp_path / "logs") as procs:

        def start(index: int) -> Any:
            return procs.projector(
                url,
                database_url=database_url,
                data_dir=data,
                partition=index,
                partitions=partitions,
            )

        running = {index: start(index) for index in range(partitions)}
        for round_number in range(KILLS):
            # A partition that reached the log's end has nothing left to be killed in.
            behind = [
                index
                for index in range(partitions)
                if await checkpoint_of(database_url, names[index]) < last
            ]
            victim = rng.choice(behind)
            if victim not in running:
                running[victim] = start(victim)
            before = await checkpoint_of(database_url, names[victim])

            async def progressed(before: int = before, name: str = names[victim]) -> bool:
                return await checkpoint_of(database_url, name) > before

            await wait_for(progressed, timeout_s=30, what=f"progress in round {round_number}")
            await asyncio.sleep(rng.uniform(0.0, 0.08))
            running.pop(victim).kill()
            mid_batch_kills += await checkpoint_of(database_url, names[victim]) < last
            for index in set(range(partitions)) - set(running):
                if index != victim:
                    running[index] = start(index)
        for index in set(range(partitions)) - set(running):
            running[index] = start(index)
        await wait_until_projected(bus, database_url, timeout_s=90)

        async def all_lines() -> bool:
            return await asyncio.to_thread(last_written_seq, results) >= last

        await wait_for(all_lines, timeout_s=60, what="every NDJSON line")
    assert mid_batch_kills >= KILLS - 2, "the projector finished before it could be killed"
    await _check_read_models(bus, url, database_url, partitions)
    lines: dict[str, int] = {}
    for job_id in job_ids:
        lines |= ndjson_task_counts(results, job_id)
    assert len(lines) == TASKS and set(lines.values()) == {1}


async def _check_read_models(bus: Bus, nats_url: str, database_url: str, partitions: int) -> None:
    """The read models are a replay's into the same layout, and, merged, into one partition;
    each task counted once."""
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=8)
    try:
        same_layout = await replay_postgres(
            bus,
            pool,
            swap=False,
            partitions=partitions,
            connections=Connections([nats_url], database_url),
        )
        one = await replay_postgres(bus, pool, swap=False)
        async with pool.acquire() as conn:
            for table in TABLES:
                live = await table_rows(conn, "jobstream", table)
                assert await table_rows(conn, same_layout.schema, table) == live, table
            live_merged = await merged_tables(conn, "jobstream")
            assert await merged_tables(conn, one.schema) == live_merged
            results_rows = await conn.fetchval("SELECT count(*) FROM jobstream.results")
            crawled = await conn.fetchrow(
                "SELECT sum(pages_done) AS pages, sum(broken_links) AS broken,"
                " sum(bytes) AS bytes FROM jobstream.crawl_stats"
            )
            workers = await conn.fetch(
                "SELECT worker_id, tasks_succeeded, tasks_failed FROM jobstream.worker_summary"
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
