"""A schema's read models are written by one layout (partition count) of the projection:
claimed by the first batch that commits, checked by every batch, carried by a replay."""

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest

from jobstream.events import Bus, JobSubmitted, TaskSpec, layout_of
from jobstream.projections import (
    LayoutMismatch,
    Partition,
    PostgresProjector,
    caught_up,
    load_queries,
    migrate,
    replay_postgres,
)
from jobstream.projections._layout import check_layout, lock_checkpoint
from tests.integration.test_projections import read_log
from tests.integration.test_replay import TABLES, table_rows
from tests.integration.test_replay_fold import tricky_log
from tests.integration.test_worker_dispatcher import running

TIMEOUT_S = 30.0


async def tables(pool: asyncpg.Pool, schema: str = "jobstream") -> dict[str, Any]:
    async with pool.acquire() as conn:
        return {table: await table_rows(conn, schema, table) for table in TABLES}


async def layouts(pool: asyncpg.Pool, schema: str = "jobstream") -> dict[str, int]:
    rows = await pool.fetch(f'SELECT projection, partitions FROM "{schema}".projection_layouts')
    return {row[0]: row[1] for row in rows}


async def test_of_two_layouts_started_on_an_empty_schema_the_second_to_write_is_refused(
    bus: Bus, database_url: str
) -> None:
    for event in tricky_log()[:12]:
        await bus.publish_event(event)
    last = await bus.stream_last_seq()
    items = await read_log(bus, last)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        one = PostgresProjector(bus, pool)
        half = PostgresProjector(bus, pool, partition=Partition(0, 2))
        # Both start: nothing is written yet, so neither is refused.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL search_path TO jobstream")
            for projector in (one, half):
                await check_layout(conn, "postgres", projector.partition)
        assert await one.apply_batch(items) == last
        written = await tables(pool)
        assert await layouts(pool) == {"postgres": 1}
        with pytest.raises(LayoutMismatch, match="built by 1 projector partition"):
            await half.apply_batch(items)
        # Nothing of the second: not even its checkpoint row.
        assert await tables(pool) == written
        replayed = await replay_postgres(bus, pool, swap=False)
        assert await tables(pool, replayed.schema) == written
        # The winner goes on.
        await bus.publish_event(tricky_log()[12])
        assert await one.apply_batch(await read_log(bus, last + 1, start_seq=last + 1)) == last + 1
    finally:
        await pool.close()


async def test_of_two_layouts_running_together_one_writes_and_the_other_stops(
    bus: Bus, database_url: str
) -> None:
    """Both layouts run whole (one projector; two of two): the first to commit a batch
    claims the schema, the others stop with `LayoutMismatch`, and the tables are a replay's
    into the winner's layout."""
    for event in tricky_log():
        await bus.publish_event(event)
    last = await bus.stream_last_seq()
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=8)
    stop = asyncio.Event()
    layout_of_task: dict[asyncio.Task[None], int] = {}
    try:
        for partition in (Partition(0, 1), Partition(0, 2), Partition(1, 2)):
            projector = PostgresProjector(bus, pool, partition=partition, batch_max=5)
            layout_of_task[asyncio.create_task(projector.run(stop))] = partition.count
        async with asyncio.timeout(TIMEOUT_S):
            while not await caught_up(pool, last):
                await asyncio.sleep(0.05)
            (winner,) = set((await layouts(pool)).values())
            losers = [task for task, count in layout_of_task.items() if count != winner]
            await asyncio.wait(losers)
        for task in losers:
            with pytest.raises(LayoutMismatch, match=f"built by {winner} projector partition"):
                task.result()
        stop.set()
        await asyncio.gather(*(task for task in layout_of_task if task not in losers))
        checkpoints = await pool.fetch("SELECT projection FROM jobstream.projection_checkpoints")
        assert {layout_of(row[0])[2] for row in checkpoints} == {winner}
        replayed = await replay_postgres(bus, pool, swap=False, partitions=winner, bulk=False)
        assert await tables(pool, replayed.schema) == await tables(pool)
    finally:
        stop.set()
        for task in layout_of_task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LayoutMismatch):
                await task
        await pool.close()


