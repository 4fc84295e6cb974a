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
from jobstream.projections import PostgresProjector, caught_up
from jobstream.projections._postgres import _Batch
from tests.integration.test_projections import read_log
from tests.integration.test_replay_fold import (
    assert_replay_equals_live,
    at,
    big_chunked_job,
    tricky_log,
)
from tests.integration.test_worker_dispatcher import running


@pytest.mark.parametrize("batch_max", [2, 7])
async def test_batches_applied_ahead_give_the_replays_tables(
    bus: Bus, database_url: str, batch_max: int
) -> None:
    for event in [*tricky_log(), *big_chunked_job()]:
        await bus.publish_event(event)
    last = await bus.stream_last_seq()
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        projector = PostgresProjector(bus, pool, batch_max=batch_max)
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
        # A batch that takes the job's task batch (listed later) carries nothing; the next
        # one, applied in its own transaction, does.
        taken = _Batch(items[:2], after=0)
        await projector._apply_batch(taken)
        assert taken.carried is None
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
