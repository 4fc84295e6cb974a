"""The part of the read models a batch touches: loaded into a `ReadModel`, written back.

`load` reads the rows the batch's events name (`Keys`) in one query (`load_rows` in
sql/projector.sql: each table's rows as a JSON array, decoded straight into the row types)
and remembers them as loaded; `write` writes what the rules changed in one statement
(`write_rows`): the new or changed rows whole, the rows that went, the new batches, and the
task ranges less the rows written whole. Nothing here decides what a row holds: that is
`_rules.py`. The caller holds the projection's checkpoint lock, so no other writer changes
these rows in between.

Big batches (a chunked job's results: hundreds of tasks per event) write their many task
and attempt rows by binary COPY instead (`COPY_MIN_ROWS`): PostgreSQL then parses no
JSON and checks no conflict. A row is COPYed straight into its table only if the load looked
it up and did not find it, so it cannot be there; the task rows that changed go through a
temporary table and one UPDATE.
"""

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec

from jobstream.events import (
    JSON_COLUMNS,
    JSON_NULL,
    AttemptRow,
    JobRow,
    JobStatus,
    JobStatusCountRow,
    MinuteStatsRow,
    SourceItem,
    TaskRow,
    WorkerRow,
    encode,
    task_key_of,
)
from jobstream.projections._rules import COLUMNS, Keys, ReadModel, utc

K = TypeVar("K")

_CRAWL_MAPS = ("status_counts", "cache_counts", "response_ms")

# strict=False: a float column's non-finite value comes as a string ("NaN").
_JOBS = msgspec.json.Decoder(list[JobRow], strict=False)
_TASKS = msgspec.json.Decoder(list[TaskRow], strict=False)
_ATTEMPTS = msgspec.json.Decoder(list[AttemptRow], strict=False)
_WORKERS = msgspec.json.Decoder(list[WorkerRow], strict=False)
_CRAWL = msgspec.json.Decoder(list[dict[str, Any]])
_MINUTE_STATS = msgspec.json.Decoder(list[MinuteStatsRow])
_STATUS_COUNTS = msgspec.json.Decoder(list[JobStatusCountRow])

MinuteKey = tuple[Any, str, str]

# From this many rows of one kind a batch writes them by binary COPY, below it in the JSON of
# `write_rows`. COPY saves PostgreSQL more per row the bigger the batch, and costs the
# projector more Python per row (the records encoded by asyncpg, not msgspec) plus round
# trips. Measured by applying batches straight to the embedded server, per task (a task row
# updated, an attempt and a result inserted; PostgreSQL / Python µs, COPY against JSON):
# 5,000 rows a batch 29 / 26 against 49 / 18 (20 % more tasks/s); 1,000 rows 40-44 / 29-31
# against 45-48 / 23 (even); 256 rows of single-task events 44-52 / 38-47 against 51-54 /
# 29-34 (fewer tasks/s). So only a chunked job's batches take it.
COPY_MIN_ROWS = 2000

# The temporary table the changed task rows are COPYed into, then merged from
# (`update_staged_tasks`); made anew for each use, dropped by the commit.
_STAGED_TASKS = (
    "DROP TABLE IF EXISTS pg_temp.staged_tasks;"
    " CREATE TEMPORARY TABLE staged_tasks (LIKE tasks) ON COMMIT DROP"
)


