"""The projectors against a real nats-server and a real PostgreSQL."""

import asyncio
import contextlib
import json
import random
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobstream import projections
from jobstream.events import (
    EVENTS_STREAM,
    TASK_EVENT_SUBJECTS,
    Bus,
    ChunkFailure,
    ChunkResult,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobstreamError,
    JobSubmitted,
    SourceItem,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRequeued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerLost,
    WorkerStarted,
    WorkerStopped,
    chunk_id_for,
    chunk_task_events,
    encode,
    event_batches,
    job_bucket,
    subject_for,
    task_id_for,
)
from jobstream.projections import (
    NdjsonProjector,
    PostgresProjector,
    caught_up,
    checkpoint,
    last_written_seq,
    migrate,
    partition_path,
)
from jobstream.services.stack import NatsServer, PostgresServer

TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TABLES = {
    "jobs": "job_id",
    "tasks": "task_id",
    "task_attempts": "task_id, attempt",
    "workers": "worker_id",
    "results": "task_id",
    "rejected_events": "seq",
}


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert created is not None
    yield created
    await created.close()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def publish(bus: Bus, events: Sequence[Event]) -> int:
    seq = 0
    for event in events:
        seq = await bus.publish_event(event)
    return seq


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    async def poll() -> None:
        while not await condition():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), TIMEOUT_S)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def running(run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run a projector in the background; stop it and check it ended cleanly on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)


async def project(
    bus: Bus, pool: asyncpg.Pool, *, schema: str = "jobstream", batch_max: int = 1000
) -> int:
    """Run a Postgres projector until it has applied the whole log; return the last seq."""
    target = await bus.stream_last_seq()
    projector = PostgresProjector(bus, pool, schema=schema, batch_max=batch_max)

    async def applied() -> bool:
        return await projections.caught_up(pool, target, schema=schema)

    async with running(projector.run):
        await wait_until(applied, f"the projection to reach seq {target}")
    return target


async def snapshot(
    pool: asyncpg.Pool, schema: str = "jobstream"
) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    async with pool.acquire() as conn:
        for table, order in TABLES.items():
            rows = await conn.fetch(f"SELECT * FROM {schema}.{table} ORDER BY {order}")
            tables[table] = [
                {key: value for key, value in row.items() if key != "seen_at"} for row in rows
            ]
    return tables


def started(job_id: str, index: int, attempt: int, when: float, worker: str = "w1") -> TaskStarted:
    return TaskStarted(
        job_id=job_id,
        task_id=task_id_for(job_id, index),
        worker_id=worker,
        attempt=attempt,
        lease_deadline=at(when + 30),
        at=at(when),
    )


def succeeded(
    job: JobSubmitted, index: int, attempt: int, when: float, worker: str = "w1"
) -> TaskSucceeded:
    args = job.tasks[index].args
    return TaskSucceeded(
        job_id=job.job_id,
        task_id=task_id_for(job.job_id, index),
        kind="sum",
        args=args,
        worker_id=worker,
        attempt=attempt,
        result={"sum": args["a"] + args["b"]},
        duration_s=0.5,
        at=at(when),
    )


def failed(job_id: str, index: int, attempt: int, when: float, error: str) -> TaskFailed:
    return TaskFailed(
        job_id=job_id,
        task_id=task_id_for(job_id, index),
        worker_id="w1",
        attempt=attempt,
        error=error,
        duration_s=0.25,
        at=at(when),
    )


def three_task_job(job_id: str = "J1") -> list[Event]:
    job = JobSubmitted(
        job_id=job_id,
        name="adds",
        tasks=[TaskSpec(kind="sum", args={"a": n, "b": n + 1}) for n in (1, 3, 5)],
        max_attempts=2,
        labels={"team": "a"},
        submitted_by="test",
        at=at(0),
    )
    return [
        WorkerStarted(
            worker_id="w1",
            host="h1",
            pid=42,
            queues=["default"],
            concurrency=4,
            version="0.1.0",
            at=at(-1),
        ),
        job,
        started(job_id, 0, 1, 1),
        succeeded(job, 0, 1, 2),
        started(job_id, 1, 1, 3),
        failed(job_id, 1, 1, 4, "boom"),
        started(job_id, 1, 2, 5),
        succeeded(job, 1, 2, 6),
        started(job_id, 2, 1, 7),
        failed(job_id, 2, 1, 8, "boom 1"),
        started(job_id, 2, 2, 9),
        failed(job_id, 2, 2, 10, "boom 2"),
        TaskDeadLettered(
            job_id=job_id,
            task_id=task_id_for(job_id, 2),
            kind="sum",
            args={"a": 5, "b": 6},
            reason="max attempts reached",
            attempts=2,
            last_error="boom 2",
            worker_id="w1",
            at=at(11),
        ),
        JobFailed(job_id=job_id, succeeded=2, dead_lettered=1, duration_s=12.0, at=at(12)),
        WorkerStopped(worker_id="w1", at=at(13)),
    ]


