"""The whole path with real processes: CLI submit → log → dispatcher → queue → two worker
processes → events → PostgreSQL read model + NDJSON → API and `jobstream status`."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx

from jobstream.cli._stack import LocalStack, StackOptions
from jobstream.projections import partition_of
from jobstream.services.stack import free_port
from tests.faults._harness import ndjson_task_counts

JOBSTREAM = [sys.executable, "-m", "jobstream.cli"]


async def jobstream(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *JOBSTREAM, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def wait_until_finished(conn: asyncpg.Connection, job_id: str, timeout_s: float) -> str:
    async def poll() -> str:
        while True:
            status = await conn.fetchval(
                "SELECT status FROM jobstream.jobs WHERE job_id = $1", job_id
            )
            if status in ("completed", "failed", "cancelled"):
                return str(status)
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(poll(), timeout_s)


async def test_thousand_tasks_over_two_worker_processes(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    options = StackOptions(
        data_dir=tmp_path / "data",
        nats_url=nats_url,
        database_url=database_url,
        api_port=free_port(),
        workers=2,
        concurrency=8,
        lease_s=5,
    )
    nats_flag = ["--nats-url", nats_url]
    database_flag = ["--database-url", database_url]
    async with LocalStack(options) as stack:
        out = await jobstream(
            "submit",
            *nats_flag,
            "--kind",
            "sum",
            "--args",
            '{"a": 2, "b": 3}',
            "--count",
            "1000",
            "--json",
        )
        job_id = json.loads(out)["job_id"]
        conn = await asyncpg.connect(database_url)
        try:
            assert await wait_until_finished(conn, job_id, timeout_s=90) == "completed"
            results = await conn.fetch(
                "SELECT task_id, output, processed_by FROM jobstream.results WHERE job_id = $1",
                job_id,
            )
            states = await conn.fetch(
                "SELECT state, count(*) AS n FROM jobstream.tasks WHERE job_id = $1 GROUP BY 1",
                job_id,
            )
        finally:
            await conn.close()
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
            api_job = (await client.get(f"/jobs/{job_id}")).json()
        status = json.loads(await jobstream("status", job_id, "--json", *database_flag))

    assert len(results) == 1000
    assert len({row["task_id"] for row in results}) == 1000
    assert {json.loads(row["output"])["sum"] for row in results} == {5}
    assert {row["state"]: row["n"] for row in states} == {"succeeded": 1000}
    assert len({row["processed_by"] for row in results}) == 2, "both workers took tasks"
    ndjson = ndjson_task_counts(options.data_dir / "results", job_id)
    assert len(ndjson) == 1000 and set(ndjson.values()) == {1}
    assert api_job["status"] == status["status"] == "completed"
    assert api_job["tasks"] == status["tasks"]
    assert status["tasks"]["succeeded"] == 1000 and status["tasks"]["total"] == 1000


async def test_jobs_over_two_projector_partitions(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    """`jobstream up --projectors 2`: each partition projects its jobs, partition 0 also
    the NDJSON files; the API shows every job, the workers merged, and is ready."""
    options = StackOptions(
        data_dir=tmp_path / "data",
        nats_url=nats_url,
        database_url=database_url,
        api_port=free_port(),
        workers=1,
        projectors=2,
        concurrency=8,
        lease_s=5,
    )
    nats_flag = ["--nats-url", nats_url]
    async with LocalStack(options) as stack:
        job_ids: list[str] = []
        while {partition_of(job_id, 2) for job_id in job_ids} != {0, 1}:
            assert len(job_ids) < 16, "sixteen job ids, all of one partition"
            out = await jobstream("submit", *nats_flag, "--kind", "noop", "--count", "50", "--json")
            job_ids.append(json.loads(out)["job_id"])
        conn = await asyncpg.connect(database_url)
        try:
            for job_id in job_ids:
                assert await wait_until_finished(conn, job_id, timeout_s=90) == "completed"
            checkpoints = await conn.fetch(
                "SELECT projection FROM jobstream.projection_checkpoints ORDER BY 1"
            )
        finally:
            await conn.close()
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
            jobs = [(await client.get(f"/jobs/{job_id}")).json() for job_id in job_ids]
            workers = (await client.get("/workers")).json()["workers"]
            for _ in range(50):
                ready = await client.get("/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.2)
    assert [row[0] for row in checkpoints] == ["postgres/0-of-2", "postgres/1-of-2"]
    assert {job["status"] for job in jobs} == {"completed"}
    assert sum(worker["tasks_succeeded"] for worker in workers) == 50 * len(job_ids)
    assert len(workers) == 1, workers
    assert ready.status_code == 200, ready.text
    for job_id in job_ids:
        assert len(ndjson_task_counts(options.data_dir / "results", job_id)) == 50
