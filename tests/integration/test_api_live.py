"""The API endpoints that read the event log: history, readiness, metrics, live stream."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from jobstream.events import Bus, JobSubmitted, TaskSpec, TaskSucceeded, new_id
from jobstream.projections import PostgresProjector, caught_up
from jobstream.services.api import create_app
from tests._serving import serving
from tests.integration.test_worker_dispatcher import running


@pytest.fixture
async def api_url(nats_url: str, database_url: str) -> AsyncIterator[str]:
    app = create_app(database_url=database_url, nats_urls=[nats_url])
    async with serving(app) as client:
        yield str(client.base_url)


async def project_all(bus: Bus, database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with running(PostgresProjector(bus, pool).run):
            last = await bus.stream_last_seq()
            while not await caught_up(pool, last):  # its task rows listed too
                await asyncio.sleep(0.05)
    finally:
        await pool.close()


async def test_job_history_readiness_and_metrics(bus: Bus, database_url: str, api_url: str) -> None:
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="sum", args={"a": 1, "b": 2})])
    await bus.publish_event(job)
    done = TaskSucceeded(
        job_id=job.job_id,
        task_id=f"{job.job_id}-0",
        kind="sum",
        worker_id="w1",
        attempt=1,
        result={"sum": 3},
        duration_s=0.01,
    )
    await bus.publish_event(done, expected_last_subject_seq=0)
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as client:
        history = (await client.get(f"/jobs/{job.job_id}/events")).json()
        assert [e["event"]["type"] for e in history["events"]] == [
            "job.submitted",
            "task.succeeded",
        ]
        assert (await client.get("/jobs/01NOPE/events")).status_code == 404
        assert (await client.get("/jobs/a.b/events")).status_code == 422

        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503  # no projection has run yet
        pool = await asyncpg.connect(database_url)
        try:  # a projection two events behind
            await pool.execute(
                "INSERT INTO jobstream.projection_checkpoints (projection, last_seq)"
                " VALUES ('x', 0)"
            )
            behind = (await client.get("/readyz")).json()
            assert behind["consumers"]["x"]["behind_events"] == 2
            assert 0 < behind["consumers"]["x"]["behind_s"] < 60
            await pool.execute("DELETE FROM jobstream.projection_checkpoints")
        finally:
            await pool.close()
        await project_all(bus, database_url)
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["consumers"] == {
            "postgres": {"applied_seq": 2, "behind_events": 0, "behind_s": 0.0}
        }
        assert ready.json()["problems"] == []
        assert ready.json()["task_batches_unlisted"] == 0

        metrics = (await client.get("/metrics")).text
        assert "jobstream_task_batches_unlisted 0.0" in metrics
        assert 'jobstream_consumer_lag_events{consumer="postgres"} 0.0' in metrics
        assert "jobstream_log_last_seq 2.0" in metrics
        assert 'jobstream_consumer_lag_seconds{consumer="postgres"} 0.0' in metrics
        assert 'jobstream_events_set_aside{by="projections"} 0.0' in metrics


async def test_live_event_stream(bus: Bus, api_url: str) -> None:
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")])
    async with (
        httpx.AsyncClient(base_url=api_url, timeout=10) as client,
        client.stream("GET", "/events/stream", params={"job_id": job.job_id}) as response,
    ):
        lines = (line async for line in response.aiter_lines() if line)
        assert await anext(lines) == ": connected"
        await bus.publish_event(job)
        received = [await asyncio.wait_for(anext(lines), 5) for _ in range(3)]
    assert received[0] == "event: job.submitted"
    assert received[1].startswith("id: ")
    data = json.loads(received[2].removeprefix("data: "))
    assert data["job_id"] == job.job_id


async def test_one_subscription_fans_out_to_every_viewer(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    app = create_app(database_url=database_url, nats_urls=[nats_url])
    first, second = (JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")]) for _ in "ab")

    async def job_ids(lines: AsyncIterator[str], count: int) -> list[str]:
        """The job ids of the next `count` events of a stream."""
        found: list[str] = []
        while len(found) < count:
            line = await asyncio.wait_for(anext(lines), 5)
            if line.startswith("data: "):
                found.append(json.loads(line.removeprefix("data: "))["job_id"])
        return found

    async with serving(app) as client, contextlib.AsyncExitStack() as streams:
        opened: list[AsyncIterator[str]] = []
        for params in ({}, {"job_id": first.job_id}, {"job_id": second.job_id}):
            response = await streams.enter_async_context(
                client.stream("GET", "/events/stream", params=params)
            )
            lines = response.aiter_lines()
            assert await anext(lines) == ": connected"
            opened.append(lines)
        fanout = app.state.event_fanout
        assert (fanout.viewers, fanout.subscriptions) == (3, 1)
        await bus.publish_event(first)
        await bus.publish_event(second)
        everything, only_first, only_second = opened
        assert await job_ids(everything, 2) == [first.job_id, second.job_id]
        assert await job_ids(only_first, 1) == [first.job_id]
        assert await job_ids(only_second, 1) == [second.job_id]
        await streams.aclose()
        for _ in range(100):
            if fanout.viewers == 0:
                break
            await asyncio.sleep(0.05)
        assert (fanout.viewers, fanout.subscriptions) == (0, 0)
