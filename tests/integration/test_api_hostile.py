"""Requests a hostile client (or any web page an operator opens) can send: oversized and
malformed ids, filters and days. Each answers a 4xx quickly with the one error body, and
the API keeps working afterwards; its NATS connection is replaced if the server closes it."""

import asyncio
import contextlib
import time

import httpx
import pytest
from fastapi import FastAPI

from jobstream.events import Bus, JobSubmitted, TaskSpec, TaskSucceeded, new_id
from jobstream.services.api import create_app
from tests._serving import serving
from tests.integration.test_api_live import project_all

QUICK_S = 2.0


@pytest.fixture
def app(nats_url: str, database_url: str) -> FastAPI:
    return create_app(database_url=database_url, nats_urls=[nats_url])


async def _wait_ready(client: httpx.AsyncClient, timeout_s: float = 10) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


async def _timed_get(client: httpx.AsyncClient, path: str, **params: str) -> httpx.Response:
    started = time.monotonic()
    response = await client.get(path, params=params)
    assert time.monotonic() - started < QUICK_S, f"{path} took too long"
    return response


def _assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "errors"}
    assert len(response.text) < 1000, "the input is echoed whole"
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]


async def test_oversized_ids_and_filters_answer_4xx_and_harm_nothing(
    app: FastAPI, bus: Bus, database_url: str
) -> None:
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")], labels={"team": "a"})
    await bus.publish_event(job)
    await project_all(bus, database_url)
    huge = "A" * 10_240
    async with serving(app) as client:
        assert (await _wait_ready(client)).status_code == 200
        for path in (f"/jobs/{huge}/events", f"/jobs/{huge}", f"/jobs/{huge}/tasks"):
            _assert_error(await _timed_get(client, path), 422, "job_id", "at most 64")
        _assert_error(await _timed_get(client, "/events/stream", job_id="j" * 5000), 422, "job_id")
        _assert_error(await _timed_get(client, "/results", job_id=huge), 422, "job_id")
        _assert_error(await _timed_get(client, "/jobs", queue="q" * 5000), 422, "queue")
        _assert_error(await _timed_get(client, "/jobs/a.b/events"), 422, "job_id")
        _assert_error(await _timed_get(client, "/results", day="9999-12-31"), 422, "day")
        _assert_error(await _timed_get(client, "/results", day="2026-13-01"), 422, "day")
        _assert_error(await _timed_get(client, "/jobs", limit="ten"), 422, "limit")
        _assert_error(await _timed_get(client, "/jobs", cursor="%%%"), 422, "cursor")
        _assert_error(
            await _timed_get(client, f"/jobs/{job.job_id}/events", cursor="x" * 5000), 422
        )
        _assert_error(await _timed_get(client, "/no/such/route"), 404)
        _assert_error(await _timed_get(client, "/jobs/nosuchjob/events"), 404, "not found")
        _assert_error(await _timed_get(client, "/jobs", label="novalue"), 422, "label")
        _assert_error(await _timed_get(client, "/jobs", label="k=" + huge), 422, "label")
        too_many = await client.get("/jobs", params=[("label", f"k{n}=v") for n in range(17)])
        _assert_error(too_many, 422, "label")
        _assert_error(await _timed_get(client, "/jobs", since="yesterday"), 422, "since")
        _assert_error(
            await _timed_get(client, "/jobs", until="9999-12-31T23:59:59-23:00"), 422, "until"
        )
        _assert_error(await _timed_get(client, "/jobs", since="0.5"), 422, "since")
        _assert_error(await _timed_get(client, "/jobs", since="2000-01-01T00:00:00"), 422, "since")
        labelled = await _timed_get(client, "/jobs", label="team=a", since="2000-01-01T00:00:00Z")
        assert [j["job_id"] for j in labelled.json()["jobs"]] == [job.job_id]
        assert (await _timed_get(client, "/jobs", label="team=b")).json()["jobs"] == []
        later = await _timed_get(client, "/jobs", since="2999-01-01T00:00:00Z")
        assert later.json()["jobs"] == []

        assert (await _wait_ready(client)).status_code == 200
        events = await _timed_get(client, f"/jobs/{job.job_id}/events")
        assert [e["event"]["type"] for e in events.json()["events"]] == ["job.submitted"]


async def test_a_closed_nats_connection_is_replaced(app: FastAPI, bus: Bus) -> None:
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")])
    await bus.publish_event(job)
    async with serving(app) as client:
        path = f"/jobs/{job.job_id}/events"
        for _ in range(100):
            if (await client.get(path)).status_code == 200:
                break
            await asyncio.sleep(0.05)
        live_bus = app.state.live_log.bus
        assert live_bus is not None
        # A subject over the server's control-line limit: the server closes the connection,
        # and nats-py never reopens a closed one.
        with contextlib.suppress(Exception):
            await live_bus.nc.publish("x" * 5000, b"")
            await live_bus.nc.flush(timeout=2)
        for _ in range(50):
            if live_bus.nc.is_closed:
                break
            await asyncio.sleep(0.1)
        assert live_bus.nc.is_closed
        statuses = []
        for _ in range(100):
            statuses.append((await client.get(path)).status_code)
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}


async def test_paging_a_big_jobs_events_returns_each_once(app: FastAPI, bus: Bus) -> None:
    tasks = 100_000
    job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=tasks)])
    await bus.publish_event(job)
    futures = []
    for index in range(tasks):
        done = TaskSucceeded(
            job_id=job.job_id,
            task_id=f"{job.job_id}-{index}",
            kind="noop",
            worker_id="w1",
            attempt=1,
            duration_s=0.0,
        )
        futures.append(await bus.start_event_publish(done))
    await asyncio.gather(*futures)
    seen: list[int] = []
    pages = 0
    async with serving(app) as client:
        cursor: str | None = None
        while True:
            params = {"limit": "10000"} | ({"cursor": cursor} if cursor else {})
            response = await client.get(f"/jobs/{job.job_id}/events", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            seen += [entry["seq"] for entry in page["events"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert pages <= 12, "paging does not end"
    assert len(seen) == tasks + 1
    assert len(set(seen)) == len(seen)
    assert seen == sorted(seen)
