"""The task rows of a job's batches, written apart from the order of the log.

A job's tasks come as batches: a `job.submitted`'s are its first, a streamed job's
`job.tasks_added` each one more. The projector takes a batch by recording it in
`job_batches` (one small row, in the batch's transaction); the lister writes the batch's task
rows afterwards, reading the batch back from the log by its sequence, and marks it listed in
the same transaction, which takes its turn with the projector's batches (the checkpoint row's
lock). So the events after a job of a million tasks (its first results among them) are
projected at once while its task rows follow, and each batch is listed once whatever crashes.

A task event that comes first makes its task's row; the listing then fills in the row's kind
and args (`_rules.ReadModel.list_batch`) and makes the others queued, counting those in the
job's row. It waits a little (`ListingPace`): a task row made queued is written again when its
task ends, so the tasks that end before the listing have their rows written once.
"""

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

import asyncpg

from jobstream.events import (
    POSTGRES_PROJECTION,
    Bus,
    JobSubmitted,
    JobTasksAdded,
    SourceItem,
    TaskSpec,
    backoff_s,
    sleep_unless_stopped,
)
from jobstream.projections._database import RETRY_CAP_S, RETRY_ERRORS, connection
from jobstream.projections._layout import lock_checkpoint
from jobstream.projections._migrate import DEFAULT_SCHEMA, quote_ident
from jobstream.projections._partitions import ONE_PARTITION, Partition
from jobstream.projections._queries import load_queries
from jobstream.projections._rows import load, write
from jobstream.projections._rules import Keys, ReadModel, TaskRange, task_ranges

log = logging.getLogger(__name__)

UNLISTED_PAGE = 16
# Listings due together go in one transaction (`TaskLister.list_pending`), up to about this
# many tasks (the listing's work) and task ranges (what it holds in memory: a batch of
# distinct args is a range per task), one batch at least.
LISTING_TASKS = 50_000
LISTING_RANGES = 1_000
IDLE_WAIT_S = 1.0
# How far the log goes on past a batch before it is listed, by the events' times: about what
# a job of a few thousand tasks takes to run when workers are free.
LIST_AFTER_S = 2.0
# How long the projector applies nothing new before the lister takes it as caught up.
QUIET_S = 0.25


async def unlisted_batches(pool: asyncpg.Pool, *, schema: str = DEFAULT_SCHEMA) -> int:
    """How many batches taken in `schema` still wait for their task rows."""
    async with connection(pool) as conn, conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        count = await conn.fetchval(load_queries()["count_unlisted_batches"])
    return int(count)


# The events that take a batch; matched by type, as the pace sees every event.
_BATCH_EVENTS = (JobSubmitted, JobTasksAdded)