async def test_a_job_of_three_tasks_lands_in_every_table(bus: Bus, pool: asyncpg.Pool) -> None:
    last = await publish(bus, three_task_job())
    assert await project(bus, pool) == last
    tables = await snapshot(pool)

    [job] = tables["jobs"]
    assert job["status"] == "failed"
    assert (job["total_tasks"], job["max_attempts"], job["name"]) == (3, 2, "adds")
    assert json.loads(job["labels"]) == {"team": "a"}
    assert (job["submitted_at"], job["started_at"], job["finished_at"]) == (at(0), at(1), at(12))
    assert job["duration_s"] == 12.0
    assert (job["submitted_seq"], job["updated_seq"]) == (2, last - 1)

    tasks = {row["task_id"]: row for row in tables["tasks"]}
    t0, t1, t2 = (tasks[task_id_for("J1", index)] for index in range(3))
    assert [t["task_index"] for t in (t0, t1, t2)] == [0, 1, 2]
    assert (t0["state"], t0["attempts"], json.loads(t0["result"])) == ("succeeded", 1, {"sum": 3})
    assert (t0["started_at"], t0["finished_at"], t0["duration_s"]) == (at(1), at(2), 0.5)
    assert (t1["state"], t1["attempts"], json.loads(t1["result"])) == ("succeeded", 2, {"sum": 7})
    assert (t1["error"], t1["started_at"]) == (None, at(5))
    assert (t2["state"], t2["attempts"], t2["error"]) == ("dead_lettered", 2, "boom 2")
    assert t2["result"] is None and t2["finished_at"] == at(11)
    assert {t["worker_id"] for t in tasks.values()} == {"w1"}

    attempts = [
        (row["task_id"][-1], row["attempt"], row["outcome"], row["error"])
        for row in tables["task_attempts"]
    ]
    assert attempts == [
        ("0", 1, "succeeded", None),
        ("1", 1, "failed", "boom"),
        ("1", 2, "succeeded", None),
        ("2", 1, "failed", "boom 1"),
        ("2", 2, "failed", "boom 2"),
    ]

    results = {row["task_id"][-1]: row for row in tables["results"]}
    assert json.loads(results["0"]["inputs"]) == {"a": 1, "b": 2}
    assert json.loads(results["0"]["output"]) == {"sum": 3}
    assert (results["0"]["status"], results["0"]["attempts"]) == ("succeeded", 1)
    assert (results["0"]["processed_by"], results["0"]["finished_at"]) == ("w1", at(2))
    assert (results["1"]["status"], results["1"]["attempts"]) == ("succeeded", 2)
    assert (results["2"]["status"], results["2"]["error"]) == ("dead_lettered", "boom 2")
    assert results["2"]["output"] is None and json.loads(results["2"]["inputs"]) == {
        "a": 5,
        "b": 6,
    }

    [worker] = tables["workers"]
    assert (worker["state"], worker["host"], worker["pid"]) == ("stopped", "h1", 42)
    assert (worker["queues"], worker["concurrency"], worker["version"]) == (
        ["default"],
        4,
        "0.1.0",
    )
    assert (worker["tasks_succeeded"], worker["tasks_failed"]) == (2, 3)
    assert (worker["started_at"], worker["stopped_at"], worker["last_seen_at"]) == (
        at(-1),
        at(13),
        at(13),
    )
    assert tables["rejected_events"] == []


async def test_projecting_again_changes_nothing(bus: Bus, pool: asyncpg.Pool) -> None:
    last = await publish(bus, three_task_job())
    await project(bus, pool)
    before = await snapshot(pool)

    # A second projector over the same database and log: it starts at the checkpoint.
    await project(bus, pool)
    # The whole log offered again, as after a crash between commit and checkpoint read.
    items = await read_log(bus, last)
    projector = PostgresProjector(bus, pool)
    assert await projector.apply_batch(items) == last
    assert await projector.apply_batch(items[:3]) == last

    assert await snapshot(pool) == before
    assert await checkpoint(pool) == last


