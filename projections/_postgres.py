"""The Postgres projector: the event log applied, batch by batch, to the read-model tables.

Exactly once: each batch is one transaction that locks the projection's checkpoint row,
skips the events at or below it, applies the rest and moves the checkpoint to the batch's
last sequence. A crash at any point neither loses nor doubles an effect, a retried batch is
a no-op, and two projectors of one name take turns.

One rule set: a batch loads the rows its events name (one query per table), applies the
events to them in log order with the rules of `_rules.ReadModel` (the replay's own), and
writes back the rows that changed, one statement per table (`sql/projector.sql`). So the
result is the replay's, whatever the batch boundaries.

Robust: a payload that is not an event is parked in `rejected_events`; an event the database
refuses (a NUL character, a number out of range) is found by bisecting the batch under
savepoints and parked there too, so no input stalls the projector.

Partitioned: N projectors, each given its `Partition`, share the log by job
(`_partitions.py`); each has its own checkpoint row, and a schema serves one layout
(`_layout.py`): a projector of another partition count refuses to start, and every batch
checks it in the statement that locks the checkpoint, so of two layouts started together
on an empty schema the second to commit is refused (`LayoutMismatch`) and writes nothing.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import NamedTuple, TypeVar

import asyncpg

from jobstream.events import (
    DEFAULT_BATCH_MAX,
    POSTGRES_PROJECTION,
    Bus,
    JobTasksAdded,
    SourceItem,
    backoff_s,
    combined_checkpoints,
    event_batches,
    sleep_unless_stopped,
)
from jobstream.projections._database import DATA_ERRORS, RETRY_CAP_S, RETRY_ERRORS, connection
from jobstream.projections._layout import LayoutMismatch, check_layout, lock_checkpoint
from jobstream.projections._listing import TaskLister, unlisted_batches
from jobstream.projections._migrate import DEFAULT_SCHEMA, quote_ident
from jobstream.projections._partitions import ONE_PARTITION, Partition
from jobstream.projections._queries import load_queries
from jobstream.projections._rows import keys_of, load, parked_rows, write
from jobstream.projections._rules import ReadModel

log = logging.getLogger(__name__)

DEFAULT_NAME = POSTGRES_PROJECTION

T = TypeVar("T")


class _Rewound(Exception):
    """The checkpoint is below the last one this projector committed."""

    def __init__(self, *, expected: int, found: int) -> None:
        super().__init__(f"checkpoint {found}, expected at least {expected}")
        self.expected = expected
        self.found = found


# Errors after which a connection is in a clean state (its transaction rolled back).
_CLEAN_ERRORS: tuple[type[Exception], ...] = (*DATA_ERRORS, _Rewound, LayoutMismatch)


class _Parked(NamedTuple):
    seq: int
    subject: str
    error: str
    payload: bytes


async def checkpoint(
    pool: asyncpg.Pool, *, schema: str = DEFAULT_SCHEMA, name: str = DEFAULT_NAME
) -> int:
    """The last stream sequence projection `name` applied to `schema` (0: none yet); of a
    partitioned projection, its slowest partition's. (A partition's own: its checkpoint
    row's name, `Partition.checkpoint_name`.)"""
    async with connection(pool) as conn, conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        rows = await conn.fetch(load_queries()["read_checkpoints"], name)
    return combined_checkpoints({row["projection"]: row["last_seq"] for row in rows}).get(name, 0)


async def caught_up(
    pool: asyncpg.Pool, seq: int, *, schema: str = DEFAULT_SCHEMA, name: str = DEFAULT_NAME
) -> bool:
    """Whether projection `name` (every partition of it) applied the log up to `seq` into
    `schema`, the task rows of streamed jobs included."""
    if await checkpoint(pool, schema=schema, name=name) < seq:
        return False
    return await unlisted_batches(pool, schema=schema) == 0


