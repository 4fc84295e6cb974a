"""The task rows of streamed jobs, written apart from the order of the log.

The projector takes a `job.tasks_added` batch by recording it in `job_batches` (one small
row, in the batch's transaction); the lister writes the batch's task rows afterwards,
reading the batch back from the log by its sequence, and marks it listed in the same
transaction, which takes its turn with the projector's batches (the checkpoint row's lock).
So the events after a job of a million tasks (its first results among them) are projected
at once while its task rows follow, and each batch is listed once whatever crashes. A task
event that comes first makes its task's row; the listing then fills in the row's kind and
args (`_rules.ReadModel.list_batch`), and counts the rows it makes in the job's row.
"""

import asyncio
import contextlib
import logging

import asyncpg

from jobstream.events import (
    POSTGRES_PROJECTION,
    Bus,
    JobTasksAdded,
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
from jobstream.projections._rules import Keys, ReadModel

log = logging.getLogger(__name__)

UNLISTED_PAGE = 16
IDLE_WAIT_S = 1.0


async def unlisted_batches(pool: asyncpg.Pool, *, schema: str = DEFAULT_SCHEMA) -> int:
    """How many batches taken in `schema` still wait for their task rows."""
    async with connection(pool) as conn, conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        count = await conn.fetchval(load_queries()["count_unlisted_batches"])
    return int(count)


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
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.schema = schema
        self.partition = partition
        # Its partition's checkpoint row of this projection is the lock the lister shares
        # with the partition's projector.
        self.projection = name
        # Set by the projector when it took a batch: list it now rather than at the next poll.
        self.wake = asyncio.Event()
        self._search_path = (
            f"SET LOCAL search_path TO {quote_ident(schema)}; SET LOCAL synchronous_commit TO off"
        )
        self._queries = load_queries()

    async def run(self, stop: asyncio.Event) -> None:
        """List batches as they are taken; database and NATS outages are waited out."""
        failures = 0
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.list_pending()
                failures = 0
            except RETRY_ERRORS as exc:
                failures += 1
                log.warning("task listing in %s: %r, retry %d", self.schema, exc, failures)
                await sleep_unless_stopped(stop, backoff_s(failures, cap_s=RETRY_CAP_S))
                continue
            await _first_of(stop, self.wake, timeout_s=IDLE_WAIT_S)

    async def list_pending(self) -> int:
        """Write the task rows of every batch not listed yet; return how many were listed."""
        listed = 0
        while True:
            async with connection(self.pool) as conn, conn.transaction():
                await conn.execute(self._search_path)
                pending = await conn.fetch(
                    self._queries["unlisted_batches"],
                    UNLISTED_PAGE,
                    self.partition.count,
                    self.partition.index,
                )
            if not pending:
                return listed
            for batch in pending:
                await self._list(batch["job_id"], batch["first_index"], batch["seq"])
                listed += 1

    async def _list(self, job_id: str, first_index: int, seq: int) -> None:
        event = await self.bus.event_at(seq)
        specs: list[TaskSpec] = []
        if isinstance(event, JobTasksAdded) and (event.job_id, event.first_index) == (
            job_id,
            first_index,
        ):
            specs = event.tasks
        else:  # the log no longer holds it (a retention limit): the batch stays without rows
            log.error("job %s: the batch at seq %d is gone from the log; no task rows", job_id, seq)
        async with connection(self.pool) as conn, conn.transaction():
            await conn.execute(self._search_path)
            # Take turns with the projector's batches (the checkpoint row's lock): each reads
            # the rows it changes and writes them whole, so neither may read a row the other
            # is changing. The layout is checked as by a batch (`LayoutMismatch`): a lister
            # of another partition count would write rows of another partition's jobs.
            await lock_checkpoint(conn, self._queries, self.projection, self.partition)
            count = await conn.fetchval(self._queries["take_batch"], job_id, first_index, seq)
            if count is None:  # listed already
                return
            # The rows task events made before the listing: the rules give them their index,
            # kind and args (`ReadModel.list_batch`); the others are written as ranges and
            # counted in the job's row.
            model = ReadModel(list_batches=False, partition=self.partition.index)
            keys = Keys()
            keys.jobs.add(job_id)
            loaded = await load(conn, self._queries, keys, model)
            end = first_index + sum(spec.count for spec in specs)
            loaded.take_tasks(
                await conn.fetchval(self._queries["load_batch_tasks"], job_id, first_index, end)
            )
            model.list_batch(job_id, first_index, specs, seq)
            await write(conn, self._queries, loaded, schema=self.schema)


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