async def read_log(bus: Bus, last: int, *, start_seq: int = 1) -> list[SourceItem]:
    items: list[SourceItem] = []
    stop = asyncio.Event()

    async def read() -> None:
        async with contextlib.aclosing(event_batches(bus, start_seq=start_seq, stop=stop)) as it:
            async for batch in it:
                items.extend(batch)
                if items[-1].seq >= last:
                    return

    await asyncio.wait_for(read(), TIMEOUT_S)
    return items


async def test_a_job_of_twenty_thousand_tasks(bus: Bus, pool: asyncpg.Pool) -> None:
    job = JobSubmitted(
        job_id="BIG", tasks=[TaskSpec(kind="noop", args={"n": 1}, count=20_000)], at=at(0)
    )
    await publish(bus, [job, started("BIG", 19_999, 1, 1)])
    await project(bus, pool)
    async with pool.acquire() as conn:
        total, tasks, first, last, running = await conn.fetchrow(
            "SELECT j.total_tasks, count(t.*), min(t.task_index), max(t.task_index),"
            " count(*) FILTER (WHERE t.state = 'running')"
            " FROM jobstream.jobs j JOIN jobstream.tasks t USING (job_id) GROUP BY j.job_id"
        )
        state = await conn.fetchval(
            "SELECT state FROM jobstream.tasks WHERE task_id = $1", task_id_for("BIG", 19_999)
        )
    assert (total, tasks, first, last, running) == (20_000, 20_000, 0, 19_999, 1)
    assert state == "running"


async def test_a_job_of_two_million_tasks_costs_the_projector_no_memory_per_task(
    bus: Bus, pool: asyncpg.Pool
) -> None:
    count = 2_000_000
    job = JobSubmitted(job_id="HUGE", tasks=[TaskSpec(kind="noop", count=count)], at=at(0))
    last = await publish(bus, [job, started("HUGE", count - 1, 1, 1)])
    items = await read_log(bus, last)
    projector = PostgresProjector(bus, pool)

    tracemalloc.start()
    try:
        began_s = time.process_time()
        assert await projector.apply_batch(items) == last
        cpu_s = time.process_time() - began_s
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The task rows are made in SQL: the projector's process (this one; PostgreSQL is
    # another) spends neither memory nor time per task. A Python row per task would take
    # hundreds of MB and seconds.
    assert peak_bytes < 2_000_000, peak_bytes
    assert cpu_s < 1.0, cpu_s

    async with pool.acquire() as conn:
        total, rows = await conn.fetchrow(
            "SELECT j.total_tasks, (SELECT count(*) FROM jobstream.tasks t"
            " WHERE t.job_id = j.job_id) FROM jobstream.jobs j WHERE j.job_id = 'HUGE'"
        )
        ends = await conn.fetch(
            "SELECT task_id, task_index, kind, args, state, updated_seq FROM jobstream.tasks"
            " WHERE task_index IN (0, $1) ORDER BY task_index",
            count - 1,
        )
    assert (total, rows) == (count, count)
    assert [tuple(row) for row in ends] == [
        (task_id_for("HUGE", 0), 0, "noop", "{}", "queued", last - 1),
        (task_id_for("HUGE", count - 1), count - 1, "noop", "{}", "running", last),
    ]


async def test_bad_input_is_parked_and_the_projection_goes_on(bus: Bus, pool: asyncpg.Pool) -> None:
    job = JobSubmitted(job_id="J2", tasks=[TaskSpec(kind="sum", args={"a": 1, "b": 1})], at=at(0))
    await publish(bus, [job])
    garbage = (await bus.js.publish("evt.task.X.Y", b"not json")).seq
    unknown = (await bus.js.publish("evt.task.X.Y", b'{"type": "task.exploded"}')).seq
    nul = await bus.publish_event(failed("J2", 0, 1, 1, "a NUL \x00 in the error"))
    too_big = await bus.publish_event(
        JobSubmitted(job_id="J3", priority=2**40, tasks=[TaskSpec(kind="noop")], at=at(1))
    )
    last = await publish(bus, [started("J2", 0, 2, 2), succeeded(job, 0, 2, 3)])

    await project(bus, pool)
    tables = await snapshot(pool)
    parked = {row["seq"]: row for row in tables["rejected_events"]}
    assert sorted(parked) == [garbage, unknown, nul, too_big]
    assert parked[garbage]["payload"] == b"not json"
    assert parked[garbage]["subject"] == f"evt.task.X.Y.{job_bucket('X')}"  # stored with its bucket
    assert "not a jobstream event" in parked[garbage]["error"]
    assert [job["job_id"] for job in tables["jobs"]] == ["J2"]
    [task] = tables["tasks"]
    assert (task["state"], task["attempts"], task["updated_seq"]) == ("succeeded", 2, last)
    assert [row["attempt"] for row in tables["task_attempts"]] == [2]
    assert await checkpoint(pool) == last


