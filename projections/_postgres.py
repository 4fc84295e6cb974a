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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from typing import Any, NamedTuple, TypeVar

import asyncpg

from jobstream.events import (
    DEFAULT_BATCH_MAX,
    POSTGRES_PROJECTION,
    BatchSource,
    Bus,
    SourceItem,
    TaskChunkFinished,
    backoff_s,
    combined_checkpoints,
    event_batches,
    sleep_unless_stopped,
)
from jobstream.projections._database import DATA_ERRORS, RETRY_CAP_S, RETRY_ERRORS, connection
from jobstream.projections._layout import LayoutMismatch, Locked, check_layout, lock_checkpoint
from jobstream.projections._listing import (
    LIST_AFTER_S,
    ListingPace,
    TaskLister,
    unlisted_batches,
)
from jobstream.projections._migrate import DEFAULT_SCHEMA, quote_ident
from jobstream.projections._partitions import ONE_PARTITION, Partition
from jobstream.projections._queries import load_queries
from jobstream.projections._rows import (
    Carried,
    Loaded,
    keys_of,
    load,
    names_rows,
    parked_rows,
    take_carried,
    unknown_keys,
    write,
)
from jobstream.projections._rules import Keys, ReadModel

log = logging.getLogger(__name__)

DEFAULT_NAME = POSTGRES_PROJECTION

# The most tasks a batch applies, about: the log's batches are cut into runs this size, so
# that while one is written the next is applied. In a run this big the rows go by COPY
# (`_rows.COPY_MIN_ROWS`), and a row costs about what it costs in one five times bigger.
BATCH_TASKS = 4000

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


class _Batch:
    """A batch on its way: its items and the checkpoint it follows (`after`); once applied,
    its rows (`loaded`), and what the next batch may start from (`carried`, None if it may
    not). Applied ahead (`_apply_ahead`), it also holds the rows it started from (`basis`)."""

    def __init__(self, items: Sequence[SourceItem], after: int | None) -> None:
        self.items = items
        self.after = after
        self.keys = keys_of(items)
        self.loaded: Loaded | None = None
        self.basis: Carried | None = None
        self.carried: Carried | None = None

    def applied(self, loaded: Loaded, keys: Keys) -> None:
        self.loaded = loaded
        self.carried = Carried(loaded, keys) if Carried.carries(loaded, keys) else None


class _Written(NamedTuple):
    """What this projector's last batch wrote whole, and its transaction's token on the
    checkpoint row (`Locked.writer`)."""

    carried: Carried | None
    writer: int


def _by_tasks(items: list[SourceItem], most: int) -> Iterator[list[SourceItem]]:
    """`items` in runs of about `most` tasks (a chunk's event counts each of its tasks): a
    chunked job's events bring hundreds of tasks each, and one batch of 1,000 of them would
    leave nothing to apply while it is written."""
    run: list[SourceItem] = []
    tasks = 0
    for item in items:
        run.append(item)
        event = item.event
        if type(event) is TaskChunkFinished:
            tasks += len(event.results) + len(event.failed)
        else:
            tasks += 1
        if tasks >= most:
            yield run
            run, tasks = [], 0
    if run:
        yield run


