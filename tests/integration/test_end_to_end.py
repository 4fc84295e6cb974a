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
