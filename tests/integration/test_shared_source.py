"""A read of the log shared by several followers (`events.SharedSource`): each gets every
event from its own start exactly once and in order, the log is read once while they keep
up, and one that stalls or starts behind reads on its own until it catches up."""

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path

import asyncpg

from jobstream.events import (
    EVENTS_STREAM,
    Bus,
    SharedSource,
    SourceItem,
    WorkerStarted,
)
from jobstream.projections import (
    NdjsonProjector,
    PostgresProjector,
    caught_up,
    checkpoint,
    last_written_seq,
    replay_ndjson,
)
from tests.integration.test_replay_fold import (
    assert_replay_equals_live,
    at,
    big_chunked_job,
    tricky_log,
)
from tests.integration.test_worker_dispatcher import running

WAIT_S = 20.0
# A stall timeout no test step reaches, where a stall is not what is tested.
NEVER_S = 60.0


async def publish(bus: Bus, count: int, first: int = 0) -> None:
    for index in range(first, first + count):
        await bus.publish_event(
            WorkerStarted(
                at=at(index),
                worker_id=f"w{index}",
                host="h",
                pid=1,
                queues=["default"],
                concurrency=1,
                version="t",
            )
        )


async def readers(bus: Bus) -> int:
    info = await bus.js.stream_info(EVENTS_STREAM)
    return info.state.consumer_count


async def take_until(
    batches: AsyncGenerator[list[SourceItem], None], seqs: list[int], last: int
) -> None:
    """Append the sequences `batches` gives to `seqs` until `last` is among them."""
    while not seqs or seqs[-1] < last:
        batch = await asyncio.wait_for(anext(batches), WAIT_S)
        seqs += [item.seq for item in batch]
        assert all(item.event is not None for item in batch)


async def wait_for_readers(bus: Bus, count: int) -> None:
    for _ in range(int(WAIT_S / 0.05)):
        if await readers(bus) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{await readers(bus)} readers of the log, expected {count}")


async def test_followers_that_keep_up_read_the_log_once(bus: Bus) -> None:
    await publish(bus, 40)
    stop = asyncio.Event()
    source = SharedSource(bus, batch_max=7, stall_s=NEVER_S)
    firsts: list[int] = []
    seconds: list[int] = []
    async with (
        contextlib.aclosing(source.batches(start_seq=1, stop=stop)) as first,
        contextlib.aclosing(source.batches(start_seq=1, stop=stop)) as second,
    ):
        await asyncio.gather(take_until(first, firsts, 40), take_until(second, seconds, 40))
        assert await readers(bus) == 1
        await publish(bus, 25, first=40)
        await asyncio.gather(take_until(first, firsts, 65), take_until(second, seconds, 65))
        assert await readers(bus) == 1
    assert firsts == seconds == list(range(1, 66))
    assert (source.joins, source.stalls) == (2, 0)
    await wait_for_readers(bus, 0)


async def test_what_a_busy_follower_was_handed_comes_in_batches_of_up_to_batch_max(
    bus: Bus,
) -> None:
    stop = asyncio.Event()
    source = SharedSource(bus, batch_max=10, stall_s=NEVER_S)
    async with contextlib.aclosing(source.batches(start_seq=1, stop=stop)) as batches:
        await publish(bus, 1)
        seqs = [item.seq for item in await asyncio.wait_for(anext(batches), WAIT_S)]
        for index in range(1, 21):  # apart: the shared read hands them out one or two at once
            await publish(bus, 1, first=index)
            await asyncio.sleep(0.05)
        for _ in range(int(WAIT_S / 0.05)):
            if source.read_up_to == 21:
                break
            await asyncio.sleep(0.05)
        sizes = []
        while seqs[-1] < 21:
            batch = await asyncio.wait_for(anext(batches), WAIT_S)
            sizes.append(len(batch))
            seqs += [item.seq for item in batch]
    assert seqs == list(range(1, 22))
    assert max(sizes) <= 10
    assert sizes[0] >= 9, sizes  # the batches it was handed, merged


async def test_a_stalled_follower_holds_the_others_up_only_until_it_is_left_behind(
    bus: Bus,
) -> None:
    await publish(bus, 10)
    stop = asyncio.Event()
    source = SharedSource(bus, batch_max=5, depth_batches=1, stall_s=1.0)
    quick: list[int] = []
    stalled: list[int] = []
    async with (
        contextlib.aclosing(source.batches(start_seq=1, stop=stop)) as first,
        contextlib.aclosing(source.batches(start_seq=1, stop=stop)) as second,
    ):
        await asyncio.gather(take_until(first, quick, 10), take_until(second, stalled, 10))
        # The second takes nothing while 200 more events come: the first gets them all.
        taking = asyncio.ensure_future(take_until(first, quick, 210))
        await publish(bus, 200, first=10)
        await asyncio.wait_for(taking, WAIT_S)
        assert source.stalls >= 1
        # The second catches up on its own reader, and joins the shared read again.
        await take_until(second, stalled, 210)
        await publish(bus, 30, first=210)
        await asyncio.gather(take_until(first, quick, 240), take_until(second, stalled, 240))
        # Its next batch comes from the shared read again.
        await publish(bus, 5, first=240)
        await asyncio.gather(take_until(first, quick, 245), take_until(second, stalled, 245))
        # Each follower left behind joined again (on a slow machine the first may be too).
        assert source.joins == 2 + source.stalls
        await wait_for_readers(bus, 1)
    assert quick == stalled == list(range(1, 246))