async def _next_unless_failed(
    batches: AsyncIterator[list[SourceItem]], writing: "asyncio.Task[int | None] | None"
) -> list[SourceItem] | None:
    """The next batch (None: no more); `writing`'s error, or None if it stopped, as soon as
    it ends so, rather than at the next batch."""
    if writing is None:
        return await anext(batches, None)
    following = asyncio.ensure_future(anext(batches, None))
    try:
        await asyncio.wait((following, writing), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled: the reader must not be left running
        await _cancelled(following)
        raise
    if writing.done() and (writing.cancelled() or writing.exception() or writing.result() is None):
        await _cancelled(following)
        writing.result()  # its error
        return None
    return await following


async def _cancelled(task: "asyncio.Future[Any]") -> None:
    """Cancel `task` and wait for it to end, whatever it ends with (its own error is
    dropped: the caller has a better one to raise)."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()


def _ahead_holds(
    batch: _Batch, before: _Written | None, locked: Locked, fresh: list[SourceItem]
) -> bool:
    """Whether `batch`, applied ahead, starts from the rows as they are: the batch before it
    was written whole as carried (`before`), and no other transaction took the checkpoint row
    since (another projector of the partition, the task lister; or this is another schema,
    swapped in by a replay) to change them."""
    return (
        batch.loaded is not None
        and before is not None
        and batch.basis is before.carried
        and locked.prior_writer == before.writer
        and locked.last_seq == batch.after
        and len(fresh) == len(batch.items)
    )


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
        source: BatchSource | None = None,
        list_after_s: float = LIST_AFTER_S,
    ) -> None:
        """`source`: where the log is read (`events.SharedSource.batches`, a read shared with
        the process's NDJSON projector); by default, a reader of its own. `list_after_s`: how
        far the log goes on past a batch of tasks before its lister writes their rows
        (`ListingPace`)."""
        if source is not None and partition.count > 1:
            raise ValueError("a partition reads its own part of the log, not a shared read")
        self.bus = bus
        self.pool = pool
        self.schema = schema
        self.projection = name
        self.partition = partition
        # The checkpoint row: the projection's name, or its partition's.
        self.name = partition.checkpoint_name(name)
        self.source: BatchSource = source or functools.partial(
            event_batches, bus, **partition.reading(), batch_max=batch_max
        )
        self.last_seq = 0
        # synchronous_commit off: a commit does not wait for its WAL flush. A database crash
        # may then lose the last batches, checkpoint included, and they are applied again
        # (`_Rewound`): the log, not the read model, is what must be durable.
        self._search_path = (
            f"SET LOCAL search_path TO {quote_ident(schema)}; SET LOCAL synchronous_commit TO off"
        )
        self._read_path = f"SET search_path TO {quote_ident(schema)}"
        self._queries = load_queries()
        pace = ListingPace(after_s=list_after_s)
        self.lister = TaskLister(
            bus, pool, schema=schema, name=name, partition=partition, pace=pace
        )
        self._written: _Written | None = None
        # The batches written as applied ahead, while the batch before them was written.
        self.written_ahead = 0

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
        log.info(
            "projection %s stopped after seq %d (%d batches written as applied ahead)",
            self.name,
            self.last_seq,
            self.written_ahead,
        )

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
        """Apply the log from `start` on, each batch while the one before is written: the
        Python work of one overlaps the database's of the other."""
        self.last_seq = start
        self._written = None
        batches = self.source(start_seq=start + 1, stop=stop)
        previous: _Batch | None = None
        writing: asyncio.Task[int | None] | None = None
        try:
            async with aclosing(batches):
                while (read := await _next_unless_failed(batches, writing)) is not None:
                    for items in _by_tasks(read, BATCH_TASKS):
                        batch = _Batch(items, after=previous.items[-1].seq if previous else start)
                        await self._apply_ahead(batch, previous.carried if previous else None)
                        if writing is not None:
                            if await writing is None:
                                return
                            written = self._written.carried if self._written else None
                            if batch.basis is not written:  # `previous` was written otherwise
                                await self._apply_ahead(batch, written)
                        write_batch = functools.partial(self._apply_batch, batch)
                        writing = asyncio.create_task(self._retrying(write_batch, stop))
                        previous = batch
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                await _cancelled(writing)

    async def _apply_ahead(self, batch: _Batch, basis: Carried | None) -> None:
        """Apply `batch` to the rows the batch before it leaves (`basis`, which may still be
        being written) and the others read from the database. Its write takes these rows as
        they are only if that batch was written just so and nobody else wrote since
        (`_ahead_holds`); else it loads and applies again."""
        batch.loaded = batch.basis = batch.carried = None
        if basis is None or batch.keys.requeued:
            return
        model = self._model()
        rest = unknown_keys(batch.keys, basis)
        if names_rows(rest):
            try:
                async with connection(self.pool) as conn:
                    # One statement, no transaction: two round trips, not four. The pool
                    # resets the session's search path when the connection goes back.
                    await conn.execute(self._read_path)
                    loaded = await load(conn, self._queries, rest, model)
            except (*RETRY_ERRORS, asyncpg.PostgresError):
                return  # the write loads for itself, and meets what failed here if it lasts
        else:
            loaded = Loaded(model, rest)
        take_carried(loaded, batch.keys, basis)
        for item in batch.items:
            model.apply_item(item)
        batch.applied(loaded, batch.keys)
        batch.basis = basis

    async def apply_batch(self, items: Sequence[SourceItem], *, list_tasks: bool = True) -> int:
        """Apply `items` (in log order) in one transaction; return the checkpoint after it.

        Items at or below the checkpoint are skipped, so offering a batch twice is harmless.
        Then the task rows of the streamed jobs' batches it took are written, unless
        `list_tasks` is False: they are left to `lister`, as while the projector runs.
        """
        if not items:
            return await self._own_checkpoint()
        last_seq = await self._apply_batch(_Batch(items, after=None))
        if list_tasks:
            await self.lister.list_pending()
        return last_seq

    async def _apply_batch(self, batch: _Batch) -> int:
        """`apply_batch`, first checking that the checkpoint is not below `batch.after`."""
        async with connection(self.pool, clean=_CLEAN_ERRORS) as conn:
            try:
                last_seq, parked, written = await self._transaction(conn, batch, isolate=False)
            except DATA_ERRORS as exc:
                log.warning(
                    "seq %d..%d: %s; looking for the event at fault",
                    batch.items[0].seq,
                    batch.items[-1].seq,
                    exc,
                )
                last_seq, parked, written = await self._transaction(conn, batch, isolate=True)
        self._written = written
        for rejected in parked:
            log.warning("parked seq %d on %s: %s", rejected.seq, rejected.subject, rejected.error)
        self.last_seq = last_seq
        if self.lister.pace.applied(batch.items) or self.lister.pace.any_due():
            self.lister.wake.set()
        return last_seq

    async def _transaction(
        self, conn: asyncpg.Connection, batch: _Batch, *, isolate: bool
    ) -> tuple[int, list[_Parked], _Written | None]:
        """Apply `batch` in one transaction: the checkpoint after it, the events parked, and
        what the batch wrote whole (None: the next batch cannot start from it)."""
        before, self._written = self._written, None  # known again once this one commits
        async with conn.transaction():
            await conn.execute(self._search_path)
            # Refused (`LayoutMismatch`, not retried) unless the schema's layout is ours.
            locked = await lock_checkpoint(conn, self._queries, self.projection, self.partition)
            last_seq = locked.last_seq
            if batch.after is not None and last_seq < batch.after:
                raise _Rewound(expected=batch.after, found=last_seq)
            fresh = [item for item in batch.items if item.seq > last_seq]
            if not fresh:
                return last_seq, [], None
            parked: list[_Parked] = []
            written: _Written | None = None
            if isolate:
                await self._apply_isolating(conn, fresh, parked)
            else:
                if _ahead_holds(batch, before, locked, fresh):
                    self.written_ahead += 1
                else:
                    # `fresh` is the batch's end: the whole batch unless another writer
                    # applied its first items.
                    keys = batch.keys if len(fresh) == len(batch.items) else keys_of(fresh)
                    batch.applied(await self._load_and_apply(conn, fresh, keys), keys)
                assert batch.loaded is not None
                parked += await self._write(conn, batch.loaded)
                written = _Written(batch.carried, locked.writer)
            await conn.execute(self._queries["save_checkpoint"], self.name, fresh[-1].seq)
        return fresh[-1].seq, parked, written

    def _model(self) -> ReadModel:
        return ReadModel(list_batches=False, partition=self.partition.index)

    async def _load_and_apply(
        self, conn: asyncpg.Connection, items: Sequence[SourceItem], keys: Keys
    ) -> Loaded:
        """Load the rows of `keys` (those `items` name) and apply `items` to them."""
        loaded = await load(conn, self._queries, keys, self._model())
        for item in items:
            loaded.model.apply_item(item)
        return loaded

    async def _write(self, conn: asyncpg.Connection, loaded: Loaded) -> list[_Parked]:
        """Write what changed in `loaded`; return what the rules parked (written too)."""
        await write(conn, self._queries, loaded, schema=self.schema)
        rejected = [_Parked(*row) for row in parked_rows(loaded.model)]
        if rejected:
            await conn.executemany(self._queries["reject_event"], rejected)
        return rejected

    async def _apply(self, conn: asyncpg.Connection, items: Sequence[SourceItem]) -> list[_Parked]:
        """Load the rows `items` name, apply them, write what changed; return what the rules
        parked (written too)."""
        return await self._write(conn, await self._load_and_apply(conn, items, keys_of(items)))

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
