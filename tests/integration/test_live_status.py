"""True statuses through the API: tasks in flight shown running within a second without a
`task.started`, a live idle worker's last seen, and `ctx.progress` reaching the API."""

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from jobstream.events import Bus, JobSubmitted, TaskProgress, TaskSpec, TaskStarted, new_id
from jobstream.projections import PostgresProjector
from jobstream.services.api import create_app
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import HandlerRegistry, TaskContext, Worker, WorkerOptions
from tests._serving import serving
from tests.integration.test_worker_dispatcher import read_log, running, wait_for_job_end

# No `task.started` for any task here: the tick (a third of the lease) outlasts them.
NO_STARTED = WorkerOptions(lease_s=30, concurrency=8, started_event_after_s=1000)


@pytest.fixture
async def api(nats_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(database_url=database_url, nats_urls=[nats_url])
    async with serving(app) as client:
        yield client


@contextlib.asynccontextmanager
async def stack(bus: Bus, database_url: str, worker: Worker) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        loops = (Dispatcher(bus, lease_s=30).run, worker.run, PostgresProjector(bus, pool).run)
        async with running(*loops):
            yield
    finally:
        await pool.close()


async def test_tasks_in_flight_show_running_within_a_second_without_started_events(
    bus: Bus, database_url: str, api: httpx.AsyncClient
) -> None:
    job = JobSubmitted(
        job_id=new_id(), tasks=[TaskSpec(kind="sleep", args={"seconds": 5}, count=8)]
    )
    async with stack(bus, database_url, Worker(bus, options=NO_STARTED)):
        submitted = time.monotonic()
        await bus.publish_event(job)
        deadline = submitted + 1.5
        seen = None
        while time.monotonic() < deadline:
            response = await api.get(f"/jobs/{job.job_id}")
            if response.status_code == 200 and response.json()["tasks"]["running"] == 8:
                seen = response.json()
                break
            await asyncio.sleep(0.05)
        assert seen is not None, "8 running not shown within 1.5 s"
        assert seen["status"] == "running"
        assert (seen["tasks"]["queued"], seen["tasks"]["total"]) == (0, 8)
        listed = (await api.get("/jobs", params={"limit": 5})).json()["jobs"]
        assert listed[0]["tasks"]["running"] == 8
        tasks = (await api.get(f"/jobs/{job.job_id}/tasks")).json()["tasks"]
        assert [task["state"] for task in tasks] == ["running"] * 8
        assert {task["worker_id"] for task in tasks} == {tasks[0]["worker_id"]} != {None}
        # The filters agree with what the rows show.
        running_jobs = (await api.get("/jobs", params={"status": "running"})).json()["jobs"]
        queued_jobs = (await api.get("/jobs", params={"status": "queued"})).json()["jobs"]
        assert job.job_id in {j["job_id"] for j in running_jobs}
        assert job.job_id not in {j["job_id"] for j in queued_jobs}
        path = f"/jobs/{job.job_id}/tasks"
        assert len((await api.get(path, params={"state": "running"})).json()["tasks"]) == 8
        assert (await api.get(path, params={"state": "queued"})).json()["tasks"] == []
        shown = await _status(job.job_id, bus, database_url)
        assert "running 8" in shown and shown.count(" running on ") == 8, shown
        as_json = json.loads(await _status(job.job_id, bus, database_url, "--json"))
        assert as_json["tasks"]["running"] == 8 and len(as_json["running_tasks"]) == 8
        await wait_for_job_end(bus, job.job_id)
    assert not [e for e in await read_log(bus) if isinstance(e, TaskStarted)]


async def _status(job_id: str, bus: Bus, database_url: str, *flags: str) -> str:
    """What `jobstream status` prints, as a person sees it."""
    nats_url = bus.nc.connected_url
    assert nats_url is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobstream.cli",
        "status",
        job_id,
        "--nats-url",
        f"nats://{nats_url.netloc}",
        "--database-url",
        database_url,
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_an_idle_live_worker_was_last_seen_a_moment_ago(
    bus: Bus, database_url: str, api: httpx.AsyncClient
) -> None:
    worker = Worker(bus, options=NO_STARTED)
    async with stack(bus, database_url, worker):
        await asyncio.sleep(4)
        workers = (await api.get("/workers")).json()["workers"]
        mine = next(w for w in workers if w["worker_id"] == worker.worker_id)
        started = datetime.fromisoformat(mine["started_at"])
        last_seen = datetime.fromisoformat(mine["last_seen_at"])
        assert (datetime.now(UTC) - last_seen).total_seconds() < 2
        assert (last_seen - started).total_seconds() > 2


async def report_half(args: Mapping[str, Any], ctx: TaskContext) -> None:
    ctx.progress(0.5, "half")
    await asyncio.sleep(3)


async def test_progress_reported_by_a_handler_reaches_the_api(
    bus: Bus, database_url: str, api: httpx.AsyncClient
) -> None:
    handlers = HandlerRegistry.default()
    handlers.add("report", report_half)
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="report")])
    async with stack(bus, database_url, Worker(bus, options=NO_STARTED, handlers=handlers)):
        await bus.publish_event(job)
        deadline = time.monotonic() + 2.5
        shown = None
        while time.monotonic() < deadline and shown is None:
            response = await api.get(f"/jobs/{job.job_id}/tasks")
            tasks = response.json()["tasks"] if response.status_code == 200 else []
            if tasks:  # the job's row comes first, its task rows a moment later
                shown = tasks[0] if tasks[0]["progress"] is not None else None
            await asyncio.sleep(0.05)
        assert shown is not None, "no progress shown"
        assert (shown["state"], shown["progress"], shown["progress_message"]) == (
            "running",
            0.5,
            "half",
        )
        ended = await wait_for_job_end(bus, job.job_id)
    assert type(ended).__name__ == "JobCompleted"


