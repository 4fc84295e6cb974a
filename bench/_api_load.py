"""The `api` section: the real API (`jobstream api`, a child process) over read models holding
one job of a million tasks (`_api_seed`), timed endpoint by endpoint with sequential requests,
and the requests a dashboard page view makes (`_api_browser`).

Requests go one at a time over one keep-alive connection (httpx), after a warm-up, so each
figure is one request's latency with nothing else of ours running; `/stats` is asked with a
new window each time (its answers are cached per window: `stats` is the query, `stats_cached`
the cache). The API runs without its rate limit (`--rate-limit 0`): the default (20/s per
client, bursts of 200) would answer this loop 429.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from jobstream.bench._api_browser import PageView, count_page_requests
from jobstream.bench._api_seed import SeedResult, seed
from jobstream.bench._common import percentile, poll_until
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.bench._stack import JOBSTREAM, Child, stop_children
from jobstream.events import JobstreamError
from jobstream.projections import quote_ident
from jobstream.services.api._cursors import TaskCursor, encode_cursor
from jobstream.services.stack import free_port

API_SCHEMA = "jobstream_bench_api"
# /jobs' "later page": this many next_cursor hops from the first (50 jobs a page).
LATER_PAGE_HOPS = 20
# /stats windows: a new one per request (multiples of the 60-s bucket above the default hour).
STATS_WINDOW_S = 3_600
STATS_BUCKET_S = 60
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0

MeterFor = Callable[[dict[str, int]], CpuMeter]


@dataclass(frozen=True, kw_only=True)
class EndpointTiming:
    # The first timed request's path (an endpoint asked with several goes through them).
    path: str
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    response_bytes: int
    # CPU over the endpoint's timed requests: the API process, PostgreSQL, the bench (client).
    cpu: CpuReport


@dataclass(frozen=True, kw_only=True)
class ApiLoadResult:
    seed: SeedResult
    warmup_requests: int
    endpoints: dict[str, EndpointTiming]
    # The requests of one page view in a browser, in its first seconds; None: no Chromium
    # (or no Playwright) here.
    page_views: dict[str, PageView] | None


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    """How hard: up to `requests` per endpoint, fewer when they take over `budget_s` (never
    fewer than `min_requests`)."""

    small_jobs: int
    big_job_tasks: int
    requests: int
    min_requests: int
    budget_s: float
    warmup: int
    page_window_s: float


def _paths(seeded: SeedResult, later_cursor: str) -> dict[str, list[str]]:
    """Each endpoint's requests (rotated through when there are several)."""
    big = seeded.big_job_id
    deep = seeded.big_job_tasks // 2
    deep_cursor = encode_cursor(TaskCursor(deep, f"{big}-{deep}"))
    return {
        "jobs": ["/jobs"],
        "jobs_later_page": [f"/jobs?cursor={later_cursor}"],
        "job": [f"/jobs/{big}"],
        "tasks": [f"/jobs/{big}/tasks"],
        "tasks_deep_page": [f"/jobs/{big}/tasks?cursor={deep_cursor}"],
        "tasks_dead_lettered": [f"/jobs/{big}/tasks?state=dead_lettered"],
        "task": [f"/tasks/{task_id}" for task_id in seeded.sample_task_ids],
        "stats": [
            f"/stats?window_s={STATS_WINDOW_S + STATS_BUCKET_S * n}&bucket_s={STATS_BUCKET_S}"
            for n in range(1, 1_000)
        ],
        "stats_cached": ["/stats"],
        "dead_letters": ["/dead-letters"],
        "workers": ["/workers"],
        "metrics": ["/metrics"],
        "crawl": [f"/jobs/{big}/crawl"],
    }


async def _get(client: httpx.AsyncClient, path: str) -> int:
    response = await client.get(path)
    if response.status_code != 200:
        raise JobstreamError(f"bench api: GET {path}: HTTP {response.status_code}")
    return len(response.content)


async def _later_cursor(client: httpx.AsyncClient) -> str:
    cursor: str | None = None
    for _ in range(LATER_PAGE_HOPS):
        path = "/jobs" if cursor is None else f"/jobs?cursor={cursor}"
        response = await client.get(path)
        response.raise_for_status()
        cursor = response.json()["next_cursor"]
        if cursor is None:
            raise JobstreamError("bench api: fewer jobs than the later page needs")
    assert cursor is not None
    return cursor


async def _time_endpoint(
    client: httpx.AsyncClient, paths: list[str], plan: LoadPlan, meter: CpuMeter
) -> EndpointTiming:
    """Warm-up requests, then the timed ones, going through `paths` in turn."""
    for n in range(plan.warmup):
        await _get(client, paths[n % len(paths)])
    took: list[float] = []
    size = 0
    meter.start()
    while len(took) < plan.requests and (
        len(took) < plan.min_requests or sum(took) < plan.budget_s
    ):
        path = paths[(plan.warmup + len(took)) % len(paths)]
        started = time.perf_counter()
        size = await _get(client, path)
        took.append(time.perf_counter() - started)
    cpu = meter.stop()
    return EndpointTiming(
        path=paths[plan.warmup % len(paths)],
        requests=len(took),
        p50_ms=round(1000 * percentile(took, 0.50), 2),
        p99_ms=round(1000 * percentile(took, 0.99), 2),
        max_ms=round(1000 * max(took), 2),
        response_bytes=size,
        cpu=cpu,
    )


def _api_child(*, database_url: str, nats_url: str, port: int, run_dir: Path) -> Child:
    return Child(
        "api",
        [
            *JOBSTREAM,
            "api",
            "--database-url",
            database_url,
            "--nats-url",
            nats_url,
            "--data-dir",
            str(run_dir / "data"),
            "--schema",
            API_SCHEMA,
            "--port",
            str(port),
            "--rate-limit",
            "0",
        ],
        run_dir / "logs" / "api.log",
    )


async def _wait_healthy(client: httpx.AsyncClient, api: Child) -> None:
    async def healthy() -> bool | None:
        try:
            response = await client.get("/healthz")
        except httpx.TransportError:
            return None
        return True if response.status_code == 200 else None

    await poll_until(
        healthy, timeout_s=START_TIMEOUT_S, interval_s=0.1, what="the API", alive=api.check_alive
    )


async def measure_api(
    *,
    database_url: str,
    nats_url: str,
    meter_for: MeterFor,
    plan: LoadPlan,
    run_dir: Path,
) -> ApiLoadResult:
    """Seed, start the API, time every endpoint, count a page view's requests; the API's
    schema is dropped afterwards."""
    seeded = await seed(
        database_url, API_SCHEMA, small_jobs=plan.small_jobs, big_job_tasks=plan.big_job_tasks
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    api = _api_child(database_url=database_url, nats_url=nats_url, port=port, run_dir=run_dir)
    api.start()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
            await _wait_healthy(client, api)
            paths = _paths(seeded, await _later_cursor(client))
            endpoints = {
                name: await _time_endpoint(
                    client, endpoint_paths, plan, meter_for({"api": api.pid})
                )
                for name, endpoint_paths in paths.items()
            }
        page_views = await count_page_requests(
            base_url,
            {"overview": "/", "job": f"/#/job/{seeded.big_job_id}"},
            window_s=plan.page_window_s,
        )
    finally:
        await stop_children([api])
        await _drop_schema(database_url)
    return ApiLoadResult(
        seed=seeded, warmup_requests=plan.warmup, endpoints=endpoints, page_views=page_views
    )


async def _drop_schema(database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await asyncio.wait_for(
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(API_SCHEMA)} CASCADE"), 60
        )
    finally:
        await conn.close()