class ListingPace:
    """When the lister lists a batch the projector took: once the log has gone on `after_s`
    past the batch (by the events' own times, so a projector working through a backlog waits
    as the log did, not by its own clock), or once the projector has applied nothing new for
    `quiet_s` (it has caught up: waiting gains nothing). A batch this process did not see
    taken (before a restart) is listed at once. Delays only: whenever a batch is listed, its
    rows are the same."""

    def __init__(
        self,
        *,
        after_s: float = LIST_AFTER_S,
        quiet_s: float = QUIET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.after = timedelta(seconds=after_s)
        self.quiet_s = quiet_s
        self._clock = clock
        # The batches taken and not known to be listed: their seq, and their event's time.
        self._taken: dict[int, datetime] = {}
        self._log_time: datetime | None = None
        self._applied_at = clock()

    def applied(self, items: Iterable[SourceItem]) -> bool:
        """The projector committed `items`, in log order; whether they took a batch."""
        took = False
        for item in items:
            event = item.event
            if event is None:
                continue
            if self._log_time is None or event.at > self._log_time:
                self._log_time = event.at
            if type(event) in _BATCH_EVENTS:
                self._taken[item.seq] = event.at
                took = True
        self._applied_at = self._clock()
        return took

    def due(self, seq: int) -> bool:
        """Whether the batch at `seq` is to be listed now."""
        at = self._taken.get(seq)
        if at is None or self.quiet():
            return True
        return self._log_time is not None and self._log_time - at >= self.after

    def any_due(self) -> bool:
        """Whether the earliest batch taken is due (the others are not before it)."""
        earliest = next(iter(self._taken), None)
        return earliest is not None and self.due(earliest)

    def quiet(self) -> bool:
        return self._clock() - self._applied_at >= self.quiet_s

    def wait_s(self) -> float:
        """How long the lister may wait before a batch taken may become due (unwoken)."""
        if not self._taken:
            return IDLE_WAIT_S
        quiet_in = self.quiet_s - (self._clock() - self._applied_at)
        return min(IDLE_WAIT_S, max(quiet_in, 0.05))

    def listed(self, seq: int) -> None:
        self._taken.pop(seq, None)

    def newest(self) -> int:
        """The last seq of a batch taken (0: none)."""
        return max(self._taken, default=0)

    def forget_before(self, seq: int) -> None:
        """Batches up to `seq` (excluded) are listed, or were not taken (a job's repeat)."""
        for taken in [taken for taken in self._taken if taken < seq]:
            del self._taken[taken]


class _Listing(NamedTuple):
    """A batch to list: its job, first task index and seq, and its tasks' ranges."""

    job_id: str
    first_index: int
    seq: int
    ranges: list[TaskRange]


class TaskLister:
    """Writes the task rows of the batches the projector took (of its partition's jobs),
    until stopped."""

    def __init__(
        self,
        bus: Bus,
        pool: asyncpg.Pool,
        *,
        schema: str = DEFAULT_SCHEMA,
        name: str = POSTGRES_PROJECTION,
        partition: Partition = ONE_PARTITION,
        pace: ListingPace | None = None,
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.schema = schema
        self.partition = partition
        # Its partition's checkpoint row of this projection is the lock the lister shares
        # with the partition's projector.
        self.projection = name
        self.pace = pace or ListingPace()
        # Set by the projector when it took a batch (the lister's wait shortens to the
        # quiet time) or one is due (list it now, not at the next poll).
        self.wake = asyncio.Event()
        self._search_path = (
            f"SET LOCAL search_path TO {quote_ident(schema)}; SET LOCAL synchronous_commit TO off"
        )
        self._queries = load_queries()

    async def run(self, stop: asyncio.Event) -> None:
        """List batches as they come due; database and NATS outages are waited out."""
        failures = 0
        polled_at = -IDLE_WAIT_S
        while not stop.is_set():
            self.wake.clear()
            if self.pace.any_due() or time.monotonic() - polled_at >= IDLE_WAIT_S:
                polled_at = time.monotonic()
                try:
                    await self.list_pending(due=self.pace.due)
                    failures = 0
                except RETRY_ERRORS as exc:
                    failures += 1
                    log.warning("task listing in %s: %r, retry %d", self.schema, exc, failures)
                    await sleep_unless_stopped(stop, backoff_s(failures, cap_s=RETRY_CAP_S))
                    continue
            await _first_of(stop, self.wake, timeout_s=self.pace.wait_s())

    async def list_pending(self, *, due: Callable[[int], bool] | None = None) -> int:
        """Write the task rows of every batch not listed yet (`due`: those of them, in log
        order, up to the first not due), those due together in one transaction (`_list`);
        return how many were listed."""
        listed = 0
        while True:
            newest = self.pace.newest()
            async with connection(self.pool) as conn, conn.transaction():
                await conn.execute(self._search_path)
                pending = await conn.fetch(
                    self._queries["unlisted_batches"],
                    UNLISTED_PAGE,
                    self.partition.count,
                    self.partition.index,
                )
            self.pace.forget_before(pending[0]["seq"] if pending else newest + 1)
            if not pending:
                return listed
            due_now = list(
                itertools.takewhile(lambda batch: due is None or due(batch["seq"]), pending)
            )
            rest = due_now
            while rest:
                together = await self._listings(rest)
                await self._list(together)
                for listing in together:
                    self.pace.listed(listing.seq)
                listed += len(together)
                rest = rest[len(together) :]
            if len(due_now) < len(pending):  # the rest are not due yet
                return listed

    async def _listings(self, batches: list[asyncpg.Record]) -> list[_Listing]:
        """The first of `batches` to list together: up to about `LISTING_TASKS` tasks and
        `LISTING_RANGES` ranges."""
        listings: list[_Listing] = []
        tasks = ranges_held = 0
        for batch in batches:
            if listings and (tasks >= LISTING_TASKS or ranges_held >= LISTING_RANGES):
                break
            job_id, first_index, seq = batch["job_id"], batch["first_index"], batch["seq"]
            specs = await self._specs(job_id, first_index, seq)
            ranges = task_ranges(job_id, first_index, specs, seq)
            listings.append(_Listing(job_id, first_index, seq, ranges))
            tasks += sum(task_range.count for task_range in ranges)
            ranges_held += len(ranges)
        return listings

    async def _list(self, listings: list[_Listing]) -> None:
        """List the batches in one transaction: a listing between two of the projector's
        batches makes the second load and apply again (the checkpoint row has had another
        writer), so the listings due together go together."""
        async with connection(self.pool) as conn, conn.transaction():
            await conn.execute(self._search_path)
            # Take turns with the projector's batches (the checkpoint row's lock): each reads
            # the rows it changes and writes them whole, so neither may read a row the other
            # is changing. The layout is checked as by a batch (`LayoutMismatch`): a lister
            # of another partition count would write rows of another partition's jobs.
            await lock_checkpoint(conn, self._queries, self.projection, self.partition)
            for listing in listings:
                await self._list_one(conn, listing)

    async def _list_one(self, conn: asyncpg.Connection, listing: _Listing) -> None:
        job_id, first_index, seq, ranges = listing
        count = await conn.fetchval(self._queries["take_batch"], job_id, first_index, seq)
        if count is None:  # listed already
            return
        # The rows task events made before the listing: the rules give them their index, kind
        # and args (`ReadModel.list_batch`); the others are written as ranges and counted in
        # the job's row.
        model = ReadModel(list_batches=False, partition=self.partition.index)
        keys = Keys()
        keys.jobs.add(job_id)
        loaded = await load(conn, self._queries, keys, model)
        present, rows = await conn.fetchrow(
            self._queries["load_batch_tasks"],
            job_id,
            first_index,
            ranges[-1].end if ranges else first_index,
            seq,
            [task_range.first_index for task_range in ranges],
            [bytes(task_range.args).decode() for task_range in ranges],
        )
        loaded.take_tasks(rows)
        model.list_batch(job_id, ranges, present=present)
        await write(conn, self._queries, loaded, schema=self.schema)

    async def _specs(self, job_id: str, first_index: int, seq: int) -> list[TaskSpec]:
        """The tasks of the batch at `seq`, read back from the log."""
        event = await self.bus.event_at(seq)
        if isinstance(event, JobTasksAdded) and (event.job_id, event.first_index) == (
            job_id,
            first_index,
        ):
            return event.tasks
        if isinstance(event, JobSubmitted) and (event.job_id, first_index) == (job_id, 0):
            return event.tasks
        # The log no longer holds it (a retention limit): the batch stays without rows.
        log.error("job %s: the batch at seq %d is gone from the log; no task rows", job_id, seq)
        return []


async def _first_of(stop: asyncio.Event, wake: asyncio.Event, *, timeout_s: float) -> None:
    """Wait until `stop` or `wake` is set, or `timeout_s` passed."""
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wait