class Loaded:
    """A `ReadModel` holding the rows of a batch's keys, and those rows as they were."""

    def __init__(self, model: ReadModel, keys: Keys | None = None) -> None:
        self.model = model
        # The task ids whose rows (task, attempts) were looked up: a row of one of
        # them that was not found is not in the table.
        self.looked_up: set[str] = set(keys.tasks) if keys is not None else set()
        self.jobs: dict[str, JobRow] = {}
        self.tasks: dict[str, TaskRow] = {}
        self.attempts: dict[tuple[str, int], AttemptRow] = {}
        self.workers: dict[str, WorkerRow] = {}
        self.crawl: dict[tuple[str, int, str], dict[str, Any]] = {}
        self.minute_stats: dict[MinuteKey, MinuteStatsRow] = {}
        self.status_counts: dict[JobStatus, JobStatusCountRow] = {}
        self.batches = len(model.batches)

    # Each `take_*` puts a row as it is in the table into the model, and keeps it (or, of a
    # crawl_stats row, which the rules change in place, a copy) as loaded.

    def take_tasks(self, rows: str) -> None:
        """Task rows, as a JSON array."""
        for task in _TASKS.decode(rows):
            self.take_task(task)

    def take_job(self, job: JobRow) -> None:
        self.model.jobs[job.job_id] = self.jobs[job.job_id] = job

    def take_task(self, task: TaskRow) -> None:
        self.model.tasks[task.task_id] = self.tasks[task.task_id] = task

    def take_attempt(self, attempt: AttemptRow) -> None:
        self.model.attempts.setdefault(attempt.task_id, {})[attempt.attempt] = attempt
        self.attempts[attempt.task_id, attempt.attempt] = attempt

    def take_worker(self, worker: WorkerRow) -> None:
        self.model.workers[worker.worker_id] = self.workers[worker.worker_id] = worker

    def take_crawl(self, row: dict[str, Any]) -> None:
        key = (row["job_id"], row["pass"], row["domain"])
        self.model.crawl.rows[key] = row
        self.crawl[key] = _crawl_copy(row)

    def take_minute_stats(self, stats: MinuteStatsRow) -> None:
        key = (utc(stats.minute), stats.queue, stats.kind)
        self.model.minute_stats[key] = self.minute_stats[key] = stats

    def take_status_count(self, count: JobStatusCountRow) -> None:
        self.model.status_counts[count.status] = self.status_counts[count.status] = count


async def load(
    conn: asyncpg.Connection, queries: Mapping[str, str], keys: Keys, model: ReadModel
) -> Loaded:
    """The rows of `keys` put into `model`: one query, each table's rows as a JSON array
    decoded straight into its row type (`strict=False`: a float column's non-finite value
    comes as a string)."""
    loaded = Loaded(model, keys)
    if not names_rows(keys):
        return loaded
    # A task's row is found by its key; an id that is no key has no row.
    task_keys = [key for key in map(task_key_of, keys.tasks) if key is not None]
    arrays = await conn.fetchrow(
        queries["load_rows"],
        list(keys.jobs),
        list(keys.tasks),
        list(keys.workers),
        list(keys.crawl_jobs),
        list(keys.minutes),
        list(keys.requeued),
        model.partition,
        [job_id for job_id, _ in task_keys],
        [index for _, index in task_keys],
    )
    for job in _JOBS.decode(arrays[0]):
        loaded.take_job(job)
    loaded.take_tasks(arrays[1])
    for attempt in _ATTEMPTS.decode(arrays[2]):
        loaded.take_attempt(attempt)
    for worker in _WORKERS.decode(arrays[3]):
        loaded.take_worker(worker)
    for row in _CRAWL.decode(arrays[4]):
        loaded.take_crawl(row)
    for stats in _MINUTE_STATS.decode(arrays[5]):
        loaded.take_minute_stats(stats)
    for count in _STATUS_COUNTS.decode(arrays[6]):
        loaded.take_status_count(count)
    return loaded


class Carried:
    """The rows a batch's keys name, as its model left them (present or not): what the
    database holds of those keys once the batch is written whole, so the next batch can start
    from them, its own load reading only the rest, while this one's transaction runs.

    Only a batch whose every change is a whole row carries (`carries`): task ranges are
    made into rows by SQL, and a requeue's minute rows follow a task's row as it is on the
    server. A batch that took a job's tasks carries: its `job_batches` row is one more whole
    row, and the lister's listing of it later is another writer, which the checkpoint row's
    token shows (`_postgres._ahead_holds`)."""

    def __init__(self, loaded: Loaded, keys: Keys) -> None:
        self.model = loaded.model
        self.keys = keys
        self.tasks = loaded.looked_up

    @staticmethod
    def carries(loaded: Loaded, keys: Keys) -> bool:
        model = loaded.model
        return not model.ranges and not keys.requeued


