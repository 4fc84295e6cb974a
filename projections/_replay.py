"""Replay: rebuild the read models or the NDJSON partitions from the log, or print the log.

PostgreSQL is rebuilt into a fresh schema while the live one keeps serving, then swapped in
by renaming both in one transaction. The live projector needs no pause: each of its batches
locks and checks its checkpoint row, so after the swap it skips what the rebuild already
applied, or reads again from where the rebuild stopped.

A rebuild into N partitions (`partitions`) folds in N processes (`_replay_partitions.py`)
and leaves the layout of N projector processes: its row in `projection_layouts` and a
checkpoint per partition. Projectors of the old layout refuse the swapped-in schema at
their next batch (`LayoutMismatch`); start N new ones.
"""

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import asyncpg
import nats.js.errors

from jobstream.events import (
    EVENT_SUBJECTS,
    EVENTS_STREAM,
    TASK_EVENT_SUBJECTS,
    Bus,
    JobstreamError,
    SourceItem,
    event_batches,
    new_id,
    with_retry,
)
from jobstream.projections._database import DATA_ERRORS
from jobstream.projections._fold import (
    REPLAY_BATCH_MAX,
    collector_paused,
    drop_indexes,
    fold_log,
    log_between,
    rebuild_indexes,
    write_fold,
)
from jobstream.projections._migrate import DEFAULT_SCHEMA, migrate, quote_ident
from jobstream.projections._ndjson import (
    FILE_PREFIX,
    FILE_SUFFIX,
    PartitionWriter,
    ResultLine,
    exclusive_results_dir,
    result_lines,
)
from jobstream.projections._partitions import Partition, job_of_event_subject
from jobstream.projections._postgres import DEFAULT_NAME, PostgresProjector
from jobstream.projections._replay_partitions import Connections, fold_partitions
from jobstream.projections._rules import ReadModel

log = logging.getLogger(__name__)

# A row the database (or asyncpg's encoder) will not take: the bulk replay steps aside.
_BULK_REFUSED_ERRORS: tuple[type[Exception], ...] = (*DATA_ERRORS, OverflowError, ValueError)
PROGRESS_INTERVAL_S = 0.2

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReplayReport:
    target: str
    first_seq: int
    last_seq: int
    events: int
    seconds: float
    schema: str = ""
    replaced_schema: str | None = None
    files: int = 0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _no_progress(done: int, total: int) -> None:
    return None


async def _log_bounds(bus: Bus, from_seq: int) -> tuple[int, int]:
    """The sequences to replay: from `from_seq` (or the log's first) to the log's end now."""
    info = await bus.js.stream_info(EVENTS_STREAM)
    return max(1, from_seq, info.state.first_seq or 1), info.state.last_seq


# --- PostgreSQL ------------------------------------------------------------------------------


async def replay_postgres(
    bus: Bus,
    pool: asyncpg.Pool,
    *,
    schema: str = DEFAULT_SCHEMA,
    from_seq: int = 1,
    swap: bool = True,
    keep_old: bool = False,
    bulk: bool = True,
    batch_max: int = REPLAY_BATCH_MAX,
    partitions: int = 1,
    connections: Connections | None = None,
    on_progress: Progress = _no_progress,
) -> ReplayReport:
    """Rebuild the read models of `schema` from the log into a fresh schema; swap it in.

    `bulk` folds the log in memory and loads the tables with COPY (`_fold.py`); should the
    database refuse a row (a value out of its range), the live projector's way rebuilds it
    instead, parking the refused events as the live projector does.

    `partitions`: the layout to build, for that many projector processes; the bulk way then
    folds in as many processes, which reach NATS and PostgreSQL by `connections`.
    """
    layout = [Partition(index, partitions) for index in range(partitions)]
    if partitions > 1 and bulk and connections is None:
        raise ValueError("a bulk replay into several partitions needs the connections")
    first, last = await _log_bounds(bus, from_seq)
    build = f"{schema}_replay_{new_id()[-8:].lower()}"
    started = time.perf_counter()
    built = False
    if bulk and partitions == 1:
        built = await _build_bulk(bus, pool, build, first, last, on_progress)
    elif bulk:
        assert connections is not None
        built = await _build_bulk_partitions(
            connections, pool, build, first, last, partitions, on_progress
        )
    if not built:
        await _build_with_projector(bus, pool, build, first, last, layout, batch_max, on_progress)
    seconds = time.perf_counter() - started
    on_progress(last - first + 1, last - first + 1)
    replaced = await swap_schemas(pool, schema, build, keep_old=keep_old) if swap else None
    return ReplayReport(
        target="postgres",
        first_seq=first,
        last_seq=last,
        events=max(0, last - first + 1),
        seconds=seconds,
        schema=schema if swap else build,
        replaced_schema=replaced,
    )