async def test_a_claim_in_flight_refuses_the_other_layout_once_committed(
    database_url: str,
) -> None:
    """A claim not committed yet holds the other layout's batch, which is refused once the
    claim commits (its statement cannot see the row: the second read does)."""
    queries = load_queries()
    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    try:
        for conn in (first, second):
            await conn.execute("SET search_path TO jobstream")
        claim = first.transaction()
        await claim.start()
        assert (await lock_checkpoint(first, queries, "postgres", Partition(0, 1))).last_seq == 0

        async def other_layout() -> None:
            async with second.transaction():
                await lock_checkpoint(second, queries, "postgres", Partition(1, 2))

        refused = asyncio.create_task(other_layout())
        await asyncio.sleep(0.3)
        assert not refused.done()  # waiting for the claim's transaction
        await claim.commit()
        with pytest.raises(LayoutMismatch, match="built by 1 projector partition"):
            await asyncio.wait_for(refused, TIMEOUT_S)
        rows = await first.fetch("SELECT projection FROM projection_checkpoints")
        assert [row[0] for row in rows] == ["postgres"]
    finally:
        await first.close()
        await second.close()


async def test_after_a_replay_into_another_layout_the_old_projector_is_refused(
    bus: Bus, database_url: str
) -> None:
    """The replay's schema carries its layout, even of an empty log (no checkpoint says it):
    a projector of the old count running when it is swapped in is refused at its next
    batch, and writes nothing."""
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=8)
    try:
        old = PostgresProjector(bus, pool)
        stop = asyncio.Event()
        task = asyncio.create_task(old.run(stop))
        await asyncio.sleep(0.5)
        assert not task.done()
        report = await replay_postgres(bus, pool, partitions=2, bulk=False)
        assert report.schema == "jobstream"
        assert await layouts(pool) == {"postgres": 2}
        await bus.publish_event(JobSubmitted(job_id="J", tasks=[TaskSpec(kind="noop")]))
        with pytest.raises(LayoutMismatch, match="built by 2 projector partitions"):
            await asyncio.wait_for(task, TIMEOUT_S)
        assert await pool.fetchval("SELECT count(*) FROM jobstream.jobs") == 0
        assert await pool.fetchval("SELECT count(*) FROM jobstream.projection_checkpoints") == 0
        # Projectors of the new count take it.
        new = [PostgresProjector(bus, pool, partition=Partition(i, 2)) for i in range(2)]
        async with running(*(projector.run for projector in new)):
            async with asyncio.timeout(TIMEOUT_S):
                while not await caught_up(pool, await bus.stream_last_seq()):
                    await asyncio.sleep(0.05)
        assert await pool.fetchval("SELECT count(*) FROM jobstream.jobs") == 1
    finally:
        await pool.close()


async def test_the_migration_gives_an_earlier_schema_the_layout_of_its_checkpoints(
    database_url: str,
) -> None:
    """Checkpoints that applied something say the layout (named as `layout_of` reads them);
    those at 0 do not."""
    checkpoints = {
        "postgres/0-of-4": 10,
        "postgres/3-of-4": 0,
        "other": 5,
        "other/0-of-2": 9,
        "odd/name": 7,
        "odd/1-of-3": 2,
        "idle": 0,
        "idle/0-of-2": 0,
    }
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, "earlier")
        await conn.execute("SET search_path TO earlier")
        # A schema migrated before 011, with its checkpoints.
        await conn.execute("DROP TABLE projection_layouts")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 11")
        await conn.executemany(
            "INSERT INTO projection_checkpoints (projection, last_seq) VALUES ($1, $2)",
            list(checkpoints.items()),
        )
        assert await migrate(conn, "earlier") == ["011_projection_layouts.sql"]
        rows = await conn.fetch("SELECT projection, partitions FROM projection_layouts")
        expected: dict[str, int] = {}
        for name, last_seq in sorted(checkpoints.items(), key=lambda item: item[1]):
            projection, _, count = layout_of(name)
            if last_seq > 0:
                expected[projection] = count  # of two, the one that reached further
        assert (
            {row[0]: row[1] for row in rows}
            == expected
            == {
                "postgres": 4,
                "other": 2,
                "odd/name": 1,
                "odd": 3,
            }
        )
    finally:
        await conn.close()
