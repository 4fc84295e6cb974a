"""The read API against a real PostgreSQL: rows go straight into the read-model tables."""

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from jobstream.events import QueryFileError, load_queries, parse_queries, task_id_for
from jobstream.services.api import LiveWork, create_app, job_summary, tasks_page

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
JsonObject = dict[str, Any]


# --- fixtures and row helpers -------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "jobstream"})
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    yield conn
    await conn.close()


@asynccontextmanager
async def _serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # ASGITransport does not run the lifespan; run it around the client.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        yield c


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with _serve(create_app(database_url=database_url)) as c:
        yield c


async def insert_job(
    db: asyncpg.Connection,
    job_id: str,
    *,
    status: str = "queued",
    queue: str = "default",
    submitted_at: datetime = T0,
    total_tasks: int = 0,
    labels: dict[str, str] | None = None,
) -> None:
    await db.execute(
        "INSERT INTO jobs (job_id, name, queue, priority, status, total_tasks, max_attempts,"
        " labels, submitted_at, submitted_seq, updated_seq)"
        " VALUES ($1, $2, $3, 0, $4, $5, 3, $6, $7, 1, 1)",
        job_id,
        f"name-{job_id}",
        queue,
        status,
        total_tasks,
        labels or {},
        submitted_at,
    )


async def insert_tasks(db: asyncpg.Connection, job_id: str, states: list[str]) -> None:
    """Task rows in `states`; a finished one (a row of the results view) finished now."""
    await db.executemany(
        "INSERT INTO tasks (task_id, job_id, task_index, kind, args, state, updated_seq,"
        " finished_at)"
        " VALUES ($1, $2, $3, 'sum', $4, $5, 1,"
        " CASE WHEN $5 IN ('succeeded', 'dead_lettered', 'cancelled') THEN now() END)",
        [
            (task_id_for(job_id, index), job_id, index, {"a": index, "b": 1}, state)
            for index, state in enumerate(states)
        ],
    )
    await db.execute("SELECT recount_read_model()")  # the counts the projector would keep


async def insert_result(
    db: asyncpg.Connection, job_id: str, index: int, finished_at: datetime
) -> None:
    """A succeeded task: a row of the results view."""
    await db.execute(
        "INSERT INTO tasks (task_id, job_id, task_index, kind, args, result, worker_id,"
        " duration_s, state, attempts, finished_at, updated_seq) VALUES ($1, $2, $6, 'sum', $3,"
        " $4, 'w1', 0.5, 'succeeded', 1, $5, 7)",
        task_id_for(job_id, index),
        job_id,
        {"a": 1, "b": 2},
        3,
        finished_at,
        index,
    )


async def get_ok(client: httpx.AsyncClient, url: str, **params: str | int) -> JsonObject:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    body: JsonObject = response.json()
    return body


