"""The bulk replay: the whole log applied to rows in memory (`_rules.ReadModel`), then the
final rows written with one COPY per table into a fresh schema.

Applying the log through the live projector costs a read and a write of every touched row per
batch; a replay into an empty schema needs neither. The rules are the live projector's own, so
the two give identical tables (tests/integration/test_replay.py, test_replay_fold.py).

Memory grows with the read model (about 1 KB per task), not with the log.
"""

import asyncio
import contextlib
import gc
import operator
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from jobstream.events import Bus, SourceItem, event_batches
from jobstream.projections._migrate import quote_ident
from jobstream.projections._partitions import ONE_PARTITION, Partition
from jobstream.projections._rows import in_columns
from jobstream.projections._rules import COLUMNS, ReadModel

# Events per batch read: a replay reads long, and big batches cost the server less.
REPLAY_BATCH_MAX = 5000


def table_rows(model: ReadModel) -> dict[str, list[tuple[Any, ...]]]:
    """Each table's rows as tuples in `COLUMNS` order."""
    attempts = (a for per_task in model.attempts.values() for a in per_task.values())
    crawl = operator.itemgetter(*COLUMNS["crawl_stats"])
    return {
        "jobs": in_columns("jobs", model.jobs.values()),
        "tasks": in_columns("tasks", model.expanded_tasks()),
        "attempt_rows": in_columns("attempt_rows", attempts),
        "workers": in_columns("workers", model.workers.values()),
        "rejected_events": in_columns("rejected_events", model.rejected.values()),
        "job_batches": in_columns("job_batches", model.batches),
        "crawl_stats": [crawl(row) for row in model.crawl.table_rows()],
        "stats_per_minute": in_columns("stats_per_minute", model.minute_stats.values()),
        "job_status_counts": in_columns("job_status_counts", model.status_counts.values()),
    }


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (on again after, if it was on).

    A fold's model is a few dicts of rows that only grow, and each full collection walks all
    of them: ten passes per 100,000 events, a fifth of the fold's CPU. Neither the fold nor
    the read and the COPY make reference cycles (the objects the collector tracks are as many
    after a fold with it off as with it on), so nothing waits for it meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def fold_log(
    bus: Bus,
    model: ReadModel,
    first: int,
    last: int,
    *,
    partition: Partition = ONE_PARTITION,
    on_reached: Callable[[int], None] = lambda seq: None,
) -> None:
    """Apply the log's `first`..`last` (`partition`'s part of it) to `model`, batch by batch;
    `on_reached(seq)` after each batch, with how far it reached."""
    async for items, reached in log_between(bus, first, last, **partition.reading()):
        for item in items:
            model.apply_item(item)
        on_reached(reached)


async def log_between(
    bus: Bus, first: int, last: int, **reading: Any
) -> AsyncIterator[tuple[list[SourceItem], int]]:
    """The log's items `first`..`last` in batches (`event_batches` with `reading`), each with
    how far it reached; none if `last` < `first`."""
    if last < first:
        return
    batches = event_batches(
        bus, start_seq=first, stop=asyncio.Event(), batch_max=REPLAY_BATCH_MAX, **reading
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            yield [item for item in batch if item.seq <= last], min(batch[-1].seq, last)
            if batch[-1].seq >= last:
                return


async def write_fold(pool: asyncpg.Pool, schema: str, model: ReadModel) -> None:
    """Load the fold's rows into the empty tables of `schema`: indexes dropped, one COPY per
    table on its own connection, indexes built again (a sort each, not row by row)."""
    async with pool.acquire() as conn:
        rebuild = await drop_indexes(conn, schema)
    await copy_fold(pool, schema, model)
    await rebuild_indexes(pool, rebuild)


async def copy_fold(pool: asyncpg.Pool, schema: str, model: ReadModel) -> None:
    """COPY the fold's rows into the tables of `schema`, a connection per table."""

    async def copy(table: str, rows: list[tuple[Any, ...]]) -> None:
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(
                table, schema_name=schema, columns=list(COLUMNS[table]), records=rows
            )

    tables = table_rows(model)
    await asyncio.gather(*(copy(table, rows) for table, rows in tables.items() if rows))


@dataclass(frozen=True)
class IndexRebuild:
    """The statements that make a schema's dropped primary keys and indexes again."""

    keys: list[str]
    indexes: list[str]


async def rebuild_indexes(pool: asyncpg.Pool, rebuild: IndexRebuild) -> None:
    """Run `drop_indexes`'s statements, each on a connection of its own: the primary keys
    first (adding one locks its table whole), then every other index at once (building one
    only shares its table's lock, so a table's indexes are built side by side: `tasks` has
    five besides its key)."""

    async def run(statement: str) -> None:
        async with pool.acquire() as conn:
            await conn.execute(statement)

    await asyncio.gather(*(run(statement) for statement in rebuild.keys))
    await asyncio.gather(*(run(statement) for statement in rebuild.indexes))


async def drop_indexes(conn: asyncpg.Connection, schema: str) -> IndexRebuild:
    """Drop the primary keys and indexes of `schema`'s tables; return the statements that
    make them again."""
    rebuild = IndexRebuild(keys=[], indexes=[])
    drops: list[str] = []
    keys = await conn.fetch(
        """
        SELECT t.relname AS table_name, c.conname, pg_get_constraintdef(c.oid) AS definition
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = $1 AND c.contype = 'p'
        """,
        schema,
    )
    indexes = await conn.fetch(
        """
        SELECT i.tablename AS table_name, i.indexname, i.indexdef
        FROM pg_indexes i
        WHERE i.schemaname = $1
          AND NOT EXISTS (
              SELECT 1 FROM pg_constraint c
              JOIN pg_namespace n ON n.oid = c.connamespace
              WHERE n.nspname = $1 AND c.conname = i.indexname
          )
        """,
        schema,
    )
    for key in keys:
        table = f"{quote_ident(schema)}.{quote_ident(key['table_name'])}"
        drops.append(f"ALTER TABLE {table} DROP CONSTRAINT {quote_ident(key['conname'])}")
        rebuild.keys.append(
            f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(key['conname'])} {key['definition']}"
        )
    for index in indexes:
        drops.append(f"DROP INDEX {quote_ident(schema)}.{quote_ident(index['indexname'])}")
        rebuild.indexes.append(index["indexdef"])
    async with conn.transaction():
        for statement in drops:
            await conn.execute(statement)
    return rebuild
