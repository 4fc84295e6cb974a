"""`jobstream jobs`, `tasks`, `workers` and `show` against real servers and real read models:
what they list, their filters, a task's attempts, and bad input said plainly."""

import asyncio
import json
import subprocess
import sys
from typing import Any

import asyncpg

from jobstream.events import Bus, JobFailed, JobSubmitted, TaskSpec, new_id
from jobstream.projections import PostgresProjector, caught_up
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import running, wait_for_job_end

TIMEOUT_S = 60


def _jobstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


async def test_jobs_tasks_workers_and_show(bus: Bus, nats_url: str, database_url: str) -> None:
    good = JobSubmitted(
        job_id=new_id(), name="adds", tasks=[TaskSpec(kind="sum", args={"a": 1, "b": 2}, count=3)]
    )
    bad = JobSubmitted(
        job_id=new_id(),
        name="fails",
        queue="default",
        max_attempts=2,
        tasks=[TaskSpec(kind="fail", args={"message": "no luck"})],
    )
    options = WorkerOptions(lease_s=5, retry_base_s=0.01, retry_cap_s=0.02)
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=3, server_settings={"search_path": "jobstream"}
    )
    try:
        async with running(
            Dispatcher(bus, lease_s=5).run,
            Worker(bus, options=options).run,
            PostgresProjector(bus, pool).run,
        ):
            for job in (good, bad):
                await bus.publish_event(job)
            await wait_for_job_end(bus, good.job_id)
            assert isinstance(await wait_for_job_end(bus, bad.job_id), JobFailed)
            last = await bus.stream_last_seq()
            while not await caught_up(pool, last):
                await asyncio.sleep(0.05)
    finally:
        await pool.close()
    where = ["--nats-url", nats_url, "--database-url", database_url]

    listed = await asyncio.to_thread(_jobstream, "jobs", "--json", *where)
    assert listed.returncode == 0, listed.stderr
    by_id = {job["job_id"]: job for job in _lines(listed.stdout)}
    assert by_id[good.job_id]["status"] == "completed"
    assert by_id[good.job_id]["tasks"]["succeeded"] == 3
    assert by_id[bad.job_id]["status"] == "failed"

    failed = await asyncio.to_thread(_jobstream, "jobs", "--status", "failed", "--json", *where)
    assert [job["job_id"] for job in _lines(failed.stdout)] == [bad.job_id]

    table = await asyncio.to_thread(_jobstream, "jobs", *where)
    assert "STATUS" in table.stdout and good.job_id in table.stdout and "3/3" in table.stdout

    tasks = await asyncio.to_thread(_jobstream, "tasks", good.job_id, "--json", *where)
    assert [task["task_id"] for task in _lines(tasks.stdout)] == [
        f"{good.job_id}-{index}" for index in range(3)
    ]

    workers = await asyncio.to_thread(_jobstream, "workers", "--json", *where)
    assert [worker["tasks_succeeded"] for worker in _lines(workers.stdout)] == [3]

    task = await asyncio.to_thread(_jobstream, "show", f"{bad.job_id}-0", *where)
    assert task.returncode == 0, task.stderr
    assert "dead_lettered, 2 attempt(s)" in task.stdout
    assert task.stdout.count("failed") >= 2 and "no luck" in task.stdout
    shown = await asyncio.to_thread(_jobstream, "show", f"{bad.job_id}-0", "--json", *where)
    history = json.loads(shown.stdout)["history"]
    assert [(a["attempt"], a["outcome"]) for a in history] == [(1, "failed"), (2, "failed")]

    shown_job = await asyncio.to_thread(_jobstream, "show", good.job_id, *where)
    assert "completed" in shown_job.stdout and "succeeded 3" in shown_job.stdout

    # The worker stopped with the loops above (its worker.stopped projected now): prune
    # forgets it, through the log.
    await _project(bus, database_url)
    dry = await asyncio.to_thread(_jobstream, "workers", "prune", "--dry-run", *where)
    assert "1 worker(s) to forget" in dry.stdout, dry.stderr
    pruned = await asyncio.to_thread(_jobstream, "workers", "prune", *where)
    assert "forgot 1 worker(s)" in pruned.stdout, pruned.stderr
    await _project(bus, database_url)
    left = await asyncio.to_thread(_jobstream, "workers", "--json", *where)
    assert left.returncode == 0 and _lines(left.stdout) == []


async def test_jobs_by_label_and_time(bus: Bus, nats_url: str, database_url: str) -> None:
    """`submit --label` marks a job; `jobs --label/--since/--until` find it again."""
    where = ["--nats-url", nats_url, "--database-url", database_url]
    submitted = {}
    for labels in (["team=a", "env=prod"], ["team=a"], ["team=b"]):
        flags = [arg for label in labels for arg in ("--label", label)]
        done = await asyncio.to_thread(
            _jobstream, "submit", "--kind", "noop", *flags, "--nats-url", nats_url
        )
        assert done.returncode == 0, done.stderr
        submitted[" ".join(labels)] = done.stdout.strip()
    await _project(bus, database_url)

    async def listed(*flags: str) -> set[str]:
        found = await asyncio.to_thread(_jobstream, "jobs", "--json", *flags, *where)
        assert found.returncode == 0, found.stderr
        return {job["job_id"] for job in _lines(found.stdout)}

    assert await listed("--label", "team=a") == {
        submitted["team=a env=prod"],
        submitted["team=a"],
    }
    assert await listed("--label", "team=a", "--label", "env=prod") == {
        submitted["team=a env=prod"]
    }
    assert await listed("--label", "team=c") == set()
    assert await listed("--since", "2000-01-01", "--label", "team=b") == {submitted["team=b"]}
    assert await listed("--since", "2999-01-01") == set()
    assert await listed("--until", "2000-01-01") == set()


async def _project(bus: Bus, database_url: str) -> None:
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=3, server_settings={"search_path": "jobstream"}
    )
    try:
        async with running(PostgresProjector(bus, pool).run):
            last = await bus.stream_last_seq()
            while not await caught_up(pool, last):
                await asyncio.sleep(0.05)
    finally:
        await pool.close()


async def test_bad_input_gets_a_clear_error(nats_url: str, database_url: str) -> None:
    where = ["--nats-url", nats_url, "--database-url", database_url]
    missing = await asyncio.to_thread(_jobstream, "show", "nosuchjob", *where)
    assert missing.returncode == 1, missing.stderr
    assert "nosuchjob" in missing.stderr and "Traceback" not in missing.stderr
    for args in (
        ["show", "bad.id"],
        ["show", "x" * 10_000],
        ["tasks", "j" * 65],
        ["jobs", "--status", "sleeping"],
        ["jobs", "--limit", "0"],
        ["jobs", "--queue", "a b"],
        ["jobs", "--label", "novalue"],
        ["jobs", "--label", "=x"],
        ["jobs", "--since", "yesterday"],
    ):
        result = await asyncio.to_thread(_jobstream, *args, *where)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