async def collect_pages(
    client: httpx.AsyncClient, url: str, key: str, id_field: str, **params: str | int
) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        query = dict(params) if cursor is None else {**params, "cursor": cursor}
        body = await get_ok(client, url, **query)
        seen += [row[id_field] for row in body[key]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("pagination did not end")


# --- /healthz and / ---------------------------------------------------------------


async def test_healthz_and_dashboard(client: httpx.AsyncClient) -> None:
    assert await get_ok(client, "/healthz") == {"status": "ok"}
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>jobstream</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    # Its scripts and styles are served by the app itself.
    for asset in ("static/app.js", "static/app.css", "static/vendor/uPlot.iife.min.js"):
        assert asset in page.text
        served = await client.get(f"/{asset}")
        assert served.status_code == 200, asset
        assert "//cdn" not in served.text
    assert "fetch(" in (await client.get("/static/app.js")).text
    licence = await client.get("/static/vendor/uPlot.LICENSE.txt")
    assert licence.status_code == 200 and "MIT License" in licence.text


async def test_dashboard_title_is_escaped(database_url: str) -> None:
    async with _serve(create_app(database_url=database_url, title="<b>ops</b>")) as c:
        page = await c.get("/")
        assert "<title>&lt;b&gt;ops&lt;/b&gt;</title>" in page.text


async def test_openapi_documents_the_error_bodies(client: httpx.AsyncClient) -> None:
    spec = await get_ok(client, "/openapi.json")
    jobs = spec["paths"]["/jobs"]["get"]["responses"]
    one = spec["paths"]["/jobs/{job_id}"]["get"]["responses"]
    assert {"200", "422", "503"} <= set(jobs)
    assert "404" in one
    error_refs = {
        (path, code): body["content"]["application/json"]["schema"]["$ref"]
        for path, methods in spec["paths"].items()
        for code, body in methods["get"]["responses"].items()
        if code.startswith(("4", "5")) and path != "/readyz"
    }
    assert error_refs and set(error_refs.values()) == {"#/components/schemas/ErrorBody"}


# --- /jobs --------------------------------------------------------------------------


async def test_jobs_empty(client: httpx.AsyncClient) -> None:
    assert await get_ok(client, "/jobs") == {"jobs": [], "next_cursor": None}


async def test_jobs_newest_first_with_counts(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_job(db, "old", submitted_at=T0, total_tasks=2, labels={"team": "a"})
    await insert_job(db, "new", status="running", submitted_at=T0 + timedelta(1), total_tasks=4)
    await insert_tasks(db, "old", ["succeeded", "succeeded"])
    await insert_tasks(db, "new", ["succeeded", "dead_lettered", "failed", "running"])

    body = await get_ok(client, "/jobs")

    assert [job["job_id"] for job in body["jobs"]] == ["new", "old"]
    new, old = body["jobs"]
    assert new["tasks"] == {
        "total": 4,
        "queued": 0,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "dead_lettered": 1,
        "cancelled": 0,
    }
    assert new["progress"] == 0.5
    assert new["status"] == "running"
    assert old["labels"] == {"team": "a"}
    assert old["progress"] == 1.0
    assert old["submitted_at"] == "2024-05-01T12:00:00Z"
    assert body["next_cursor"] is None


async def test_jobs_filters(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await insert_job(db, "a", status="running", queue="q1")
    await insert_job(db, "b", status="completed", queue="q1")
    await insert_job(db, "c", status="running", queue="q2")
    await insert_job(db, "d", status="submitting", queue="q2")

    running = await get_ok(client, "/jobs", status="running")
    submitting = await get_ok(client, "/jobs", status="submitting")
    q1 = await get_ok(client, "/jobs", queue="q1")
    both = await get_ok(client, "/jobs", status="running", queue="q1")
    none = await get_ok(client, "/jobs", status="cancelled")

    assert sorted(job["job_id"] for job in running["jobs"]) == ["a", "c"]
    assert sorted(job["job_id"] for job in q1["jobs"]) == ["a", "b"]
    assert [job["job_id"] for job in both["jobs"]] == ["a"]
    assert [job["job_id"] for job in submitting["jobs"]] == ["d"]
    assert none["jobs"] == []


async def test_jobs_search_by_name_and_labels(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_job(db, "nightly_a", labels={"team": "ops", "crawl": "example.com"})
    await insert_job(db, "nightlyxb", labels={"team": "web"})
    await insert_job(db, "other", labels={})

    def ids(body: JsonObject) -> list[str]:
        return sorted(job["job_id"] for job in body["jobs"])

    assert ids(await get_ok(client, "/jobs", name="NIGHTLY")) == ["nightly_a", "nightlyxb"]
    # `_` and `%` are matched as themselves, not as LIKE wildcards.
    assert ids(await get_ok(client, "/jobs", name="y_a")) == ["nightly_a"]
    assert ids(await get_ok(client, "/jobs", name="%")) == []
    assert ids(await get_ok(client, "/jobs", label="team=web")) == ["nightlyxb"]
    both = await client.get("/jobs", params={"label": ["team=ops", "crawl=example.com"]})
    assert ids(both.json()) == ["nightly_a"]
    assert ids(await get_ok(client, "/jobs", label="team=ops", name="xb")) == []
    assert ids(await get_ok(client, "/jobs", label="team=")) == []
    for bad in ({"name": "x" * 201}, {"label": "team"}, {"name": ""}):
        assert (await client.get("/jobs", params=bad)).status_code == 422, bad


async def test_jobs_pagination_has_no_gaps_or_duplicates(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Ties on submitted_at (three jobs per second) exercise the job_id tie-breaker.
    expected: list[tuple[datetime, str]] = []
    for n in range(23):
        at = T0 + timedelta(seconds=n // 3)
        status = "completed" if n % 2 else "running"
        await insert_job(db, f"job-{n:02d}", submitted_at=at, status=status)
        expected.append((at, f"job-{n:02d}"))
    newest_first = [job_id for _, job_id in sorted(expected, reverse=True)]

    pages = await collect_pages(client, "/jobs", "jobs", "job_id", limit=5)
    assert pages == newest_first

    running = await collect_pages(client, "/jobs", "jobs", "job_id", limit=4, status="running")
    assert running == [job_id for job_id in newest_first if int(job_id[-2:]) % 2 == 0]

    exact = await get_ok(client, "/jobs", limit=23)
    assert len(exact["jobs"]) == 23 and exact["next_cursor"] is None


async def test_job_with_unprojected_tasks_counts_them_queued(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_job(db, "fresh", total_tasks=10)
    await insert_tasks(db, "fresh", ["succeeded", "running"])

    job = await get_ok(client, "/jobs/fresh")

    assert job["tasks"]["total"] == 10
    assert job["tasks"]["queued"] == 8
    assert job["progress"] == 0.1


# --- /jobs/{job_id} ---------------------------------------------------------------


async def test_job_detail(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await insert_job(db, "j1", status="running", total_tasks=5)
    await insert_tasks(db, "j1", ["succeeded", "cancelled", "queued", "queued", "dead_lettered"])

    job = await get_ok(client, "/jobs/j1")

    assert job["job_id"] == "j1"
    assert job["name"] == "name-j1"
    assert job["max_attempts"] == 3
    assert job["tasks"] == {
        "total": 5,
        "queued": 2,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "dead_lettered": 1,
        "cancelled": 1,
    }
    assert job["progress"] == pytest.approx(0.6)


async def test_job_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "job nope not found", "errors": []}


async def test_job_summary_for_the_cli_on_a_plain_connection(
    database_url: str, db: asyncpg.Connection
) -> None:
    await insert_job(db, "j1", status="running", total_tasks=2, labels={"team": "a"})
    await insert_tasks(db, "j1", ["succeeded", "queued"])
    plain = await asyncpg.connect(database_url, server_settings={"search_path": "jobstream"})
    try:
        summary = await job_summary(plain, "j1")
        missing = await job_summary(plain, "ghost")
    finally:
        await plain.close()

    assert summary is not None and missing is None
    assert json.loads(json.dumps(summary)) == summary
    assert summary["status"] == "running"
    assert summary["labels"] == {"team": "a"}
    assert summary["progress"] == 0.5
    assert summary["tasks"] == {
        "total": 2,
        "queued": 1,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "dead_lettered": 0,
        "cancelled": 0,
    }


# --- /jobs/{job_id}/tasks -----------------------------------------------------------


async def test_tasks_in_order_with_pagination_and_filter(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    states = ["succeeded", "failed", "running"] * 4
    await insert_job(db, "j", total_tasks=len(states))
    await insert_tasks(db, "j", states)

    every = await collect_pages(client, "/jobs/j/tasks", "tasks", "task_id", limit=5)
    failed = await collect_pages(client, "/jobs/j/tasks", "tasks", "task_id", state="failed")
    first = await get_ok(client, "/jobs/j/tasks", limit=1)

    assert every == [f"j-{index}" for index in range(12)]
    assert failed == ["j-1", "j-4", "j-7", "j-10"]
    assert first["tasks"][0]["args"] == {"a": 0, "b": 1}
    assert first["tasks"][0]["state"] == "succeeded"


async def test_tasks_of_missing_job_is_404_but_empty_filter_is_not(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_job(db, "j")
    await insert_tasks(db, "j", ["queued"])

    missing = await client.get("/jobs/ghost/tasks")
    empty = await get_ok(client, "/jobs/j/tasks", state="dead_lettered")

    assert missing.status_code == 404
    assert missing.json() == {"detail": "job ghost not found", "errors": []}
    assert empty == {"tasks": [], "next_cursor": None}


async def test_a_job_projected_between_the_two_reads_is_listed_with_its_tasks(
    database_url: str, db: asyncpg.Connection
) -> None:
    # The listing finds no task row, then asks whether the job exists. The projector commits
    # the job and its tasks in one transaction, and here it commits between those two reads.
    reader = await asyncpg.connect(database_url, server_settings={"search_path": "jobstream"})
    await reader.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )

    class ProjectedAfterTheFirstRead:
        def __init__(self) -> None:
            self.reads = 0

        async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await reader.fetch(query, *args)
            self.reads += 1
            if self.reads == 1:
                async with db.transaction():
                    await insert_job(db, "late", total_tasks=2)
                    await insert_tasks(db, "late", ["queued", "queued"])
            return rows

        async def fetchval(self, query: str, *args: Any) -> Any:
            return await reader.fetchval(query, *args)

    try:
        page = await tasks_page(ProjectedAfterTheFirstRead(), "late", LiveWork())
    finally:
        await reader.close()

    assert page is not None
    assert [task.task_id for task in page.tasks] == ["late-0", "late-1"]


# --- /workers and /results ---------------------------------------------------------------


async def test_workers(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO workers (worker_id, host, pid, queues, concurrency, version, state,"
        " started_at, last_seen_at, tasks_succeeded, tasks_failed, updated_seq) VALUES"
        " ('w-old', 'h1', 10, '{default}', 4, '0.1.0', 'stopped', $1, $1, 5, 1, 1),"
        " ('w-new', 'h2', 11, '{default,http}', 8, '0.1.0', 'active', $2, $2, 9, 0, 2)",
        T0,
        T0 + timedelta(hours=1),
    )

    body = await get_ok(client, "/workers")

    assert [w["worker_id"] for w in body["workers"]] == ["w-new", "w-old"]
    new = body["workers"][0]
    assert new["queues"] == ["default", "http"]
    assert new["concurrency"] == 8
    assert new["state"] == "active"
    assert new["tasks_succeeded"] == 9
    assert new["stopped_at"] is None


async def test_results_by_day_and_job_with_pagination(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    day = datetime(2024, 5, 1, tzinfo=UTC)
    for n in range(7):
        await insert_result(db, "j1", n, day + timedelta(hours=3 * n + 1))
    await insert_result(db, "j2", 0, day + timedelta(days=1, minutes=1))  # late
    await insert_result(db, "j2", 1, day - timedelta(microseconds=1))  # early

    on_day = await collect_pages(
        client, "/results", "results", "task_id", day="2024-05-01", limit=3
    )
    of_j2 = await collect_pages(client, "/results", "results", "task_id", job_id="j2")
    one = await get_ok(client, "/results", day="2024-05-01", limit=1)

    assert on_day == [f"j1-{n}" for n in range(7)]
    assert of_j2 == ["j2-1", "j2-0"]
    row = one["results"][0]
    assert row["inputs"] == {"a": 1, "b": 2}
    assert row["output"] == 3
    assert row["status"] == "succeeded"
    assert row["finished_at"] == "2024-05-01T01:00:00Z"


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "mentions"),
    [
        ("/jobs?status=bogus", "status"),
        ("/jobs?limit=0", "limit"),
        ("/jobs?limit=10000", "limit"),
        ("/jobs?limit=ten", "limit"),
        ("/jobs?cursor=%%%garbled", "cursor"),
        ("/jobs?cursor=bm90LWpzb24", "cursor"),  # base64 of "not-json"
        ("/jobs?queue=", "queue"),
        ("/jobs/j/tasks?state=done", "state"),
        ("/results?day=2024-13-45", "day"),
        ("/results?limit=501", "limit"),
    ],
)
async def test_bad_query_values_are_4xx_with_a_clear_message(
    client: httpx.AsyncClient, url: str, mentions: str
) -> None:
    response = await client.get(url)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert f"query parameter '{mentions}'" in detail


async def test_cursor_of_another_listing_is_refused(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for n in range(3):
        await insert_job(db, f"j{n}", submitted_at=T0 + timedelta(seconds=n))
    cursor = (await get_ok(client, "/jobs", limit=1))["next_cursor"]
    assert cursor is not None

    response = await client.get("/results", params={"cursor": cursor})

    assert response.status_code == 422
    assert "not a cursor of this listing" in response.json()["detail"]


async def test_forged_cursor_with_naive_time_is_refused(client: httpx.AsyncClient) -> None:
    raw = json.dumps(["j", "2024-05-01T12:00:00", "x"]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = await client.get("/jobs", params={"cursor": cursor})
    assert response.status_code == 422


async def test_nul_character_is_a_bad_value_not_a_crash(client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs", params={"queue": "a\x00b"})
    assert response.status_code == 422
    assert "query parameter 'queue'" in response.json()["detail"]


# --- the database away -----------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_database_is_503_and_healthz_stays_up() -> None:
    url = f"postgresql://nobody@127.0.0.1:{_closed_port()}/nowhere"
    async with _serve(create_app(database_url=url)) as c:
        assert (await c.get("/healthz")).status_code == 200
        response = await c.get("/jobs")
        assert response.status_code == 503
        assert response.json() == {
            "detail": "the read-model database is unavailable; try again shortly",
            "errors": [],
        }
        assert response.headers["retry-after"] == "5"


async def test_api_started_before_its_database_recovers_when_it_appears(
    postgres_admin_url: str, database_url: str
) -> None:
    base, source = database_url.rsplit("/", 1)
    late = f"{source}_late"
    async with _serve(create_app(database_url=f"{base}/{late}")) as c:
        assert (await c.get("/jobs")).status_code == 503
        admin = await asyncpg.connect(postgres_admin_url)
        try:
            await admin.execute(f"CREATE DATABASE {late} TEMPLATE {source}")
            await asyncio.sleep(1.1)  # past the reconnect interval
            assert await get_ok(c, "/jobs") == {"jobs": [], "next_cursor": None}
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {late} WITH (FORCE)")
            await admin.close()


async def test_unmigrated_schema_is_503(database_url: str) -> None:
    async with _serve(create_app(database_url=database_url, schema="not_there")) as c:
        response = await c.get("/workers")
        assert response.status_code == 503
        assert "schema 'not_there' is not migrated" in response.json()["detail"]


def test_schema_name_is_checked() -> None:
    with pytest.raises(ValueError, match="schema name"):
        create_app(database_url="postgresql://x/y", schema='x"; DROP')


# --- the query loader ---------------------------------------------------------------------


def test_shipped_queries_load() -> None:
    queries = load_queries("jobstream.services.api", "queries.sql")
    assert {"list_jobs", "get_job", "waiting_task_counts", "list_tasks", "list_workers"} <= set(
        queries
    )
    assert queries["get_job"].startswith("SELECT")


def test_query_blocks_parse_and_reject_mistakes() -> None:
    text = "-- preamble\n-- name: one\n-- about one\nSELECT 1;\n\n-- name: two\nSELECT 2;\n"
    assert dict(parse_queries(text)) == {"one": "-- about one\nSELECT 1;", "two": "SELECT 2;"}
    with pytest.raises(QueryFileError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(QueryFileError, match="is empty"):
        parse_queries("-- name: a\n-- only a comment\n")
    with pytest.raises(QueryFileError, match="use"):
        parse_queries("-- name: Bad-Name\nSELECT 1;\n")
