"""The Postgres projector: the event log applied, batch by batch, to the read-model tables.

Exactly once: each batch is one transaction that locks the projection's checkpoint row,
skips the events at or below it, applies the rest and moves the checkpoint to the batch's
last sequence. A crash at any point neither loses nor doubles an effect, a retried batch is
a no-op, and two projectors of one name take turns.

Fast: a round trip to the database costs far more than running a statement, so a batch is
planned into rounds. The steps of one round touch disjoint rows (or commute, like the
counters of a worker), so within a round they are grouped by type and each group is one
statement, its rows passed as one JSON array (`sql/projector.sql`); the rounds run in
order. The result is the same as applying the events one by one in log order (a
`task.chunk_finished` as the per-task events it stands for), whatever the batch
boundaries, so a replay yields identical tables.

Robust: a payload that is not an event is parked in `rejected_events`; an event the database
refuses (a NUL character, a number out of range) is found by bisecting the batch under
savepoints and parked there too, so no input stalls the projector.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import asyncpg

from jobstream.events import (
    DEFAULT_BATCH_MAX,
    JOB_EVENTS,
    Bus,
    Event,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobSealed,
    JobSubmitted,
    JobTasksAdded,
    OneTaskEvent,
    SourceItem,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRequeued,
    TaskStarted,
    TaskSucceeded,
    WorkerEvent,
    WorkerForgotten,
    WorkerLost,
    WorkerStarted,
    WorkerStopped,
    backoff_s,
    chunk_task_events,
    encode,
    event_batches,
    sleep_unless_stopped,
    task_index_of,
)
from jobstream.projections._crawl import CrawlRound
from jobstream.projections._database import DATA_ERRORS, RETRY_CAP_S, RETRY_ERRORS, connection
from jobstream.projections._listing import TaskLister, unlisted_batches
from jobstream.projections._migrate import DEFAULT_SCHEMA, quote_ident
from jobstream.projections._queries import load_queries
from jobstream.projections._task_rows import over_the_task_limit, spec_rows

log = logging.getLogger(__name__)

DEFAULT_NAME = "postgres"

T = TypeVar("T")

_Key = tuple[str, str]
_Row = dict[str, Any]


class RejectedEvent(ValueError):
    """An event that decodes but cannot be projected."""


class _Rewound(Exception):
    """The checkpoint is below the last one this projector committed."""

    def __init__(self, *, expected: int, found: int) -> None:
        super().__init__(f"checkpoint {found}, expected at least {expected}")
        self.expected = expected
        self.found = found


# Errors after which a connection is in a clean state (its transaction rolled back).
_CLEAN_ERRORS: tuple[type[Exception], ...] = (*DATA_ERRORS, _Rewound)


class Step(NamedTuple):
    """What one event (or one task of a chunk) does: its `row` joins the JSON input of `query`.

    `owned` rows must see every earlier event touching them applied first; `shared` rows
    (a task's job, a worker) take commuting updates and only wait for their owner's events.
    """

    query: str
    row: _Row
    owned: Sequence[_Key]
    shared: Sequence[_Key] = ()


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _attempt_start(event: TaskStarted | TaskProgress | TaskSucceeded | TaskFailed) -> datetime:
    """When the attempt began (by then, for a progress report): a finish event without a
    started one counts back its duration."""
    at = _utc(event.at)
    if isinstance(event, TaskStarted | TaskProgress):
        return at
    return _counted_back(at, event.duration_s)


def _counted_back(at: datetime, duration_s: float) -> datetime:
    """`at` less `duration_s` (a negative or NaN duration as 0; `at` itself on overflow)."""
    try:
        return at - timedelta(seconds=max(0.0, duration_s))
    except OverflowError:
        return at


# --- events to steps ---------------------------------------------------------------------


def event_steps(seq: int, event: Event) -> list[tuple[Event, Step]]:
    """The statements applying `event`, each with the event it applies: `event` itself, or
    for a chunk the per-task events it stands for, in order (nothing for the chunk's own
    id). `RejectedEvent` if it cannot be projected."""
    if isinstance(event, JOB_EVENTS):
        return [(event, _job_step(seq, event))]
    match event:
        case WorkerStarted() | WorkerStopped() | WorkerLost() | WorkerForgotten():
            return [(event, _worker_step(seq, event))]
        case TaskChunkFinished():
            return [(task, _task_step(seq, task)) for task in chunk_task_events(event)]
        case _:
            return [(event, _task_step(seq, event))]


def _job_step(seq: int, event: JobEvent) -> Step:
    owned = [("job", event.job_id)]
    match event:
        case JobSubmitted():
            return _submitted_step(seq, event)
        case JobTasksAdded():
            error = over_the_task_limit(event.job_id, event.first_index, event.tasks)
            if error is not None:
                raise RejectedEvent(error)
            # Owning the job is enough, as for job.submitted. The task rows: `TaskLister`.
            row: _Row = {
                "seq": seq,
                "job_id": event.job_id,
                "first_index": event.first_index,
                "task_count": event.task_count,
            }
            return Step("job_tasks_added", row, owned)
        case JobSealed():
            return Step("job_sealed", {"seq": seq, "job_id": event.job_id}, owned)
    row = {"seq": seq, "at": _utc(event.at), "job_id": event.job_id}
    match event:
        case JobRejected():
            return Step("job_rejected", row | {"reason": event.reason}, owned)
        case JobCancelled():
            row |= {"status": "cancelled", "duration_s": None}
        case JobCompleted():
            row |= {"status": "completed", "duration_s": event.duration_s}
        case JobFailed():
            row |= {"status": "failed", "duration_s": event.duration_s}
    return Step("job_finished", row, owned)


def _submitted_step(seq: int, job: JobSubmitted) -> Step:
    error = over_the_task_limit(job.job_id, 0, job.tasks)
    if error is not None:
        raise RejectedEvent(error)
    specs = spec_rows(0, job.tasks)
    row: _Row = {
        "seq": seq,
        "at": _utc(job.at),
        "job_id": job.job_id,
        "name": job.name,
        "queue": job.queue,
        "priority": job.priority,
        # A streamed job is being submitted until its job.sealed.
        "status": "queued" if job.sealed else "submitting",
        "total_tasks": job.task_count,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "idempotency_key": job.idempotency_key,
        "submitted_by": job.submitted_by,
        "labels": job.labels,
        "specs": specs,
    }
    # Owning the job is enough: every task step shares its job, so none can pass this one.
    return Step("job_submitted", row, [("job", job.job_id)])


def _task_step(seq: int, event: OneTaskEvent) -> Step:
    row: _Row = {
        "seq": seq,
        "at": _utc(event.at),
        "job_id": event.job_id,
        "task_id": event.task_id,
        # Where the event makes its task's row (not there yet): see sql/projector.sql.
        "task_index": task_index_of(event.job_id, event.task_id),
    }
    owned, job = [("task", event.task_id)], ("job", event.job_id)
    match event:
        case TaskStarted():
            row |= {"worker_id": event.worker_id, "attempt": event.attempt}
            return Step("task_started", row, owned, [job, ("worker", event.worker_id)])
        case TaskProgress():
            row |= {
                "worker_id": event.worker_id,
                "fraction": event.fraction,
                "message": event.message,
            }
            return Step("task_progress", row, owned, [job, ("worker", event.worker_id)])
        case TaskSucceeded():
            row |= {
                "worker_id": event.worker_id,
                "attempt": event.attempt,
                "started_at": _attempt_start(event),
                "duration_s": event.duration_s,
                "kind": event.kind,
                "args": event.args,
                "result": event.result,
            }
            return Step("task_succeeded", row, owned, [job, ("worker", event.worker_id)])
        case TaskFailed():
            row |= {
                "worker_id": event.worker_id,
                "attempt": event.attempt,
                "started_at": _attempt_start(event),
                "duration_s": event.duration_s,
                "error": event.error,
            }
            return Step("task_failed", row, owned, [job, ("worker", event.worker_id)])
        case TaskDeadLettered():
            row |= {
                "worker_id": event.worker_id or None,
                "attempts": event.attempts,
                "kind": event.kind,
                "args": event.args,
                "error": event.last_error or event.reason,
            }
            return Step("task_dead_lettered", row, owned, [job])
        case TaskRequeued():
            return Step("task_requeued", row, owned, [job])
        case TaskCancelled():
            return Step("task_cancelled", row, owned, [job])


def _worker_step(seq: int, event: WorkerEvent) -> Step:
    row: _Row = {"seq": seq, "at": _utc(event.at), "worker_id": event.worker_id}
    match event:
        case WorkerStarted():
            row |= {
                "host": event.host,
                "pid": event.pid,
                "queues": event.queues,
                "concurrency": event.concurrency,
                "version": event.version,
            }
            query = "worker_started"
        case WorkerStopped():
            query = "worker_stopped"
        case WorkerLost():
            row["last_seen_at"] = None if event.last_seen is None else _utc(event.last_seen)
            query = "worker_lost"
        case WorkerForgotten():
            query = "worker_forgotten"
    return Step(query, row, [("worker", event.worker_id)])


# --- steps to rounds ---------------------------------------------------------------------


class _Round:
    """Steps that touch disjoint rows, grouped by query, and the sums for shared rows."""

    def __init__(self, crawl_pages: set[tuple[str, int]]) -> None:
        self.rows: dict[str, list[_Row]] = {}
        self.jobs: dict[str, _Row] = {}
        self.workers: dict[str, _Row] = {}
        self.crawl = CrawlRound(crawl_pages)

    def add(self, seq: int, event: Event, step: Step) -> None:
        self.rows.setdefault(step.query, []).append(step.row)
        self.crawl.add(seq, event)
        if isinstance(event, TaskStarted | TaskProgress | TaskSucceeded | TaskFailed):
            self._job_running(seq, event.job_id, _attempt_start(event))
        if isinstance(event, TaskStarted | TaskProgress | TaskSucceeded | TaskFailed):
            self._worker_seen(seq, event)

    def _job_running(self, seq: int, job_id: str, started_at: datetime) -> None:
        # Commutes: the earliest start, the latest sequence, whatever the events' order.
        job = self.jobs.get(job_id)
        if job is None:
            self.jobs[job_id] = {"job_id": job_id, "started_at": started_at, "seq": seq}
            return
        job["started_at"] = min(job["started_at"], started_at)
        job["seq"] = max(job["seq"], seq)

    def _worker_seen(
        self, seq: int, event: TaskStarted | TaskProgress | TaskSucceeded | TaskFailed
    ) -> None:
        worker = self.workers.get(event.worker_id)
        if worker is None:
            worker = self.workers[event.worker_id] = {
                "worker_id": event.worker_id,
                "succeeded": 0,
                "failed": 0,
                "last_seen_at": _utc(event.at),
            }
        worker["succeeded"] += isinstance(event, TaskSucceeded)
        worker["failed"] += isinstance(event, TaskFailed)
        worker["last_seen_at"] = max(worker["last_seen_at"], _utc(event.at))
        worker["seq"] = seq

    def statements(self) -> Iterator[tuple[str, list[_Row]]]:
        yield from self.crawl.before()
        yield from self.rows.items()
        if self.jobs:
            yield "jobs_running", list(self.jobs.values())
        if self.workers:
            yield "workers_seen", list(self.workers.values())
        yield from self.crawl.after()


class Entry(NamedTuple):
    """A log item and its steps: applied, or parked, as a whole."""

    item: SourceItem
    steps: list[tuple[Event, Step]]


def _all_steps(entries: Iterable[Entry]) -> Iterator[tuple[int, Event, Step]]:
    for item, steps in entries:
        for event, step in steps:
            yield item.seq, event, step


def plan_rounds(entries: Iterable[Entry]) -> list[_Round]:
    """Place each step in the first round after every earlier step it must follow."""
    rounds: list[_Round] = []
    crawl_pages: set[tuple[str, int]] = set()  # shared by the rounds: see CrawlRound
    last_touch: dict[_Key, int] = {}
    last_owner: dict[_Key, int] = {}
    for seq, event, step in _all_steps(entries):
        index = 0
        for key in step.owned:
            index = max(index, last_touch.get(key, -1) + 1)
        for key in step.shared:
            index = max(index, last_owner.get(key, -1) + 1)
        if index == len(rounds):
            rounds.append(_Round(crawl_pages))
        rounds[index].add(seq, event, step)
        for key in step.owned:
            last_touch[key] = last_owner[key] = index
        for key in step.shared:
            if last_touch.get(key, -1) < index:
                last_touch[key] = index
    return rounds


# --- the projector -----------------------------------------------------------------------


class _Parked(NamedTuple):
    seq: int
    subject: str
    error: str
    payload: bytes


def _parked(item: SourceItem, error: object) -> _Parked:
    return _Parked(item.seq, item.subject, str(error), item.data)


def _sort_out(items: Sequence[SourceItem]) -> tuple[list[Entry], list[_Parked]]:
    entries: list[Entry] = []
    parked: list[_Parked] = []
    for item in items:
        if item.event is None:
            parked.append(_parked(item, item.error))
            continue
        try:
            entries.append(Entry(item, event_steps(item.seq, item.event)))
        except RejectedEvent as exc:
            parked.append(_parked(item, exc))
    return entries, parked


async def checkpoint(
    pool: asyncpg.Pool, *, schema: str = DEFAULT_SCHEMA, name: str = DEFAULT_NAME
) -> int:
    """The last stream sequence projection `name` applied to `schema` (0: none yet)."""
    async with connection(pool) as conn, conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        last = await conn.fetchval(load_queries()["read_checkpoint"], name)
    return int(last) if last is not None else 0


async def caught_up(
    pool: asyncpg.Pool, seq: int, *, schema: str = DEFAULT_SCHEMA, name: str = DEFAULT_NAME
) -> bool:
    """Whether projection `name` applied the log up to `seq` into `schema`, the task rows of
    streamed jobs included."""
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
        batch_max: int = DEFAULT_BATCH_MAX,
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.schema = schema
        self.name = name
        self.batch_max = batch_max
        self.last_seq = 0
        # synchronous_commit off: a commit does not wait for its WAL flush. A database crash
        # may then lose the last batches, checkpoint included, and they are applied again
        # (`_Rewound`): the log, not the read model, is what must be durable.
        self._search_path = (
            f"SET LOCAL search_path TO {quote_ident(schema)}; SET LOCAL synchronous_commit TO off"
        )
        self._queries = {**load_queries(), **load_queries("crawl.sql")}
        self.lister = TaskLister(bus, pool, schema=schema)

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set, and write the task rows of streamed jobs beside it;
        database outages are waited out, batch by batch."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.lister.run(stop))
            group.create_task(self._project(stop))

    async def _project(self, stop: asyncio.Event) -> None:
        read = functools.partial(checkpoint, self.pool, schema=self.schema, name=self.name)
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

    async def _follow(self, start: int, stop: asyncio.Event) -> None:
        self.last_seq = start
        batches = event_batches(self.bus, start_seq=start + 1, stop=stop, batch_max=self.batch_max)
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
            return await checkpoint(self.pool, schema=self.schema, name=self.name)
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
            last_seq: int = await conn.fetchval(self._queries["lock_checkpoint"], self.name)
            if after is not None and last_seq < after:
                raise _Rewound(expected=after, found=last_seq)
            fresh = [item for item in items if item.seq > last_seq]
            if not fresh:
                return last_seq, []
            entries, parked = _sort_out(fresh)
            if isolate:
                await self._apply_isolating(conn, entries, parked)
            else:
                await self._apply(conn, entries)
            if parked:
                await conn.executemany(self._queries["reject_event"], parked)
            await conn.execute(self._queries["save_checkpoint"], self.name, fresh[-1].seq)
            return fresh[-1].seq, parked

    async def _apply(self, conn: asyncpg.Connection, entries: Sequence[Entry]) -> None:
        for round_ in plan_rounds(entries):
            for query, rows in round_.statements():
                await conn.execute(self._queries[query], encode(rows).decode())

    async def _apply_isolating(
        self,
        conn: asyncpg.Connection,
        entries: Sequence[Entry],
        parked: list[_Parked],
    ) -> None:
        """Apply `entries` under savepoints, halving them on a data error to park its event."""
        if not entries:
            return
        try:
            async with conn.transaction():
                await self._apply(conn, entries)
        except DATA_ERRORS as exc:
            if len(entries) == 1:
                parked.append(_parked(entries[0].item, exc))
                return
            middle = len(entries) // 2
            await self._apply_isolating(conn, entries[:middle], parked)
            await self._apply_isolating(conn, entries[middle:], parked)

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