def shuffled_history(seed: int) -> list[Event]:
    """Several jobs and workers whose events interleave as they would under load."""
    rng = random.Random(seed)
    streams: list[list[Event]] = [
        [WorkerStarted(worker_id=worker, host="h", pid=1, queues=["q"], concurrency=2, version="1")]
        for worker in ("wa", "wb")
    ]
    for number in range(6):
        job_id = f"R{number}"
        job = JobSubmitted(
            job_id=job_id,
            tasks=[TaskSpec(kind="sum", args={"a": n, "b": n}) for n in range(5)],
            at=at(number),
        )
        streams.append([job, *task_histories(rng, job, number)])
    streams.append([WorkerLost(worker_id="wb", last_seen=at(50)), WorkerStopped(worker_id="wa")])
    events: list[Event] = []
    while streams:
        stream = rng.choice(streams)
        events.append(stream.pop(0))
        if not stream:
            streams.remove(stream)
    return events


def task_histories(rng: random.Random, job: JobSubmitted, number: int) -> list[Event]:
    events: list[Event] = []
    outcomes = {"succeeded": 0, "dead": 0, "cancelled": 0}
    for index in range(5):
        worker = rng.choice(["wa", "wb"])
        when = number * 10 + index
        for attempt in (1, 2, 3):
            events.append(started(job.job_id, index, attempt, when + attempt, worker))
            if rng.random() < 0.2:
                events.append(
                    TaskProgress(
                        job_id=job.job_id,
                        task_id=task_id_for(job.job_id, index),
                        worker_id=worker,
                        attempt=attempt,
                    )
                )
            fate = rng.random()
            if fate < 0.5:
                events.append(succeeded(job, index, attempt, when + attempt + 0.5, worker))
                outcomes["succeeded"] += 1
                break
            if fate < 0.6:
                events.append(
                    TaskCancelled(job_id=job.job_id, task_id=task_id_for(job.job_id, index))
                )
                outcomes["cancelled"] += 1
                break
            if fate < 0.9 or attempt < 3:
                events.append(failed(job.job_id, index, attempt, when + attempt + 0.5, "x"))
                continue
            events.append(
                TaskDeadLettered(
                    job_id=job.job_id,
                    task_id=task_id_for(job.job_id, index),
                    kind="sum",
                    reason="lease expired",
                    attempts=attempt,
                )
            )
            outcomes["dead"] += 1
    if rng.random() < 0.2:
        events.append(JobCancelled(job_id=job.job_id))
    finish = JobCompleted if outcomes["dead"] == 0 else JobFailed
    events.append(
        finish(
            job_id=job.job_id,
            succeeded=outcomes["succeeded"],
            dead_lettered=outcomes["dead"],
            duration_s=1.0,
        )
    )
    return events


async def test_batch_boundaries_do_not_change_the_read_models(bus: Bus, pool: asyncpg.Pool) -> None:
    """A replay into a fresh schema, one event per batch, yields the same tables."""
    await publish(bus, shuffled_history(seed=7))
    # Repeat a job id and a terminal event: later copies must change nothing.
    await publish(bus, shuffled_history(seed=7)[:40])
    async with pool.acquire() as conn:
        await migrate(conn, "replay")
    await project(bus, pool)
    await project(bus, pool, schema="replay", batch_max=1)
    one_batch = await snapshot(pool)
    one_by_one = await snapshot(pool, "replay")
    assert one_batch == one_by_one
    assert len(one_batch["tasks"]) == 30
    assert {row["state"] for row in one_batch["tasks"]} <= {
        "succeeded",
        "dead_lettered",
        "cancelled",
    }


async def test_requeued_dead_letters_reopen_their_job(bus: Bus, pool: asyncpg.Pool) -> None:
    job = JobSubmitted(
        job_id="Q", tasks=[TaskSpec(kind="sum", args={"a": 1, "b": 1}, count=2)], at=at(0)
    )

    def dead(index: int) -> TaskDeadLettered:
        return TaskDeadLettered(
            job_id="Q", task_id=task_id_for("Q", index), kind="sum", reason="r", attempts=3
        )

    def requeued(index: int) -> TaskRequeued:
        return TaskRequeued(
            job_id="Q", task_id=task_id_for("Q", index), kind="sum", attempts_before=3
        )

    last = await publish(
        bus,
        [
            job,
            dead(0),
            dead(1),
            JobFailed(job_id="Q", succeeded=0, dead_lettered=2, duration_s=1.0),
            requeued(0),
            requeued(1),
        ],
    )
    async with pool.acquire() as conn:
        await migrate(conn, "replay")
    await project(bus, pool)
    await project(bus, pool, schema="replay", batch_max=1)
    tables = await snapshot(pool)
    assert tables == await snapshot(pool, "replay")
    [row] = tables["jobs"]
    assert (row["status"], row["finished_at"], row["updated_seq"]) == ("running", None, last)
    assert [task["state"] for task in tables["tasks"]] == ["queued", "queued"]
    assert tables["results"] == []