async def test_the_shared_read_stops_when_its_last_follower_is_left_behind(bus: Bus) -> None:
    stop = asyncio.Event()
    source = SharedSource(bus, batch_max=5, depth_batches=1, stall_s=0.3)
    seqs: list[int] = []
    async with contextlib.aclosing(source.batches(start_seq=1, stop=stop)) as batches:
        await publish(bus, 1)
        await take_until(batches, seqs, 1)
        await publish(bus, 50, first=1)
        for _ in range(int(WAIT_S / 0.05)):
            if source.stalls:
                break
            await asyncio.sleep(0.05)
        await wait_for_readers(bus, 0)  # nobody to read for: no consumer reads on
        await take_until(batches, seqs, 51)
    assert seqs == list(range(1, 52))


async def test_a_follower_that_starts_behind_reads_up_to_the_others_on_its_own(
    bus: Bus,
) -> None:
    await publish(bus, 30)
    stop = asyncio.Event()
    source = SharedSource(bus, batch_max=4, stall_s=NEVER_S)
    ahead: list[int] = []
    behind: list[int] = []
    async with contextlib.aclosing(source.batches(start_seq=11, stop=stop)) as first:
        await take_until(first, ahead, 30)
        async with contextlib.aclosing(source.batches(start_seq=3, stop=stop)) as second:
            await take_until(second, behind, 30)
            await publish(bus, 12, first=30)
            await asyncio.gather(take_until(first, ahead, 42), take_until(second, behind, 42))
            assert source.joins == 2
            await wait_for_readers(bus, 1)
    assert ahead == list(range(11, 43))
    assert behind == list(range(3, 43))


async def test_a_follower_that_starts_ahead_gets_nothing_before_its_start(bus: Bus) -> None:
    await publish(bus, 30)
    stop = asyncio.Event()
    source = SharedSource(bus, batch_max=4, stall_s=NEVER_S)
    early: list[int] = []
    late: list[int] = []
    async with (
        contextlib.aclosing(source.batches(start_seq=1, stop=stop)) as first,
        contextlib.aclosing(source.batches(start_seq=17, stop=stop)) as second,
    ):
        await asyncio.gather(take_until(first, early, 30), take_until(second, late, 30))
    assert early == list(range(1, 31))
    assert late == list(range(17, 31))
    assert source.joins == 2


async def test_stop_ends_every_follower_and_the_shared_read(bus: Bus) -> None:
    await publish(bus, 5)
    stop = asyncio.Event()
    source = SharedSource(bus)
    seqs: list[int] = []
    async with contextlib.aclosing(source.batches(start_seq=1, stop=stop)) as batches:
        await take_until(batches, seqs, 5)
        waiting = asyncio.ensure_future(anext(batches, None))
        await asyncio.sleep(0.2)
        stop.set()
        assert await asyncio.wait_for(waiting, WAIT_S) is None
    await wait_for_readers(bus, 0)


async def test_the_ndjson_files_go_on_while_the_postgres_projector_is_held_up(
    bus: Bus, database_url: str, tmp_path: Path
) -> None:
    """The two projectors of a process on one shared read: while another transaction holds
    the checkpoint rows (as a database outage would stall its batches), the NDJSON projector
    writes every line; the Postgres projector then catches up on its own read, and both come
    out as their replays."""
    results_dir = tmp_path / "results"
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=6)
    source = SharedSource(bus, batch_max=5, depth_batches=1, stall_s=1.0)
    projectors = (
        PostgresProjector(bus, pool, source=source.batches).run,
        NdjsonProjector(bus, results_dir, source=source.batches).run,
    )
    try:
        for event in tricky_log():
            await bus.publish_event(event)
        first = await bus.stream_last_seq()
        async with running(*projectors):
            while not await caught_up(pool, first) or last_written_seq(results_dir) < first - 5:
                await asyncio.sleep(0.05)
            async with pool.acquire() as holder, holder.transaction():
                await holder.execute("SELECT * FROM jobstream.projection_checkpoints FOR UPDATE")
                for event in big_chunked_job():
                    await bus.publish_event(event)
                lined = await bus.stream_last_seq() - 1  # its dead letter; then a requeue
                await publish(bus, 40)  # batches enough to fill what the stalled one holds
                last = await bus.stream_last_seq()
                for _ in range(int(WAIT_S / 0.05)):
                    if source.stalls and last_written_seq(results_dir) >= lined:
                        break
                    await asyncio.sleep(0.05)
                assert source.stalls >= 1
                assert last_written_seq(results_dir) == lined
                assert await checkpoint(pool) <= first
            while not await caught_up(pool, last):
                await asyncio.sleep(0.05)
        await assert_replay_equals_live(bus, pool)
        live_files = {path.name: path.read_bytes() for path in results_dir.iterdir()}
        await replay_ndjson(bus, results_dir)
        assert {path.name: path.read_bytes() for path in results_dir.iterdir()} == live_files
    finally:
        await pool.close()
