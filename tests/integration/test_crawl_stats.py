"""Crawl statistics (issue 12): `http.warm` task events through a real nats-server, the real
Postgres projector, the bulk replay and the API, against figures computed from the pages."""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobstream.events import Bus, JobSubmitted, TaskSpec, TaskSucceeded
from jobstream.projections import NdjsonProjector, PostgresProjector, caught_up, replay_postgres
from jobstream.projections._crawl import SUMMED
from jobstream.services.api import create_app
from tests.integration.crawl_log import (
    DOMAINS,
    CrawlLog,
    crawl_log,
    expected_figures,
    warm_result,
)
from tests.integration.test_api import _serve
from tests.integration.test_replay import table_rows
from tests.integration.test_worker_dispatcher import running

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
TIMEOUT_S = 30.0
PERCENTILE_ERROR = 0.05
_SCALARS = ("pages_done", "pages_failed", "broken_links", "server_errors", "redirects")
_MORE_SCALARS = ("bytes", "slow_pages")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert created is not None
    yield created
    await created.close()


async def publish_and_project(bus: Bus, pool: asyncpg.Pool, log: CrawlLog, batch_max: int) -> int:
    for event in log.events:
        await bus.publish_event(event)
    last = await bus.stream_last_seq()
    async with running(PostgresProjector(bus, pool, batch_max=batch_max).run):

        async def listed() -> None:  # the task rows of every job listed too
            while not await caught_up(pool, last):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(listed(), TIMEOUT_S)
    return last


async def _until(read: Any, target: int) -> None:
    async def poll() -> None:
        while await read() < target:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), TIMEOUT_S)


def _select(log: CrawlLog, *, pass_: int | None = None, domain: str | None = None) -> Any:
    pages = [p for p in log.pages if pass_ in (None, p.pass_) and domain in (None, p.domain)]
    failures = [f for f in log.failures if pass_ in (None, f.pass_) and domain in (None, f.domain)]
    return expected_figures(pages, failures)


def _check_figures(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name in (*_SCALARS, *_MORE_SCALARS, "status_counts", "cache_counts"):
        assert got[name] == want[name], name
    if want["cache_hit_ratio"] is None:
        assert got["cache_hit_ratio"] is None
    else:
        assert got["cache_hit_ratio"] == pytest.approx(want["cache_hit_ratio"])
    warming = got["warming"]
    assert warming["pages_warmed"] == want["pages_warmed"]
    assert warming["misses_to_hits"] == want["misses_to_hits"]
    assert warming["time_saved_ms"] == pytest.approx(want["time_saved_ms"], abs=0.01)
    times = got["response_ms"]
    assert times["min_ms"] == want["min_ms"]
    assert times["max_ms"] == want["max_ms"]
    for name, exact in want["percentiles"].items():
        assert abs(times[f"{name}_ms"] - exact) <= PERCENTILE_ERROR * exact, (name, times)


async def test_projector_counts_a_crawl_per_pass_and_domain(bus: Bus, pool: asyncpg.Pool) -> None:
    log = crawl_log("crawl-1", T0)
    # Small batches: the rounds and batch boundaries cut through the crawl's pages.
    await publish_and_project(bus, pool, log, batch_max=7)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM jobstream.crawl_stats WHERE job_id = 'crawl-1' ORDER BY pass, domain"
        )
    assert {(row["pass"], row["domain"]) for row in rows} == {
        (pass_, domain) for pass_ in (1, 2) for domain in DOMAINS
    }
    for row in rows:
        want = _select(log, pass_=row["pass"], domain=row["domain"])
        for name in (*_SCALARS, *_MORE_SCALARS, "pages_warmed", "misses_to_hits"):
            assert row[name] == want[name], (row["pass"], row["domain"], name)
        assert json.loads(row["status_counts"]) == want["status_counts"]
        assert json.loads(row["cache_counts"]) == want["cache_counts"]
        assert row["time_saved_us"] == pytest.approx(want["time_saved_ms"] * 1000, abs=5)
        assert (row["min_ms"], row["max_ms"]) == (want["min_ms"], want["max_ms"])
        assert sum(json.loads(row["response_ms"]).values()) == want["pages_done"]