def chunked_job(job_id: str = "C") -> list[Event]:
    """Four tasks in chunks of two: one chunk all succeeded, one with a task failed and
    retried alone."""
    args = {"a": 1, "b": 2}
    job = JobSubmitted(
        job_id=job_id,
        tasks=[TaskSpec(kind="sum", args=args) for _ in range(4)],
        chunk_size=2,
        at=at(0),
    )

    def result(index: int, duration_s: float) -> ChunkResult:
        task_id = task_id_for(job_id, index)
        return ChunkResult(
            task_id=task_id, kind="sum", args=args, result={"sum": 3}, duration_s=duration_s
        )

    return [
        job,
        TaskChunkFinished(
            job_id=job_id,
            task_id=chunk_id_for(job_id, 0),
            worker_id="w1",
            attempt=1,
            duration_s=0.5,
            results=[result(0, 0.2), result(1, 0.3)],
            at=at(2),
        ),
        TaskChunkFinished(
            job_id=job_id,
            task_id=chunk_id_for(job_id, 2),
            worker_id="w2",
            attempt=1,
            duration_s=0.5,
            results=[result(2, 0.1)],
            failed=[
                ChunkFailure(
                    task_id=task_id_for(job_id, 3),
                    kind="sum",
                    args=args,
                    error="boom",
                    duration_s=0.4,
                )
            ],
            at=at(3),
        ),
        succeeded(job, 3, 2, 4),
        JobCompleted(job_id=job_id, succeeded=4, duration_s=5.0, at=at(5)),
    ]


async def test_a_chunk_counts_as_its_tasks_own_events_at_its_seq(
    bus: Bus, pool: asyncpg.Pool
) -> None:
    last = await publish(bus, chunked_job())
    async with pool.acquire() as conn:
        await migrate(conn, "one_by_one")
        await migrate(conn, "expanded")
    await project(bus, pool)
    await project(bus, pool, schema="one_by_one", batch_max=1)
    # The same log with each chunk replaced by its per-task events, all at the chunk's seq.
    expanded: list[SourceItem] = []
    for item in await read_log(bus, last):
        if isinstance(item.event, TaskChunkFinished):
            expanded += [
                SourceItem(item.seq, subject_for(event), encode(event), event, None)
                for event in chunk_task_events(item.event)
            ]
        else:
            expanded.append(item)
    assert await PostgresProjector(bus, pool, schema="expanded").apply_batch(expanded) == last

    tables = await snapshot(pool)
    assert tables == await snapshot(pool, "one_by_one")
    assert tables == await snapshot(pool, "expanded")
    tasks = {row["task_id"]: row for row in tables["tasks"]}
    assert list(tasks) == [task_id_for("C", index) for index in range(4)]
    assert [(row["state"], row["attempts"], row["updated_seq"]) for row in tasks.values()] == [
        ("succeeded", 1, 2),
        ("succeeded", 1, 2),
        ("succeeded", 1, 3),
        ("succeeded", 2, 4),
    ]
    assert [row["started_at"] for row in tasks.values()][:3] == [at(1.8), at(1.7), at(2.9)]
    attempts = [(row["task_id"], row["attempt"], row["outcome"]) for row in tables["task_attempts"]]
    assert attempts == [
        ("C-0", 1, "succeeded"),
        ("C-1", 1, "succeeded"),
        ("C-2", 1, "succeeded"),
        ("C-3", 1, "failed"),
        ("C-3", 2, "succeeded"),
    ]
    assert [(row["task_id"], row["seq"]) for row in tables["results"]] == [
        ("C-0", 2),
        ("C-1", 2),
        ("C-2", 3),
        ("C-3", 4),
    ]
    workers = [(w["worker_id"], w["tasks_succeeded"], w["tasks_failed"]) for w in tables["workers"]]
    assert workers == [("w1", 3, 0), ("w2", 1, 1)]
    [job] = tables["jobs"]
    assert (job["status"], job["started_at"]) == ("completed", at(1.7))