async def _create_build_schema(
    pool: asyncpg.Pool, build: str, checkpoint_seq: int, partitions: int = 1
) -> None:
    """An empty schema of the read models, of the layout of `partitions` (whatever the log
    holds: once swapped in, a projector of another count is refused at its next batch),
    with a checkpoint per partition at `checkpoint_seq`."""
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(build)} CASCADE")
        await migrate(conn, build)
        await conn.execute(
            f"INSERT INTO {quote_ident(build)}.projection_layouts (projection, partitions)"
            " VALUES ($1, $2)",
            DEFAULT_NAME,
            partitions,
        )
        if checkpoint_seq > 0:
            await conn.executemany(
                f"INSERT INTO {quote_ident(build)}.projection_checkpoints (projection, last_seq)"
                " VALUES ($1, $2)",
                [
                    (Partition(index, partitions).checkpoint_name(DEFAULT_NAME), checkpoint_seq)
                    for index in range(partitions)
                ],
            )


async def _build_bulk(
    bus: Bus, pool: asyncpg.Pool, build: str, first: int, last: int, on_progress: Progress
) -> bool:
    """Fold `first`..`last` in memory and COPY the tables into `build`; False if the
    database refused a row (`build` is then left empty for the projector's way)."""
    started = time.perf_counter()
    fold = ReadModel(list_batches=True)

    def on_reached(seq: int) -> None:
        on_progress(seq - first + 1, last - first + 1)

    with collector_paused():
        await fold_log(bus, fold, first, last, on_reached=on_reached)
        folded = time.perf_counter()
        await _create_build_schema(pool, build, max(first - 1, min(last, fold.last_seq)))
        try:
            await write_fold(pool, build, fold)
        except _BULK_REFUSED_ERRORS as exc:
            log.warning(
                "bulk replay: the database refused a row (%s); rebuilding event by event", exc
            )
            return False
    log.info(
        "bulk replay of seq %d..%d: read and folded in %.2fs, written in %.2fs",
        first,
        last,
        folded - started,
        time.perf_counter() - folded,
    )
    return True


async def _build_bulk_partitions(
    connections: Connections,
    pool: asyncpg.Pool,
    build: str,
    first: int,
    last: int,
    partitions: int,
    on_progress: Progress,
) -> bool:
    """`_build_bulk` in a process per partition (`fold_partitions`)."""
    started = time.perf_counter()
    await _create_build_schema(pool, build, last if last >= first else first - 1, partitions)
    if last < first:
        return True
    async with pool.acquire() as conn:
        rebuild = await drop_indexes(conn, build)
    if not await fold_partitions(connections, build, first, last, partitions, on_progress):
        log.warning("bulk replay: the database refused a row; rebuilding event by event")
        return False
    copied = time.perf_counter()
    await rebuild_indexes(pool, rebuild)
    log.info(
        "bulk replay of seq %d..%d in %d processes: folded and copied in %.2fs, indexed in %.2fs",
        first,
        last,
        partitions,
        copied - started,
        time.perf_counter() - copied,
    )
    return True


async def _build_with_projector(
    bus: Bus,
    pool: asyncpg.Pool,
    build: str,
    first: int,
    last: int,
    layout: list[Partition],
    batch_max: int,
    on_progress: Progress,
) -> None:
    await _create_build_schema(pool, build, first - 1, len(layout))
    projectors = [
        PostgresProjector(bus, pool, schema=build, partition=partition, batch_max=batch_max)
        for partition in layout
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(projector.run(stop)) for projector in projectors]
    try:
        while (reached := min(projector.last_seq for projector in projectors)) < last:
            for task in running:
                if task.done():
                    task.result()
                    raise JobstreamError("the replay projector stopped before the log's end")
            on_progress(max(0, reached - first + 1), last - first + 1)
            await asyncio.sleep(PROGRESS_INTERVAL_S)
    finally:
        stop.set()
        await asyncio.gather(*running)
    for projector in projectors:
        await projector.lister.list_pending()


async def swap_schemas(
    pool: asyncpg.Pool, schema: str, build: str, *, keep_old: bool = False
) -> str | None:
    """Put `build` in the place of `schema` atomically; return the old schema's new name (or
    None if it was dropped or did not exist)."""
    old = f"{schema}_old_{new_id()[-8:].lower()}"
    async with pool.acquire() as conn:
        async with conn.transaction():
            exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
            if exists:
                # Wait for the live projector's batch in flight; the next one sees the new schema.
                await conn.execute(
                    f"LOCK TABLE {quote_ident(schema)}.projection_checkpoints IN EXCLUSIVE MODE"
                )
                await conn.execute(
                    f"ALTER SCHEMA {quote_ident(schema)} RENAME TO {quote_ident(old)}"
                )
            await conn.execute(f"ALTER SCHEMA {quote_ident(build)} RENAME TO {quote_ident(schema)}")
        if not exists:
            return None
        if keep_old:
            return old
        await conn.execute(f"DROP SCHEMA {quote_ident(old)} CASCADE")
    log.info("read models of %s rebuilt and swapped in", schema)
    return None