async def test_api_reports_a_crawl_and_the_replay_gives_the_same_rows(
    bus: Bus, pool: asyncpg.Pool, database_url: str
) -> None:
    log = crawl_log("crawl-2", T0)
    plain = JobSubmitted(at=T0, job_id="plain", tasks=[TaskSpec(kind="noop")])
    log.events.append(plain)
    await publish_and_project(bus, pool, log, batch_max=1000)
    async with _serve(create_app(database_url=database_url)) as client:
        body = (await client.get("/jobs/crawl-2/crawl", params={"urls": 5})).json()
        assert body["is_crawl"] is True
        want = _select(log)
        _check_figures(body["totals"], want)
        assert [link["url"] for link in body["totals"]["broken_urls"]] == want["broken_urls"][:5]
        assert [p["pass"] for p in body["passes"]] == [1, 2]
        for figures in body["passes"]:
            want = _select(log, pass_=figures["pass"])
            _check_figures(figures, want)
            assert [link["url"] for link in figures["slow_urls"]] == want["slow_urls"][:5]
            assert all(link["total_ms"] > 3000 for link in figures["slow_urls"])
            statuses = [link["status"] for link in figures["broken_urls"]]
            assert statuses == _broken_statuses(log, figures["pass"])[:5]
        assert body["domains_total"] == len(DOMAINS)
        for figures in body["domains"]:
            _check_figures(figures, _select(log, domain=figures["domain"]))
        # Not a crawl, unknown, hostile.
        plain_body = (await client.get("/jobs/plain/crawl")).json()
        assert plain_body["is_crawl"] is False
        assert "not a crawl" in plain_body["detail"]
        assert (await client.get("/jobs/nobody/crawl")).status_code == 404
        for bad in ("x" * 10_000, "a b", "%00", "a.b"):
            response = await client.get(f"/jobs/{bad}/crawl")
            assert response.status_code == 422, bad
            assert response.json()["detail"]
        assert (await client.get("/jobs/crawl-2/crawl", params={"urls": -1})).status_code == 422
        dashboard = (await client.get("/static/app.js")).text  # the dashboard's script
        assert "/crawl`" in dashboard and "crawlPanel" in dashboard
        schema = (await client.get("/openapi.json")).json()
        assert "CrawlReport" in schema["components"]["schemas"]
        assert "/jobs/{job_id}/crawl" in schema["paths"]
    bulk = await replay_postgres(bus, pool, swap=False, bulk=True)
    async with pool.acquire() as conn:
        live = await table_rows(conn, "jobstream", "crawl_stats")
        assert live
        assert await table_rows(conn, bulk.schema, "crawl_stats") == live


def _broken_statuses(log: CrawlLog, pass_: int) -> list[int]:
    return [p.status for p in log.pages if p.pass_ == pass_ and 400 <= p.status < 500]


async def test_a_page_seen_twice_counts_once(bus: Bus, pool: asyncpg.Pool) -> None:
    """A second terminal event of a page (a foreign copy) adds nothing, in one batch or two."""
    log = crawl_log("crawl-3", T0, pages_per_pass=4)
    again = [event for event in log.events if isinstance(event, TaskSucceeded)][:2]
    log.events.extend(
        TaskSucceeded(**{f: getattr(e, f) for f in e.__struct_fields__ if f != "id"}) for e in again
    )
    await publish_and_project(bus, pool, log, batch_max=3)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT sum(pages_done) AS done, sum(pages_failed) AS failed"
            " FROM jobstream.crawl_stats WHERE job_id = 'crawl-3'"
        )
    assert (row["done"], row["failed"]) == (len(log.pages), len(log.failures))


async def test_the_ndjson_line_of_a_crawled_page_carries_its_result(
    bus: Bus, tmp_path: Path
) -> None:
    log = crawl_log("crawl-4", T0, pages_per_pass=2)
    for event in log.events:
        await bus.publish_event(event)
    last = await bus.stream_last_seq()
    projector = NdjsonProjector(bus, tmp_path)
    async with running(projector.run):
        await _until(_async(lambda: projector.last_seq), last)
    lines = _read_lines(tmp_path)
    done = {line["task_id"]: line for line in lines if line["status"] == "succeeded"}
    first = log.pages[0]
    assert done["crawl-4-0"]["output"] == warm_result(first)
    assert done["crawl-4-0"]["kind"] == "http.warm"


def _read_lines(results_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in results_dir.glob("*.ndjson")
        for line in path.read_text().splitlines()
    ]


def _async(read: Any) -> Any:
    async def call() -> Any:
        return read()

    return call


def test_summed_columns_are_the_tables() -> None:
    from jobstream.services.api._crawl_figures import SUMMED as API_SUMMED

    assert API_SUMMED == SUMMED


async def test_a_crawl_with_no_page_yet_reports_zeros(
    bus: Bus, pool: asyncpg.Pool, database_url: str
) -> None:
    labelled = JobSubmitted(at=T0, job_id="fresh", labels={"crawl": "urls"}, sealed=False, tasks=[])
    by_kind = JobSubmitted(at=T0, job_id="kinds", tasks=[TaskSpec(kind="http.warm")])
    log = CrawlLog("fresh", events=[labelled, by_kind])
    await publish_and_project(bus, pool, log, batch_max=10)
    async with _serve(create_app(database_url=database_url)) as client:
        for job_id in ("fresh", "kinds"):
            body = (await client.get(f"/jobs/{job_id}/crawl", params={"urls": 0})).json()
            assert body["is_crawl"] is True and body["passes"] == [], job_id
            totals = body["totals"]
            assert (totals["pages_done"], totals["cache_hit_ratio"]) == (0, None)
            assert totals["response_ms"]["p50_ms"] is None
            assert totals["broken_urls"] == []