async def test_source_reads_in_large_batches_from_any_sequence(bus: Bus) -> None:
    job = JobSubmitted(job_id="S", tasks=[TaskSpec(kind="noop", count=1)], at=at(0))
    events: list[Event] = [job]
    events += [started("S", 0, attempt, attempt) for attempt in range(1, 2500)]
    await asyncio.gather(*(bus.publish_event(event) for event in events[:1250]))
    await asyncio.gather(*(bus.publish_event(event) for event in events[1250:]))
    assert await bus.stream_last_seq() == 2500

    items = await read_log(bus, 2500, start_seq=101)
    assert [item.seq for item in items] == list(range(101, 2501))
    assert all(item.event is not None and item.error is None for item in items)

    stop = asyncio.Event()
    sizes: list[int] = []
    batches = event_batches(bus, start_seq=1, stop=stop, batch_max=1000)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            sizes.append(len(batch))
            if sum(sizes) == 2500:
                break
    # As many as the server has ready, up to batch_max: a few large batches, not 2500 small.
    assert max(sizes) <= 1000 and len(sizes) <= 10


async def test_source_filters_subjects_and_outlives_its_consumer(bus: Bus) -> None:
    job = JobSubmitted(job_id="F", tasks=[TaskSpec(kind="noop")], at=at(0))
    await publish(bus, [job, started("F", 0, 1, 1)])
    stop = asyncio.Event()
    seen: list[tuple[int, str]] = []
    batches = event_batches(bus, start_seq=1, stop=stop, filter_subject=TASK_EVENT_SUBJECTS)

    async def read(count: int) -> None:
        async for batch in batches:
            seen.extend((item.seq, item.subject) for item in batch)
            if len(seen) >= count:
                return

    async with contextlib.aclosing(batches):
        await asyncio.wait_for(read(1), TIMEOUT_S)
        # The server forgets the consumer (an admin, a restart, the inactivity threshold).
        for info in await bus.js.consumers_info(EVENTS_STREAM):
            await bus.js.delete_consumer(EVENTS_STREAM, info.name)
        await publish(bus, [JobCancelled(job_id="F"), started("F", 0, 2, 2), started("F", 0, 3, 3)])
        await asyncio.wait_for(read(3), TIMEOUT_S)
    assert seen == [
        (2, f"evt.task.F.F-0.{job_bucket('F')}"),
        (4, f"evt.task.F.F-0.{job_bucket('F')}"),
        (5, f"evt.task.F.F-0.{job_bucket('F')}"),
    ]
    assert await bus.js.consumers_info(EVENTS_STREAM) == []


@pytest.mark.faults
async def test_projection_outlives_a_nats_restart(
    bus: Bus, pool: asyncpg.Pool, nats_server: NatsServer
) -> None:
    events = three_task_job()
    await publish(bus, events[:5])
    projector = PostgresProjector(bus, pool)

    def at_least(seq: int) -> Callable[[], Awaitable[bool]]:
        async def reached() -> bool:
            return await checkpoint(pool) >= seq

        return reached

    async with running(projector.run):
        await wait_until(at_least(5), "the first events")
        nats_server.stop()
        await asyncio.sleep(0.5)
        nats_server.start()
        last = await publish(bus, events[5:])
        await wait_until(at_least(last), "the events after the restart")
    tables = await snapshot(pool)
    assert [row["state"] for row in tables["workers"]] == ["stopped"]
    assert len(tables["task_attempts"]) == 5