def unknown_keys(keys: Keys, carried: Carried) -> Keys:
    """The keys of `keys` whose rows `carried` does not know: to load from the database,
    which the carrying batch's write does not change. `keys` names no requeued task."""
    known = carried.keys
    rest = Keys()
    rest.jobs = keys.jobs - known.jobs
    rest.tasks = keys.tasks - carried.tasks
    rest.workers = keys.workers - known.workers
    rest.crawl_jobs = keys.crawl_jobs - known.crawl_jobs
    rest.minutes = keys.minutes - known.minutes
    return rest


def take_carried(loaded: Loaded, keys: Keys, carried: Carried) -> None:
    """Put into `loaded` (holding the rows of `unknown_keys`) the rows of `keys` that
    `carried` knows, as they will be once its batch is written."""
    before = carried.model
    known = carried.keys
    loaded.looked_up = set(keys.tasks)
    for job_id in keys.jobs & known.jobs:
        if (job := before.jobs.get(job_id)) is not None:
            loaded.take_job(job)
    _take_carried_tasks(loaded, keys.tasks & carried.tasks, before)
    for worker_id in keys.workers & known.workers:
        if (worker := before.workers.get(worker_id)) is not None:
            loaded.take_worker(worker)
    crawl_jobs = keys.crawl_jobs & known.crawl_jobs
    for key, row in before.crawl.rows.items():
        if key[0] in crawl_jobs:
            loaded.take_crawl(_crawl_copy(row))
    minutes = keys.minutes & known.minutes
    for minute_key, stats in before.minute_stats.items():
        if minute_key[0] in minutes:
            loaded.take_minute_stats(stats)
    if keys.jobs and known.jobs:
        # Every row of the partition's (the load reads them with any job's): as carried,
        # over those the load may have read while the carrying batch was being written.
        loaded.model.status_counts.clear()
        loaded.status_counts.clear()
        for count in before.status_counts.values():
            loaded.take_status_count(count)


def _take_carried_tasks(loaded: Loaded, task_ids: Iterable[str], before: ReadModel) -> None:
    """The rows of `task_ids` (task, attempts) from `before` into `loaded`."""
    for task_id in task_ids:
        if (task := before.tasks.get(task_id)) is not None:
            loaded.take_task(task)
        for attempt in before.attempts.get(task_id, {}).values():
            loaded.take_attempt(attempt)


def names_rows(keys: Keys) -> bool:
    """Whether `keys` names any row to load."""
    return bool(keys.jobs or keys.tasks or keys.workers or keys.crawl_jobs or keys.minutes)


def _crawl_copy(row: dict[str, Any]) -> dict[str, Any]:
    return row | {column: dict(row[column]) for column in _CRAWL_MAPS}


def _changed(rows: Iterable[tuple[K, Any]], before: Mapping[K, Any]) -> list[Any]:
    """The rows that are new or not as they were loaded (crawl_stats rows are mutable dicts,
    compared with their copies)."""
    return [row for key, row in rows if before.get(key) != row]


def _attempt_items(model: ReadModel) -> Iterator[tuple[tuple[str, int], AttemptRow]]:
    for task_id, attempts in model.attempts.items():
        for number, row in attempts.items():
            yield (task_id, number), row


