"""The projector applies each batch while the one before it is written (`_apply_ahead`), from
the rows that batch leaves: the read models must come out as the replay's, and a batch whose
starting rows another writer changed in between must be applied again."""

import asyncio

import asyncpg
import pytest

from jobstream.events import (
    Bus,
    Event,
    JobSubmitted,
    JobTasksAdded,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from jobstream.projections import PostgresProjector, caught_up, replay_postgres
from jobstream.projections._listing import LISTING_RANGES, LISTING_TASKS
from jobstream.projections._postgres import _Batch
from tests.integration.test_projections import read_log
from tests.integration.test_replay_fold import (
    assert_replay_equals_live,
    at,
    big_chunked_job,
    crawl_corners,
    tricky_log,
)
from tests.integration.test_worker_dispatcher import running


@pytest.mark.parametrize("batch_max", [2, 7])
async def test_batches_applied_ahead_give_the_replays_tables(
    bus: Bus, database_url: str, batch_max: int
) -> None:
    for event in [*tricky_log(), *crawl_corners(), *big_chunked_job()]:
        await bus.publish_event(event)
    last = await bus.stream_last_seq()
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        # The lister lists once the projector is quiet: each listing takes the checkpoint row
        # between two batches, and the batch after it is applied again.
        projector = PostgresProjector(bus, pool, batch_max=batch_max, list_after_s=3600)
        async with running(projector.run):
            while not await caught_up(pool, last):
                await asyncio.sleep(0.05)
        assert projector.written_ahead > 0
        await assert_replay_equals_live(bus, pool)
    finally:
        await pool.close()


async def test_two_projectors_of_one_partition_applying_ahead_give_the_replays_tables(
    bus: Bus, database_url: str
) -> None:
    """Each one's batches, applied ahead, meet checkpoints the other moved: those are applied
    again, from the rows as they are."""
    for event in [*tricky_log(), *big_chunked_job()]:
        await bus.publish_event(event)
    last = await bus.stream_last_seq()
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=8)
    try:
        projectors = [PostgresProjector(bus, pool, batch_max=2) for _ in range(2)]
        async with running(*(projector.run for projector in projectors)):
            while not await caught_up(pool, last):
                await asyncio.sleep(0.05)
        await assert_replay_equals_live(bus, pool)
    finally:
        await pool.close()


@pytest.mark.parametrize("listed_between", [False, True])
async def test_a_listing_between_two_batches_makes_the_second_apply_again(
    bus: Bus, database_url: str, listed_between: bool
) -> None:
    """The task lister writes under the checkpoint lock without moving the checkpoint: here
    it gives the job's row the listed batch's queued tasks after the next batch was applied
    ahead from that row, so that batch must not be written as applied."""
    job = "stream"
    lease = at(60)
    events: list[Event] = [
        JobSubmitted(at=at(0), job_id=job, sealed=False, tasks=[]),
        JobTasksAdded(
            at=at(1), job_id=job, batch=0, first_index=0, tasks=[TaskSpec(kind="sum", count=3)]
        ),
        TaskStarted(
            at=at(2),
            job_id=job,
            task_id=f"{job}-0",
            worker_id="w1",
            attempt=1,
            lease_deadline=lease,
        ),
        TaskSucceeded(
            at=at(3),
            job_id=job,
            task_id=f"{job}-0",
            kind="sum",
            worker_id="w1",
            attempt=1,
            result=1,
            duration_s=0.1,
        ),
    ]
    for event in events:
        await bus.publish_event(event)
    items = await read_log(bus, await bus.stream_last_seq())
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        projector = PostgresProjector(bus, pool)
        # A batch that takes the job's task batch (listed later) carries: its job_batches
        # row is a whole row too. So does the next one, applied in its own transaction.
        taken = _Batch(items[:2], after=0)
        await projector._apply_batch(taken)
        assert taken.carried is not None
        started = _Batch(items[2:3], after=items[1].seq)
        await projector._apply_batch(started)
        assert started.carried is not None
        succeeded = _Batch(items[3:4], after=items[2].seq)
        await projector._apply_ahead(succeeded, started.carried)
        assert succeeded.loaded is not None
        if listed_between:
            assert await projector.lister.list_pending() == 1
        await projector._apply_batch(succeeded)
        assert projector.written_ahead == (0 if listed_between else 1)
        await projector.lister.list_pending()
        await assert_replay_equals_live(bus, pool)
        counts = await pool.fetchrow(
            "SELECT tasks_queued, tasks_succeeded FROM jobstream.jobs WHERE job_id = $1", job
        )
        assert tuple(counts) == (2, 1)
    finally:
        await pool.close()


async def test_a_projector_cancelled_while_a_batch_is_written_stops_cleanly(
    bus: Bus, database_url: str
) -> None:
    """Cancelled with a write in flight and the reader waiting for the next batch: both are
    cancelled, and the cancel is what comes out (not an error of the reader left running)."""
    await bus.publish_event(JobSubmitted(at=at(0), job_id="j", tasks=[TaskSpec(kind="noop")]))
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        projector = PostgresProjector(bus, pool)
        writing = asyncio.Event()

        async def slow_write(batch: _Batch) -> int:
            writing.set()
            await asyncio.sleep(60)
            raise AssertionError("not cancelled")

        projector._apply_batch = slow_write  # type: ignore[method-assign]
        running_projector = asyncio.create_task(projector.run(asyncio.Event()))
        await asyncio.wait_for(writing.wait(), 10)
        await asyncio.sleep(0.3)  # the reader waits for a next batch
        running_projector.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running_projector, 10)
    finally:
        await pool.close()