async def _until(probe: Any, timeout_s: float) -> Any:
    """`probe()` until it returns something truthy, at most `timeout_s`; None if it never
    did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.05)
    return None


async def test_the_tasks_of_a_chunk_in_flight_show_running(
    bus: Bus, database_url: str, api: httpx.AsyncClient
) -> None:
    job = JobSubmitted(
        job_id=new_id(),
        chunk_size=4,
        # 8 s in flight in all: room for a slow start on a loaded machine.
        tasks=[TaskSpec(kind="sleep", args={"seconds": 2}, count=4)],
    )
    async with stack(bus, database_url, Worker(bus, options=NO_STARTED)):
        await bus.publish_event(job)

        async def four_running() -> list[Any] | None:
            path = f"/jobs/{job.job_id}/tasks"
            response = await api.get(path, params={"state": "running"})
            tasks: list[Any] = response.json().get("tasks", [])
            return tasks if len(tasks) == 4 else None

        tasks = await _until(four_running, 6.0)
        assert tasks is not None, "the chunk's tasks were not shown running"
        assert [t["task_id"] for t in tasks] == [f"{job.job_id}-{i}" for i in range(4)]
        counts = (await api.get(f"/jobs/{job.job_id}")).json()["tasks"]
        assert counts["running"] == 4 and counts["queued"] == 0, counts
        await wait_for_job_end(bus, job.job_id)


async def fail_then_sleep(args: Mapping[str, Any], ctx: TaskContext) -> None:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    await asyncio.sleep(8)


async def test_a_task_being_retried_shows_running(
    bus: Bus, database_url: str, api: httpx.AsyncClient
) -> None:
    handlers = HandlerRegistry.default()
    handlers.add("flaky", fail_then_sleep)
    options = WorkerOptions(
        lease_s=30, concurrency=8, started_event_after_s=1000, retry_base_s=0.1, retry_cap_s=0.2
    )
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="flaky")])
    async with stack(bus, database_url, Worker(bus, options=options, handlers=handlers)):
        await bus.publish_event(job)

        async def retried_and_running() -> dict[str, Any] | None:
            response = await api.get(f"/jobs/{job.job_id}/tasks")
            tasks = response.json()["tasks"] if response.status_code == 200 else []
            if not tasks:
                return None  # not projected yet (the job's row comes first, its task rows later)
            task: dict[str, Any] = tasks[0]
            return task if task["attempts"] == 1 and task["state"] == "running" else None

        task = await _until(retried_and_running, 7.0)
        assert task is not None, "the retried task was not shown running"
        assert task["error"] is not None  # the read model has the failed first attempt
        counts = (await api.get(f"/jobs/{job.job_id}")).json()["tasks"]
        assert (counts["running"], counts["failed"]) == (1, 0), counts
        ended = await wait_for_job_end(bus, job.job_id)
    assert type(ended).__name__ == "JobCompleted"


async def report_after_the_end(args: Mapping[str, Any], ctx: TaskContext) -> None:
    async def late() -> None:
        await asyncio.sleep(0.3)
        ctx.progress(1.0, "too late")

    LATE_REPORTS.add(asyncio.get_running_loop().create_task(late()))


LATE_REPORTS: set[asyncio.Task[None]] = set()


async def test_a_report_after_the_attempt_ended_is_dropped(bus: Bus, database_url: str) -> None:
    handlers = HandlerRegistry.default()
    handlers.add("late", report_after_the_end)
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="late")])
    async with stack(bus, database_url, Worker(bus, options=NO_STARTED, handlers=handlers)):
        await bus.publish_event(job)
        await wait_for_job_end(bus, job.job_id)
        await asyncio.gather(*LATE_REPORTS)
        await asyncio.sleep(1.5)  # a sender would have published by now
    assert not [e for e in await read_log(bus) if isinstance(e, TaskProgress)]
