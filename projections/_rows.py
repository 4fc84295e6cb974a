"""The part of the read models a batch touches: loaded into a `ReadModel`, written back.

`load` reads the rows the batch's events name (`Keys`), one query per table, and remembers
them as loaded; `write` writes what the rules changed: each table's new or changed rows in
one statement (whole rows as one JSON array, `merge_*` in sql/projector.sql), the rows that
went, the new batches and task ranges, and the parked events. Nothing here decides what a
row holds: that is `_rules.py`.
"""

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import asyncpg
import msgspec

from jobstream.events import (
    JSON_COLUMNS,
    AttemptRow,
    JobRow,
    ResultRow,
    SourceItem,
    TaskRow,
    WorkerRow,
    encode,
)
from jobstream.projections._rules import COLUMNS, Keys, ReadModel

R = TypeVar("R", bound=msgspec.Struct)
K = TypeVar("K")

_JSON_IN: dict[str, tuple[str, ...]] = {
    table: tuple(c for c in columns if c in JSON_COLUMNS) for table, columns in COLUMNS.items()
}
_CRAWL_MAPS = ("status_counts", "cache_counts", "response_ms")


def row_of(record: asyncpg.Record, kind: type[R], table: str) -> R:
    """A loaded row as the rules hold it: jsonb values as `msgspec.Raw` (asyncpg gives text)."""
    values = dict(record)
    for column in _JSON_IN[table]:
        value = values[column]
        if value is not None:
            values[column] = msgspec.Raw(value.encode())
    return kind(**values)


class Loaded:
    """A `ReadModel` holding the rows of a batch's keys, and those rows as they were."""

    def __init__(self, model: ReadModel) -> None:
        self.model = model
        self.jobs: dict[str, JobRow] = {}
        self.tasks: dict[str, TaskRow] = {}
        self.attempts: dict[tuple[str, int], AttemptRow] = {}
        self.workers: dict[str, WorkerRow] = {}
        self.results: dict[str, ResultRow] = {}
        self.crawl: dict[tuple[str, int, str], dict[str, Any]] = {}
        self.batches = len(model.batches)

    def take_jobs(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            job = row_of(record, JobRow, "jobs")
            self.model.jobs[job.job_id] = self.jobs[job.job_id] = job

    def take_tasks(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            task = row_of(record, TaskRow, "tasks")
            self.model.tasks[task.task_id] = self.tasks[task.task_id] = task

    def take_attempts(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            attempt = AttemptRow(**record)
            self.model.attempts.setdefault(attempt.task_id, {})[attempt.attempt] = attempt
            self.attempts[attempt.task_id, attempt.attempt] = attempt

    def take_workers(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            worker = WorkerRow(**record)
            self.model.workers[worker.worker_id] = self.workers[worker.worker_id] = worker

    def take_results(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            result = row_of(record, ResultRow, "results")
            self.model.results[result.task_id] = self.results[result.task_id] = result

    def take_crawl(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            row = dict(record)
            for column in _CRAWL_MAPS:
                row[column] = msgspec.json.decode(row[column])
            key = (row["job_id"], row["pass"], row["domain"])
            self.model.crawl.rows[key] = row
            self.crawl[key] = row | {column: dict(row[column]) for column in _CRAWL_MAPS}


async def load(
    conn: asyncpg.Connection, queries: Mapping[str, str], keys: Keys, model: ReadModel
) -> Loaded:
    """The rows of `keys` put into `model`."""
    loaded = Loaded(model)
    if keys.jobs:
        loaded.take_jobs(await conn.fetch(queries["load_jobs"], list(keys.jobs)))
    if keys.tasks:
        task_ids = list(keys.tasks)
        loaded.take_tasks(await conn.fetch(queries["load_tasks"], task_ids))
        loaded.take_attempts(await conn.fetch(queries["load_task_attempts"], task_ids))
        loaded.take_results(await conn.fetch(queries["load_results"], task_ids))
    if keys.workers:
        loaded.take_workers(await conn.fetch(queries["load_workers"], list(keys.workers)))
    if keys.crawl_jobs:
        loaded.take_crawl(await conn.fetch(queries["load_crawl_stats"], list(keys.crawl_jobs)))
    return loaded


def _changed(rows: Iterable[tuple[K, Any]], before: Mapping[K, Any]) -> list[Any]:
    """The rows that are new or not as they were loaded (crawl_stats rows are mutable dicts,
    compared with their copies)."""
    return [row for key, row in rows if before.get(key) != row]


def _attempt_items(model: ReadModel) -> Iterator[tuple[tuple[str, int], AttemptRow]]:
    for task_id, attempts in model.attempts.items():
        for number, row in attempts.items():
            yield (task_id, number), row


async def write(conn: asyncpg.Connection, queries: Mapping[str, str], loaded: Loaded) -> None:
    """Write what the rules changed in `loaded.model` since it was loaded."""
    model = loaded.model

    async def merge(query: str, rows: list[Any]) -> None:
        if rows:
            await conn.execute(queries[query], encode(rows).decode())

    ranges = [r.as_json() for per_job in model.ranges.values() for r in per_job]
    await merge("insert_task_ranges", ranges)
    await merge("merge_jobs", _changed(model.jobs.items(), loaded.jobs))
    await merge("merge_tasks", _changed(model.tasks.items(), loaded.tasks))
    await merge("merge_task_attempts", _changed(_attempt_items(model), loaded.attempts))
    await merge("merge_workers", _changed(model.workers.items(), loaded.workers))
    gone_workers = [key for key in loaded.workers if key not in model.workers]
    if gone_workers:
        await conn.execute(queries["delete_workers"], gone_workers)
    gone_results = [key for key in loaded.results if key not in model.results]
    if gone_results:
        await conn.execute(queries["delete_results"], gone_results)
    await merge("merge_results", _changed(model.results.items(), loaded.results))
    await merge("merge_crawl_stats", _changed(model.crawl.rows.items(), loaded.crawl))
    await merge("insert_job_batches", model.batches[loaded.batches :])


def parked_rows(model: ReadModel) -> list[tuple[int, str, str, bytes]]:
    """The events the rules parked: the arguments of `reject_event`."""
    return [(row.seq, row.subject, row.error, row.payload) for row in model.rejected.values()]


def keys_of(items: Iterable[SourceItem]) -> Keys:
    keys = Keys()
    for item in items:
        if item.event is not None:
            keys.add(item.event)
    return keys