async def test_a_batch_applied_ahead_is_applied_again_in_a_schema_swapped_in_since(
    bus: Bus, database_url: str
) -> None:
    """A replay swapped in between two batches: its checkpoint may be where the first left
    off, but the rows the second started from are the old schema's, so it is applied again."""
    lease = at(9)
    await bus.publish_event(JobSubmitted(at=at(0), job_id="j", tasks=[TaskSpec(kind="noop")]))
    await bus.publish_event(
        TaskStarted(
            at=at(1), job_id="j", task_id="j-0", worker_id="w", attempt=1, lease_deadline=lease
        )
    )
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        projector = PostgresProjector(bus, pool)
        items = await read_log(bus, 2)
        await projector._apply_batch(_Batch(items[:1], after=0))
        started = _Batch(items[1:], after=1)
        await projector._apply_batch(started)
        assert started.carried is not None
        await replay_postgres(bus, pool)
        await bus.publish_event(
            TaskStarted(
                at=at(2), job_id="j", task_id="j-0", worker_id="w", attempt=2, lease_deadline=lease
            )
        )
        again = _Batch(await read_log(bus, 3, start_seq=3), after=2)
        await projector._apply_ahead(again, started.carried)
        assert again.loaded is not None
        await projector._apply_batch(again)
        assert projector.written_ahead == 0
        await assert_replay_equals_live(bus, pool)
    finally:
        await pool.close()


async def test_a_batch_listed_after_its_tasks_ran_gives_the_replays_tables(
    bus: Bus, database_url: str
) -> None:
    """The lister's way (`TaskLister`) against the database: the rows task events made first
    are found by the listing; it rewrites only those it changes (a row from a started task,
    a finished one that reported no args or other args) and makes the others queued."""
    job = JobSubmitted(
        job_id="L",
        tasks=[TaskSpec(kind="sum", args={"a": 1}, count=3), TaskSpec(kind="sum", args={"a": 2})],
        at=at(0),
    )

    def done(index: int, args: dict[str, int]) -> TaskSucceeded:
        return TaskSucceeded(
            job_id="L",
            task_id=f"L-{index}",
            kind="sum",
            args=dict(args),
            worker_id="w1",
            attempt=1,
            result=index,
            duration_s=0.1,
            at=at(1 + index),
        )

    started = TaskStarted(
        job_id="L", task_id="L-4", worker_id="w1", attempt=1, lease_deadline=at(60), at=at(5)
    )
    events: list[Event] = [job, done(0, {"a": 1}), done(1, {}), done(3, {"a": 99}), started]
    for event in events:
        await bus.publish_event(event)
    last = await bus.stream_last_seq()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        projector = PostgresProjector(bus, pool)
        await projector.apply_batch(await read_log(bus, last), list_tasks=False)
        async with pool.acquire() as conn:
            made = await conn.fetch("SELECT task_id, xmin FROM jobstream.tasks ORDER BY task_id")
            assert [row["task_id"] for row in made] == ["L-0", "L-1", "L-3", "L-4"]
            assert await conn.fetchval("SELECT tasks_queued FROM jobstream.jobs") == 0
            assert await projector.lister.list_pending() == 1
            after = {
                row["task_id"]: row["xmin"]
                for row in await conn.fetch("SELECT task_id, xmin FROM jobstream.tasks")
            }
        assert sorted(after) == ["L-0", "L-1", "L-2", "L-3", "L-4"]
        assert after["L-0"] == made[0]["xmin"]  # finished with its range's args: left as is
        assert await caught_up(pool, last)
        await assert_replay_equals_live(bus, pool)
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("listing_tasks", "listing_ranges", "transactions"),
    [(LISTING_TASKS, LISTING_RANGES, 1), (1, LISTING_RANGES, 3), (LISTING_TASKS, 1, 3)],
)
async def test_batches_due_together_are_listed_in_one_transaction(
    bus: Bus,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    listing_tasks: int,
    listing_ranges: int,
    transactions: int,
) -> None:
    """Each listing's transaction that falls between two of the projector's batches makes the
    second apply again, so the batches due at once are listed in one (their `job_batches`
    rows share its `xmin`), up to about `LISTING_TASKS` tasks and `LISTING_RANGES` ranges a
    transaction."""
    monkeypatch.setattr("jobstream.projections._listing.LISTING_TASKS", listing_tasks)
    monkeypatch.setattr("jobstream.projections._listing.LISTING_RANGES", listing_ranges)
    jobs = [f"J{number}" for number in range(3)]
    for number, job in enumerate(jobs):
        await bus.publish_event(
            JobSubmitted(at=at(number), job_id=job, tasks=[TaskSpec(kind="sum", count=2)])
        )
    items = await read_log(bus, await bus.stream_last_seq())
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        projector = PostgresProjector(bus, pool)
        await projector.apply_batch(items, list_tasks=False)
        assert await projector.lister.list_pending() == len(jobs)
        xmins = await pool.fetch(
            "SELECT DISTINCT xmin::text FROM jobstream.job_batches WHERE listed"
        )
        assert len(xmins) == transactions
        tasks = await pool.fetchval("SELECT count(*) FROM jobstream.tasks")
        assert tasks == 2 * len(jobs)
        await assert_replay_equals_live(bus, pool)
    finally:
        await pool.close()