async def _rename_schema(conn: asyncpg.Connection, name: str, new_name: str) -> None:
    await conn.execute(f"ALTER SCHEMA {quote_ident(name)} RENAME TO {quote_ident(new_name)}")


# --- NDJSON ----------------------------------------------------------------------------------


async def replay_ndjson(
    bus: Bus,
    results_dir: Path,
    *,
    from_seq: int = 1,
    on_progress: Progress = _no_progress,
) -> ReplayReport:
    """Rewrite the day files from the log: written beside them, then renamed over them.

    Days the replayed part of the log does not reach are left alone (they may be the only
    history left once the stream's retention has dropped their events).
    """
    first, last = await _log_bounds(bus, from_seq)
    scratch = results_dir / f".replay-{new_id()[-8:].lower()}"
    await asyncio.to_thread(scratch.mkdir, parents=True)
    started = time.perf_counter()
    try:
        with _replay_lock(results_dir):
            await _write_partitions(bus, scratch, first, last, on_progress)
            files = await asyncio.to_thread(_move_partitions, scratch, results_dir)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
    return ReplayReport(
        target="ndjson",
        first_seq=first,
        last_seq=last,
        events=max(0, last - first + 1),
        seconds=time.perf_counter() - started,
        files=files,
    )


@contextlib.contextmanager
def _replay_lock(results_dir: Path) -> Iterator[None]:
    try:
        with exclusive_results_dir(results_dir):
            yield
    except JobstreamError as exc:
        if "another NDJSON projector" not in str(exc):
            raise
        raise JobstreamError(
            f"an NDJSON projector is writing to {results_dir}: stop it (or run the projectors "
            "with --only postgres) while the files are rewritten"
        ) from exc


async def _write_partitions(
    bus: Bus, scratch: Path, first: int, last: int, on_progress: Progress
) -> None:
    if last < first:
        return
    writer = PartitionWriter(scratch)
    stop = asyncio.Event()
    try:
        batches = event_batches(
            bus,
            start_seq=first,
            stop=stop,
            filter_subject=TASK_EVENT_SUBJECTS,
            batch_max=REPLAY_BATCH_MAX,
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                lines = _lines_up_to(batch, last)
                if lines:
                    await asyncio.to_thread(writer.write, lines)
                on_progress(min(batch[-1].seq, last) - first + 1, last - first + 1)
                if batch[-1].seq >= last or await _nothing_more(bus, batch[-1].seq, last):
                    break
    finally:
        writer.close()


def _lines_up_to(batch: list[SourceItem], last: int) -> list[ResultLine]:
    lines: list[ResultLine] = []
    for item in batch:
        if item.seq > last:
            break
        lines += result_lines(item)
    return lines


async def _nothing_more(bus: Bus, seq: int, last: int) -> bool:
    """True when no task event lies after `seq` up to `last` (the filter hides other events)."""

    async def next_seq() -> int | None:
        try:
            nxt = await bus.js.get_msg(
                EVENTS_STREAM, seq=seq + 1, subject=TASK_EVENT_SUBJECTS, direct=True, next=True
            )
        except nats.js.errors.NotFoundError:
            return None
        return nxt.seq

    # Only "not found" means the end: a transient error must not cut the rewrite short.
    found = await with_retry(next_seq, what="look for the next task event")
    return found is None or found > last


def _move_partitions(scratch: Path, results_dir: Path) -> int:
    files = sorted(scratch.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
    for path in files:
        os.replace(path, results_dir / path.name)
    _fsync_dir(results_dir)
    return len(files)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- stdout ----------------------------------------------------------------------------------


async def replay_stdout(
    bus: Bus,
    out: BinaryIO,
    *,
    from_seq: int = 1,
    job_id: str | None = None,
) -> ReplayReport:
    """Write the log's events (from `from_seq`, optionally one job's) as NDJSON to `out`."""
    first, last = await _log_bounds(bus, from_seq)
    started = time.perf_counter()
    written = 0
    async for items, _ in log_between(bus, first, last, filter_subject=EVENT_SUBJECTS):
        for item in items:
            if job_id is None or job_of_event_subject(item.subject) == job_id:
                out.write(item.data.rstrip(b"\n") + b"\n")
                written += 1
    out.flush()
    return ReplayReport(
        target="stdout",
        first_seq=first,
        last_seq=last,
        events=written,
        seconds=time.perf_counter() - started,
    )