async def test_a_database_that_lost_commits_is_caught_up(bus: Bus, pool: asyncpg.Pool) -> None:
    """A restored backup (or a crash of a server without synchronous commits) loses the last
    transactions, checkpoint included: the running projector reads those events again."""
    projector = PostgresProjector(bus, pool)
    first = await publish(bus, three_task_job())

    def reached(seq: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await caught_up(pool, seq)

        return check

    async with running(projector.run):
        await wait_until(reached(first), "the first job")
        async with pool.acquire() as conn, conn.transaction():
            # As a restore would: every table at once, the projector and its lister waiting
            # on the checkpoint rows meanwhile.
            await conn.execute("SELECT 1 FROM jobstream.projection_checkpoints FOR UPDATE")
            tables = ("jobs", "tasks", "attempt_rows", "workers", "rejected_events", "job_batches")
            for table in tables:
                await conn.execute(f"DELETE FROM jobstream.{table}")
            await conn.execute("UPDATE jobstream.projection_checkpoints SET last_seq = 0")
        last = await publish(bus, three_task_job("J9"))
        await wait_until(reached(last), "the second job")
    async with pool.acquire() as conn:
        await migrate(conn, "replay")
    await project(bus, pool, schema="replay")
    assert await snapshot(pool) == await snapshot(pool, "replay")


@pytest.mark.faults
async def test_exactly_once_through_postgres_crashes(bus: Bus, tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pgdata", durable=False).start()
    try:
        created = await asyncpg.create_pool(server.url, min_size=1, max_size=2)
        assert created is not None
        async with created as crash_pool:
            async with crash_pool.acquire() as conn:
                await migrate(conn)
                await migrate(conn, "replay")
                await conn.execute("CHECKPOINT")  # the crashes must not take the schema too
            projector = PostgresProjector(bus, crash_pool, batch_max=7)
            async with running(projector.run):
                for wave in range(3):
                    await publish(bus, three_task_job(f"K{wave}"))
                    server.kill()
                    await asyncio.sleep(0.3)
                    server.start()
                last = await bus.stream_last_seq()

                async def caught_up() -> bool:
                    with contextlib.suppress(OSError, asyncpg.PostgresError):
                        return await checkpoint(crash_pool) >= last
                    return False

                await wait_until(caught_up, "the projection after the crashes")
            await project(bus, crash_pool, schema="replay")
            applied, replayed = await snapshot(crash_pool), await snapshot(crash_pool, "replay")
    finally:
        server.stop()
    assert applied == replayed
    assert [row["tasks_succeeded"] for row in applied["workers"]] == [6]


# --- NDJSON -----------------------------------------------------------------------------


def read_lines(results_dir: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted(results_dir.glob("results-*.ndjson")):
        text = path.read_text()
        assert text.endswith("\n")
        lines += [json.loads(line) | {"file": path.name} for line in text.splitlines()]
    return lines


async def write_results(bus: Bus, results_dir: Path, until_seq: int) -> None:
    projector = NdjsonProjector(bus, results_dir)

    async def written() -> bool:
        return last_written_seq(results_dir) >= until_seq

    async with running(projector.run):
        await wait_until(written, f"line {until_seq}")


async def test_ndjson_lines_match_the_finished_tasks(bus: Bus, tmp_path: Path) -> None:
    events = three_task_job()
    await publish(bus, events)
    results = tmp_path / "results"
    await write_results(bus, results, until_seq=13)

    lines = read_lines(results)
    assert [line["seq"] for line in lines] == [4, 8, 13]
    first, _, dead = lines
    assert first == {
        "seq": 4,
        "at": "2026-03-01T12:00:02Z",
        "job_id": "J1",
        "task_id": "J1-0",
        "kind": "sum",
        "status": "succeeded",
        "inputs": {"a": 1, "b": 2},
        "output": {"sum": 3},
        "worker_id": "w1",
        "attempts": 1,
        "duration_s": 0.5,
        "error": None,
        "file": "results-2026-03-01.ndjson",
    }
    assert (dead["status"], dead["attempts"], dead["error"]) == ("dead_lettered", 2, "boom 2")
    assert (dead["output"], dead["duration_s"], dead["inputs"]) == (None, None, {"a": 5, "b": 6})


async def test_ndjson_resumes_without_duplicates_across_days(bus: Bus, tmp_path: Path) -> None:
    job = JobSubmitted(job_id="D", tasks=[TaskSpec(kind="sum", args={"a": 1, "b": 2}, count=4)])
    late = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)

    def done(index: int, when: datetime) -> TaskSucceeded:
        return TaskSucceeded(
            job_id="D",
            task_id=task_id_for("D", index),
            kind="sum",
            args={"a": 1, "b": 2},
            worker_id="w",
            attempt=1,
            result={"sum": 3},
            duration_s=0.1,
            at=when,
        )

    await publish(bus, [job, done(0, late), done(1, late + timedelta(seconds=2))])
    results = tmp_path / "results"
    await write_results(bus, results, until_seq=3)
    # A second run with nothing new writes nothing; a third picks up the new events only.
    await write_results(bus, results, until_seq=3)
    last = await publish(bus, [done(2, late), done(3, late + timedelta(days=1, seconds=2))])
    await write_results(bus, results, until_seq=last)

    lines = read_lines(results)
    assert [(line["seq"], line["file"]) for line in lines] == [
        (2, "results-2026-03-01.ndjson"),
        (4, "results-2026-03-01.ndjson"),
        (3, "results-2026-03-02.ndjson"),
        (5, "results-2026-03-03.ndjson"),
    ]


async def test_ndjson_rewrites_a_torn_last_line_once(bus: Bus, tmp_path: Path) -> None:
    events = three_task_job()
    await publish(bus, events)
    results = tmp_path / "results"
    await write_results(bus, results, until_seq=13)
    path = partition_path(results, at(0))
    whole = path.read_bytes()
    last_line = whole[whole.rindex(b"\n", 0, len(whole) - 1) + 1 :]
    # A crash while writing the last line: half of it reached the file.
    path.write_bytes(whole[: -len(last_line)] + last_line[: len(last_line) // 2])
    assert last_written_seq(results) == 8

    await write_results(bus, results, until_seq=13)
    assert path.read_bytes() == whole
    assert [line["seq"] for line in read_lines(results)] == [4, 8, 13]


async def test_ndjson_a_chunk_makes_a_line_per_succeeded_task(bus: Bus, tmp_path: Path) -> None:
    last = await publish(bus, chunked_job())
    results = tmp_path / "results"
    await write_results(bus, results, until_seq=last - 1)
    path = partition_path(results, at(0))
    whole = path.read_bytes()
    lines = read_lines(results)
    assert [
        (line["seq"], line["task_id"], line.get("part"), line.get("parts")) for line in lines
    ] == [
        (2, "C-0", 1, 2),
        (2, "C-1", 2, 2),
        (3, "C-2", None, None),
        (4, "C-3", None, None),
    ]
    assert (lines[1]["at"], lines[1]["duration_s"], lines[1]["worker_id"]) == (
        "2026-03-01T12:00:02Z",
        0.3,
        "w1",
    )

    # A crash after the first of the chunk's two lines: both are written again, once.
    path.write_bytes(whole[: whole.index(b"\n") + 1])
    assert last_written_seq(results) == 0
    await write_results(bus, results, until_seq=last - 1)
    assert path.read_bytes() == whole


async def test_a_second_ndjson_projector_on_one_directory_is_refused(
    bus: Bus, tmp_path: Path
) -> None:
    first = NdjsonProjector(bus, tmp_path)
    async with running(first.run):
        await asyncio.sleep(0.2)
        with pytest.raises(JobstreamError, match="another NDJSON projector"):
            await NdjsonProjector(bus, tmp_path).run(asyncio.Event())


NDJSON_CHILD = """
import asyncio, sys
from pathlib import Path
from jobstream.events import Bus
from jobstream.projections import NdjsonProjector

async def main() -> None:
    bus = await Bus.connect([sys.argv[1]], name="ndjson-child")
    await NdjsonProjector(bus, Path(sys.argv[2]), batch_max=int(sys.argv[3])).run(asyncio.Event())

asyncio.run(main())
"""


@pytest.mark.faults
async def test_ndjson_exactly_one_line_per_task_through_sigkills(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    job = JobSubmitted(job_id="K", tasks=[TaskSpec(kind="sum", count=3000)], at=at(0))
    finished = [  # spread over two UTC days
        TaskSucceeded(
            job_id="K",
            task_id=task_id_for("K", index),
            kind="sum",
            args={"a": index, "b": 0},
            worker_id="w",
            attempt=1,
            result={"sum": index},
            duration_s=0.01,
            at=at(index * 40.0),
        )
        for index in range(3000)
    ]
    await publish(bus, [job])
    for start in range(0, len(finished), 500):
        await asyncio.gather(*(bus.publish_event(e) for e in finished[start : start + 500]))
    last = await bus.stream_last_seq()
    results = tmp_path / "results"
    results.mkdir()
    rng = random.Random(3)
    kills = 0
    for _ in range(6):
        before = last_written_seq(results)
        if before == last:
            break
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", NDJSON_CHILD, nats_url, str(results), "10", cwd=REPO
        )
        try:
            # Polled every millisecond: a child on a fast disk writes the whole log (300
            # fsynced batches) in a tenth of a second, so a slower poll would miss it.
            async def progressed(before: int = before) -> None:
                while last_written_seq(results) <= before:
                    await asyncio.sleep(0.001)

            try:
                await asyncio.wait_for(progressed(), TIMEOUT_S)
            except TimeoutError:
                pytest.fail("timed out waiting for the child to write")
            await asyncio.sleep(rng.uniform(0.0, 0.02))
        finally:
            child.kill()  # SIGKILL: no cleanup, possibly in the middle of a line
            await child.wait()
        kills += last_written_seq(results) < last
    assert kills >= 3, "the children finished before they could be killed"  # 300 batches
    await write_results(bus, results, until_seq=last)
    lines = read_lines(results)
    assert sorted(line["seq"] for line in lines) == list(range(2, last + 1))
    assert len({line["file"] for line in lines}) == 2
