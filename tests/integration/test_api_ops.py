"""The API's operations views against a real PostgreSQL and nats-server: /stats, /queues,
/dead-letters and /workers/{id}."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from nats.js.api import ConsumerConfig

from jobstream.events import (
    TASKS_STREAM,
    Bus,
    JobSubmitted,
    PriorityLevel,
    TaskDeadLettered,
    TaskSpec,
    TaskSucceeded,
    WorkerStarted,
    ensure_worker_consumer,
    new_id,
    task_index_of,
    task_queue_subject,
    worker_consumer_name,
)
from jobstream.services.api import create_app, init_connection
from jobstream.services.api._cursors import ResultCursor, encode_cursor
from tests._serving import serving
from tests.integration.test_api import _serve, get_ok, insert_job
from tests.integration.test_api_live import project_all


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "jobstream"})
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with _serve(create_app(database_url=database_url)) as c:
        yield c


@pytest.fixture
async def live_client(nats_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(database_url=database_url, nats_urls=[nats_url])) as c:
        yield c


async def insert_finished(
    db: asyncpg.Connection,
    task_id: str,
    job_id: str,
    *,
    status: str = "succeeded",
    kind: str = "sum",
    duration_s: float | None = 1.0,
    finished_at: datetime | None = None,
    worker_id: str = "w1",
    error: str | None = None,
    attempts: int = 1,
) -> None:
    await db.execute(
        "INSERT INTO tasks (task_id, job_id, task_index, kind, args, result, worker_id,"
        " duration_s, state, error, attempts, finished_at, updated_seq)"
        " VALUES ($1, $2, $10, $3, '{}', NULL, $4, $5, $6, $7, $8, $9, 1)",
        task_id,
        job_id,
        kind,
        worker_id,
        duration_s,
        status,
        error,
        attempts,
        finished_at or datetime.now(UTC),
        task_index_of(job_id, task_id),
    )
    await db.execute("SELECT recount_read_model()")  # the sums the projector would keep


async def expect_422(client: httpx.AsyncClient, url: str, where: str, **params: str | int) -> str:
    response = await client.get(url, params=params)
    assert response.status_code == 422, response.text
    detail: str = response.json()["detail"]
    assert where in detail, detail
    return detail


# --- /stats -----------------------------------------------------------------------


async def test_stats_from_projected_events(bus: Bus, database_url: str, nats_url: str) -> None:
    """Events through the projector: the finished tasks land in the current bucket, the
    dead-lettered one as failed, and the projector is caught up."""
    job = JobSubmitted(
        job_id=new_id(), queue="ops", tasks=[TaskSpec(kind="sum", args={"a": i}) for i in range(3)]
    )
    await bus.publish_event(job)
    for index, duration_s in ((0, 0.2), (1, 0.4)):
        done = TaskSucceeded(
            job_id=job.job_id,
            task_id=f"{job.job_id}-{index}",
            kind="sum",
            worker_id="w1",
            attempt=1,
            result={"sum": index},
            duration_s=duration_s,
        )
        await bus.publish_event(done, expected_last_subject_seq=0)
    dead = TaskDeadLettered(
        job_id=job.job_id,
        task_id=f"{job.job_id}-2",
        kind="sum",
        reason="out of attempts",
        attempts=3,
        last_error="boom",
    )
    await bus.publish_event(dead, expected_last_subject_seq=0)
    await project_all(bus, database_url)

    async with serving(create_app(database_url=database_url, nats_urls=[nats_url])) as client:
        for _ in range(100):  # the API's NATS connection opens in the background
            body = await get_ok(client, "/stats", window_s=600, bucket_s=60)
            if body["projector_lag"]["events"] is not None:
                break
            await asyncio.sleep(0.05)

    assert body["window_s"] == 600 and body["bucket_s"] == 60
    assert len(body["buckets"]) == 10
    assert sum(b["succeeded"] for b in body["buckets"]) == 2
    assert sum(b["failed"] for b in body["buckets"]) == 1
    assert body["buckets"][-1]["succeeded"] + body["buckets"][-2]["succeeded"] == 2
    # From histograms: within 5% (the bucket middles' error) of percentile_cont's figures.
    assert body["durations"]["p50_s"] == pytest.approx(0.3, rel=0.05)
    assert body["by_queue_kind"] == [
        {
            "queue": "ops",
            "kind": "sum",
            "succeeded": 2,
            "failed": 1,
            "p50_s": pytest.approx(0.3, rel=0.05),
            "p99_s": pytest.approx(0.398, rel=0.05),
        }
    ]
    assert body["projector_lag"] == {"events": 0, "seconds": 0.0}


async def test_stats_buckets_filters_and_percentiles(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_job(db, "ja", queue="qa")
    await insert_job(db, "jb", queue="qb")
    for index in range(100):
        await insert_finished(db, f"ja-{index}", "ja", duration_s=float(index + 1))
    await insert_finished(db, "jb-0", "jb", kind="http.warm", status="dead_lettered")
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    await insert_finished(db, "jb-1", "jb", kind="http.warm", finished_at=two_hours_ago)

    body = await get_ok(client, "/stats", window_s=3600, bucket_s=300)
    assert len(body["buckets"]) == 12
    assert [sum(b[key] for b in body["buckets"]) for key in ("succeeded", "failed")] == [100, 1]
    starts = [datetime.fromisoformat(b["at"]) for b in body["buckets"]]
    assert all(int(at.timestamp()) % 300 == 0 for at in starts)  # aligned buckets
    assert starts[0] == datetime.fromisoformat(body["since"])
    assert starts[-1] + timedelta(seconds=300) == datetime.fromisoformat(body["until"])
    assert body["durations"] == {
        "p50_s": pytest.approx(50.5, rel=0.05),
        "p90_s": pytest.approx(90.1, rel=0.05),
        "p99_s": pytest.approx(99.01, rel=0.05),
    }
    rows = {(r["queue"], r["kind"]): r for r in body["by_queue_kind"]}
    assert rows.keys() == {("qa", "sum"), ("qb", "http.warm")}
    assert rows["qb", "http.warm"]["failed"] == 1 and rows["qb", "http.warm"]["p50_s"] is None
    assert body["projector_lag"] == {"events": None, "seconds": None}  # no NATS: not known

    only_b = await get_ok(client, "/stats", queue="qb")
    assert sum(b["failed"] for b in only_b["buckets"]) == 1
    assert sum(b["succeeded"] for b in only_b["buckets"]) == 0  # jb-1 is outside the window
    assert [r["queue"] for r in only_b["by_queue_kind"]] == ["qb"]
    by_kind = await get_ok(client, "/stats", kind="sum", window_s=7200)
    assert sum(b["succeeded"] for b in by_kind["buckets"]) == 100

    day = await get_ok(client, "/stats", window_s=86_400, bucket_s=3600)
    assert sum(b["succeeded"] for b in day["buckets"]) == 101
    empty = await get_ok(client, "/stats", queue="nothing-here")
    assert empty["durations"] == {"p50_s": None, "p90_s": None, "p99_s": None}
    assert empty["by_queue_kind"] == []


async def test_stats_window_rounds_up_to_whole_buckets(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, "/stats", window_s=90, bucket_s=60)
    assert (body["window_s"], len(body["buckets"])) == (120, 2)


async def test_stats_answers_are_kept_a_moment(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_job(db, "ja")
    first = await get_ok(client, "/stats")
    await insert_finished(db, "ja-0", "ja")
    assert await get_ok(client, "/stats") == first  # kept: one set of queries for all viewers
    moved = await get_ok(client, "/stats", bucket_s=120)  # other parameters: computed anew
    assert sum(b["succeeded"] for b in moved["buckets"]) == 1


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"window_s": 0}, "query parameter 'window_s'"),
        ({"window_s": 86_401}, "query parameter 'window_s'"),
        ({"window_s": "hour"}, "query parameter 'window_s'"),
        ({"bucket_s": 5}, "query parameter 'bucket_s'"),
        ({"bucket_s": 3601}, "query parameter 'bucket_s'"),
        ({"bucket_s": 90}, "query parameter 'bucket_s'"),
        ({"queue": "no spaces"}, "query parameter 'queue'"),
        ({"queue": "q" * 65}, "query parameter 'queue'"),
        ({"kind": "a\x00b"}, "query parameter 'kind'"),
        ({"kind": "k" * 201}, "query parameter 'kind'"),
    ],
)
async def test_stats_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, str | int], where: str
) -> None:
    await expect_422(client, "/stats", where, **params)


# --- /dead-letters ------------------------------------------------------------------


async def test_dead_letters_newest_first_paged_and_filtered(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_job(db, "ja", queue="qa")
    await insert_job(db, "jb", queue="qb")
    now = datetime.now(UTC)
    for index in range(5):
        at = now - timedelta(minutes=index)
        job_id = "ja" if index % 2 == 0 else "jb"
        await insert_finished(
            db,
            f"{job_id}-{index}",
            job_id,
            status="dead_lettered",
            finished_at=at,
            error=f"error {index}",
            attempts=3,
            duration_s=None,
        )
    await insert_finished(db, "ja-9", "ja")  # succeeded: not a dead letter

    first = await get_ok(client, "/dead-letters", limit=2)
    assert [d["task_id"] for d in first["dead_letters"]] == ["ja-0", "jb-1"]
    assert first["dead_letters"][0] == {
        "task_id": "ja-0",
        "job_id": "ja",
        "kind": "sum",
        "queue": "qa",
        "attempts": 3,
        "error": "error 0",
        "finished_at": first["dead_letters"][0]["finished_at"],
        "retry_command": "jobstream dlq retry ja-0",
    }
    seen = [d["task_id"] for d in first["dead_letters"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = await get_ok(client, "/dead-letters", limit=2, cursor=cursor)
        seen += [d["task_id"] for d in page["dead_letters"]]
        cursor = page["next_cursor"]
    assert seen == ["ja-0", "jb-1", "ja-2", "jb-3", "ja-4"]

    by_queue = await get_ok(client, "/dead-letters", queue="qb")
    assert [d["task_id"] for d in by_queue["dead_letters"]] == ["jb-1", "jb-3"]
    by_job = await get_ok(client, "/dead-letters", job_id="ja", limit=2)
    assert [d["task_id"] for d in by_job["dead_letters"]] == ["ja-0", "ja-2"]
    assert by_job["next_cursor"] is not None
    unknown = await get_ok(client, "/dead-letters", job_id="no-such-job")
    assert unknown == {"dead_letters": [], "next_cursor": None}


async def test_dead_letters_bad_parameters(client: httpx.AsyncClient) -> None:
    await expect_422(client, "/dead-letters", "query parameter 'cursor'", cursor="garbage")
    # A cursor of another listing, even of the same shape, is refused.
    results_cursor = encode_cursor(ResultCursor(datetime.now(UTC), "t-1"))
    await expect_422(client, "/dead-letters", "query parameter 'cursor'", cursor=results_cursor)
    await expect_422(client, "/dead-letters", "query parameter 'limit'", limit=0)
    await expect_422(client, "/dead-letters", "query parameter 'limit'", limit=501)
    await expect_422(client, "/dead-letters", "query parameter 'job_id'", job_id="a/b")
    await expect_422(client, "/dead-letters", "query parameter 'queue'", queue="")


# --- /workers/{id} ------------------------------------------------------------------


async def test_worker_detail_with_its_recent_rate(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO workers (worker_id, host, pid, queues, concurrency, version, state,"
        " started_at, last_seen_at, tasks_succeeded, tasks_failed, updated_seq)"
        " VALUES ('w1', 'host-a', 42, '{default}', 8, '1.0', 'active', $1, $1, 30, 2, 1)",
        datetime.now(UTC) - timedelta(hours=1),
    )
    await insert_job(db, "ja")
    now = datetime.now(UTC)
    for index in range(6):
        await insert_finished(db, f"ja-{index}", "ja", finished_at=now - timedelta(seconds=5))
    await insert_finished(db, "ja-7", "ja", finished_at=now - timedelta(minutes=5))
    await insert_finished(db, "ja-8", "ja", worker_id="w2")

    body = await get_ok(client, "/workers/w1")
    assert body["worker_id"] == "w1" and body["host"] == "host-a"
    assert (body["state"], body["concurrency"], body["queues"]) == ("active", 8, ["default"])
    assert (body["tasks_succeeded"], body["tasks_failed"], body["in_flight"]) == (30, 2, 0)
    assert body["rate_window_s"] == 60
    assert body["rate_per_s"] == pytest.approx(6 / 60)
    assert body["last_seen_at"] is not None

    missing = await client.get("/workers/w9")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "worker w9 not found"
    await expect_422(client, "/workers/a.b", "path parameter 'worker_id'")
    await expect_422(client, "/workers/" + "w" * 129, "path parameter 'worker_id'")


async def test_worker_detail_from_the_log(bus: Bus, database_url: str, nats_url: str) -> None:
    started = WorkerStarted(
        worker_id="w-log", host="h", pid=7, queues=["q"], concurrency=3, version="t"
    )
    await bus.publish_event(started)
    await project_all(bus, database_url)
    async with serving(create_app(database_url=database_url, nats_urls=[nats_url])) as client:
        body = await get_ok(client, "/workers/w-log")
    assert (body["state"], body["host"], body["concurrency"]) == ("active", "h", 3)


# --- /queues ------------------------------------------------------------------------


async def test_queue_depths_per_level(bus: Bus, live_client: httpx.AsyncClient) -> None:
    await ensure_worker_consumer(bus.js, "qx", lease_s=30)
    job_id = new_id()
    for level, count in ((PriorityLevel.NORMAL, 3), (PriorityLevel.HIGH, 1)):
        for index in range(count):
            subject = task_queue_subject("qx", job_id, level=level)
            await bus.js.publish(subject, f"{level}-{index}".encode())
    pull = await bus.js.pull_subscribe_bind(
        worker_consumer_name("qx", PriorityLevel.NORMAL), stream=TASKS_STREAM
    )
    taken = await pull.fetch(1, timeout=5)  # in flight: handed out, not acknowledged
    assert len(taken) == 1
    # A consumer of another stream or name is not a queue's.
    await bus.js.add_consumer(
        TASKS_STREAM, ConsumerConfig(durable_name="audit", filter_subject="task.zz.>")
    )

    body: dict[str, object] = {}
    for _ in range(100):  # the API's NATS connection opens in the background
        response = await live_client.get("/queues")
        if response.status_code == 200:
            body = response.json()
            break
        await asyncio.sleep(0.05)
    queues = body["queues"]
    assert isinstance(queues, list) and [q["queue"] for q in queues] == ["qx"]
    (qx,) = queues
    assert (qx["pending"], qx["ack_pending"], qx["consumers"]) == (3, 1, 4)
    levels = {row["level"]: row for row in qx["levels"]}
    assert list(levels) == ["high", "normal", "low", "due"]
    assert (levels["normal"]["pending"], levels["normal"]["ack_pending"]) == (2, 1)
    assert (levels["high"]["pending"], levels["high"]["consumer"]) == (1, "high-workers-qx")
    assert levels["low"]["pending"] == levels["due"]["pending"] == 0

    # Kept a few seconds: a new message does not show at once, and as_of says when it was read.
    await bus.js.publish(task_queue_subject("qx", job_id, level=PriorityLevel.LOW), b"late")
    again = (await live_client.get("/queues")).json()
    assert again == body


async def test_queues_without_nats_is_503(client: httpx.AsyncClient) -> None:
    response = await client.get("/queues")
    assert response.status_code == 503
    assert "NATS" in response.json()["detail"] and response.headers["Retry-After"]