async def write(
    conn: asyncpg.Connection, queries: Mapping[str, str], loaded: Loaded, *, schema: str
) -> None:
    """Write what the rules changed in `loaded.model` since it was loaded into `schema`: in
    one statement, the many new or changed rows of a big batch by COPY before it."""
    model = loaded.model
    gone_workers = [key for key in loaded.workers if key not in model.workers]
    tasks = _Sorted(_changed(model.tasks.items(), loaded.tasks), _task_key, loaded.tasks, loaded)
    attempts = _Sorted(
        _changed(_attempt_items(model), loaded.attempts), _attempt_key, loaded.attempts, loaded
    )
    for table, rows in (("tasks", tasks), ("attempt_rows", attempts)):
        if len(rows.new) >= COPY_MIN_ROWS:
            await conn.copy_records_to_table(
                table,
                schema_name=schema,
                columns=COLUMNS[table],
                records=in_columns(table, rows.new),
            )
            rows.new = []
    if len(tasks.existing) >= COPY_MIN_ROWS:
        # A table of this transaction, made as the schema's `tasks` is now, and only for the
        # rows of this call (`_apply_isolating` may call again after a released savepoint).
        await conn.execute(_STAGED_TASKS)
        await conn.copy_records_to_table(
            "staged_tasks", columns=COLUMNS["tasks"], records=in_columns("tasks", tasks.existing)
        )
        await conn.execute(queries["update_staged_tasks"])
        tasks.existing = []
    await conn.execute(
        queries["write_rows"],
        _json([part.as_json() for part in model.unmade_ranges()]),
        _json(_changed(model.jobs.items(), loaded.jobs)),
        _json(tasks.rest()),
        _json(attempts.rest()),
        _json(_changed(model.workers.items(), loaded.workers)),
        gone_workers,
        _json(_changed(model.crawl.rows.items(), loaded.crawl)),
        _json(model.batches[loaded.batches :]),
        _json(_changed(model.minute_stats.items(), loaded.minute_stats)),
        model.partition,
        _json(_changed(model.status_counts.items(), loaded.status_counts)),
    )


R = TypeVar("R", TaskRow, AttemptRow)


def _task_key(row: TaskRow) -> Hashable:
    return row.task_id


def _attempt_key(row: AttemptRow) -> Hashable:
    return (row.task_id, row.attempt)


class _Sorted(Generic[R]):
    """A table's changed rows by what is known of them: `new` (looked up by the load and not
    found; of a task of its own job, as the rules park any event naming another job's task,
    so no other partition writes it), `existing` (loaded), and `others` (the upsert of
    `write_rows` decides)."""

    def __init__(
        self,
        rows: list[R],
        key: Callable[[R], Hashable],
        before: Mapping[Any, R],
        loaded: Loaded,
    ) -> None:
        self.new: list[R] = []
        self.existing: list[R] = []
        self.others: list[R] = []
        for row in rows:
            if key(row) in before:
                self.existing.append(row)
            elif row.task_id in loaded.looked_up:
                self.new.append(row)
            else:
                self.others.append(row)

    def rest(self) -> list[R]:
        """The rows not written by COPY."""
        return self.new + self.existing + self.others


def copy_value(value: Any) -> Any:
    """A value as COPY takes it: jsonb as its text (`JSON_NULL`: NULL)."""
    if isinstance(value, msgspec.Raw):
        return None if value == JSON_NULL else bytes(value).decode()
    if isinstance(value, dict):
        return encode(value).decode()
    return value


def in_columns(table: str, rows: Iterable[msgspec.Struct]) -> list[tuple[Any, ...]]:
    """`rows` as tuples in `COLUMNS` order, jsonb values as text."""
    json_at = [i for i, column in enumerate(COLUMNS[table]) if column in JSON_COLUMNS]
    astuple = msgspec.structs.astuple
    if not json_at:
        return [astuple(row) for row in rows]
    out: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(astuple(row))
        for i in json_at:
            values[i] = copy_value(values[i])
        out.append(tuple(values))
    return out


def _json(rows: list[Any]) -> str:
    return encode(rows).decode()


def parked_rows(model: ReadModel) -> list[tuple[int, str, str, bytes]]:
    """The events the rules parked: the arguments of `reject_event`."""
    return [(row.seq, row.subject, row.error, row.payload) for row in model.rejected.values()]


def keys_of(items: Iterable[SourceItem]) -> Keys:
    keys = Keys()
    for item in items:
        if item.event is not None:
            keys.add(item.event)
    return keys