class PostgresProjector:
    """Applies `evt.>` to the read models in `schema`, from its checkpoint on, until stopped."""

    def __init__(
        self,
        bus: Bus,
        pool: asyncpg.Pool,
        *,
        schema: str = DEFAULT_SCHEMA,
        name: str = DEFAULT_NAME,
        partition: Partition = ONE_PARTITION,
        batch_max: int = DEFAULT_BATCH_MAX,
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.schema = schema
        self.projection = name
        self.partition = partition
        # The checkpoint row: the projection's name, or its partition's.
        self.name = partition.checkpoint_name(name)
        self.batch_max = batch_max
        self.last_seq = 0
        # synchronous_commit off: a commit does not wait for its WAL flush. A database crash
        # may then lose the last batches, checkpoint included, and they are applied again
        # (`_Rewound`): the log, not the read model, is what must be durable.
        self._search_path = (
            f"SET LOCAL search_path TO {quote_ident(schema)}; SET LOCAL synchronous_commit TO off"
        )
        self._queries = load_queries()
        self.lister = TaskLister(bus, pool, schema=schema, name=name, partition=partition)

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set, and write the task rows of streamed jobs beside it;
        database outages are waited out, batch by batch."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.lister.run(stop))
                group.create_task(self._project(stop))
        except* LayoutMismatch as mismatch:
            raise mismatch.exceptions[0] from None

    async def _project(self, stop: asyncio.Event) -> None:
        read = functools.partial(self._own_checkpoint, check_layout_first=True)
        while not stop.is_set():
            start = await self._retrying(read, stop)
            if start is None:
                break
            log.info("projection %s into %s: resuming after seq %d", self.name, self.schema, start)
            try:
                await self._follow(start, stop)
            except _Rewound as exc:
                log.warning(
                    "projection %s: the checkpoint went back from %d to %d (a database restored"
                    " or crashed without its last commits); reading again from there",
                    self.name,
                    exc.expected,
                    exc.found,
                )
        log.info("projection %s stopped after seq %d", self.name, self.last_seq)

    async def _own_checkpoint(self, *, check_layout_first: bool = False) -> int:
        """This partition's checkpoint (0: none yet); `check_layout_first`: once the schema's
        layout is checked to be its own."""
        async with connection(self.pool) as conn, conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {quote_ident(self.schema)}")
            if check_layout_first:
                await check_layout(conn, self.projection, self.partition)
            last = await conn.fetchval(self._queries["read_checkpoint"], self.name)
        return int(last) if last is not None else 0

    async def _follow(self, start: int, stop: asyncio.Event) -> None:
        self.last_seq = start
        batches = event_batches(
            self.bus,
            start_seq=start + 1,
            stop=stop,
            **self.partition.reading(),
            batch_max=self.batch_max,
        )
        async with aclosing(batches):
            async for batch in batches:
                apply = functools.partial(self._apply_batch, batch, after=self.last_seq)
                if await self._retrying(apply, stop) is None:
                    return

    async def apply_batch(self, items: Sequence[SourceItem], *, list_tasks: bool = True) -> int:
        """Apply `items` (in log order) in one transaction; return the checkpoint after it.

        Items at or below the checkpoint are skipped, so offering a batch twice is harmless.
        Then the task rows of the streamed jobs' batches it took are written, unless
        `list_tasks` is False: they are left to `lister`, as while the projector runs.
        """
        if not items:
            return await self._own_checkpoint()
        last_seq = await self._apply_batch(items, after=None)
        if list_tasks:
            await self.lister.list_pending()
        return last_seq

    async def _apply_batch(self, items: Sequence[SourceItem], *, after: int | None) -> int:
        """`apply_batch`, first checking that the checkpoint is not below `after`."""
        async with connection(self.pool, clean=_CLEAN_ERRORS) as conn:
            try:
                last_seq, parked = await self._transaction(conn, items, after, isolate=False)
            except DATA_ERRORS as exc:
                log.warning(
                    "seq %d..%d: %s; looking for the event at fault",
                    items[0].seq,
                    items[-1].seq,
                    exc,
                )
                last_seq, parked = await self._transaction(conn, items, after, isolate=True)
        for rejected in parked:
            log.warning("parked seq %d on %s: %s", rejected.seq, rejected.subject, rejected.error)
        self.last_seq = last_seq
        if any(isinstance(item.event, JobTasksAdded) for item in items):
            self.lister.wake.set()
        return last_seq

    async def _transaction(
        self,
        conn: asyncpg.Connection,
        items: Sequence[SourceItem],
        after: int | None,
        *,
        isolate: bool,
    ) -> tuple[int, list[_Parked]]:
        async with conn.transaction():
            await conn.execute(self._search_path)
            # Refused (`LayoutMismatch`, not retried) unless the schema's layout is ours.
            last_seq = await lock_checkpoint(conn, self._queries, self.projection, self.partition)
            if after is not None and last_seq < after:
                raise _Rewound(expected=after, found=last_seq)
            fresh = [item for item in items if item.seq > last_seq]
            if not fresh:
                return last_seq, []
            parked: list[_Parked] = []
            if isolate:
                await self._apply_isolating(conn, fresh, parked)
            else:
                parked += await self._apply(conn, fresh)
            await conn.execute(self._queries["save_checkpoint"], self.name, fresh[-1].seq)
            return fresh[-1].seq, parked

    async def _apply(self, conn: asyncpg.Connection, items: Sequence[SourceItem]) -> list[_Parked]:
        """Load the rows `items` name, apply them, write what changed; return what the rules
        parked (written too)."""
        model = ReadModel(list_batches=False, partition=self.partition.index)
        loaded = await load(conn, self._queries, keys_of(items), model)
        for item in items:
            model.apply_item(item)
        await write(conn, self._queries, loaded, schema=self.schema)
        rejected = [_Parked(*row) for row in parked_rows(model)]
        if rejected:
            await conn.executemany(self._queries["reject_event"], rejected)
        return rejected

    async def _apply_isolating(
        self,
        conn: asyncpg.Connection,
        items: Sequence[SourceItem],
        parked: list[_Parked],
    ) -> None:
        """Apply `items` under savepoints, halving them on a data error to park its event."""
        if not items:
            return
        try:
            async with conn.transaction():
                parked += await self._apply(conn, items)
        except DATA_ERRORS as exc:
            if len(items) == 1:
                item = items[0]
                rejected = _Parked(item.seq, item.subject, str(exc), item.data)
                await conn.execute(self._queries["reject_event"], *rejected)
                parked.append(rejected)
                return
            middle = len(items) // 2
            await self._apply_isolating(conn, items[:middle], parked)
            await self._apply_isolating(conn, items[middle:], parked)

    async def _retrying(
        self, operation: Callable[[], Awaitable[T]], stop: asyncio.Event
    ) -> T | None:
        """Run `operation` until it succeeds or `stop` is set (then None)."""
        attempt = 0
        while not stop.is_set():
            try:
                return await operation()
            except RETRY_ERRORS as exc:
                if isinstance(exc, ValueError):  # asyncpg's client-side errors: a bug
                    raise
                attempt += 1
                log.warning("projection %s: %r, retry %d", self.name, exc, attempt)
            await sleep_unless_stopped(stop, backoff_s(attempt, cap_s=RETRY_CAP_S))
        return None
