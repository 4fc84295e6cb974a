"""The part of the read models a batch touches: loaded into a `ReadModel`, written back.

`load` reads the rows the batch's events name (`Keys`), one query per table, and remembers
them as loaded; `write` writes what the rules changed: each table's new or changed rows in
one statement (whole rows as one JSON array, `merge_*` in sql/projector.sql), the rows that
went, the new batches and task ranges, and the parked events. Nothing here decides what a
row holds: that is `_rules.py`.
"""

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import asyncpg
import msgspec

from jobstream.events import SourceItem, encode
from jobstream.projections._rules import COLUMNS, JSON_COLUMNS, Keys, ReadModel, Row

_Key = Any
_Pick = Callable[[Row], tuple[Any, ...]]
_PICK: dict[str, _Pick] = {
    table: operator.itemgetter(*columns) for table, columns in COLUMNS.items()
}
_JSON_IN: dict[str, tuple[str, ...]] = {
    table: tuple(c for c in columns if c in JSON_COLUMNS) for table, columns in COLUMNS.items()
}


def _as_row(record: asyncpg.Record, table: str) -> Row:
    """A loaded row as the rules hold it: jsonb values as `msgspec.Raw` (asyncpg gives text)."""
    row = dict(record)
    for column in _JSON_IN[table]:
        value = row[column]
        if value is not None:
            row[column] = msgspec.Raw(value.encode())
    return row


class Loaded:
    """A `ReadModel` holding the rows of a batch's keys, and those rows as they were."""

    def __init__(self, model: ReadModel) -> None:
        self.model = model
        self.jobs: dict[_Key, tuple[Any, ...]] = {}
        self.tasks: dict[_Key, tuple[Any, ...]] = {}
        self.attempts: dict[_Key, tuple[Any, ...]] = {}
        self.workers: dict[_Key, tuple[Any, ...]] = {}
        self.results: dict[_Key, tuple[Any, ...]] = {}
        self.crawl: dict[_Key, tuple[Any, ...]] = {}
        self.batches = len(model.batches)

    def take_jobs(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            row = _as_row(record, "jobs")
            self.model.jobs[row["job_id"]] = row
            self.jobs[row["job_id"]] = _PICK["jobs"](row)

    def take_tasks(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            row = _as_row(record, "tasks")
            self.model.tasks[row["task_id"]] = row
            self.tasks[row["task_id"]] = _PICK["tasks"](row)

    def take_attempts(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            row = dict(record)
            self.model.attempts.setdefault(row["task_id"], {})[row["attempt"]] = row
            self.attempts[row["task_id"], row["attempt"]] = _PICK["task_attempts"](row)

    def take_workers(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            row = dict(record)
            self.model.workers[row["worker_id"]] = row
            self.workers[row["worker_id"]] = _PICK["workers"](row)

    def take_results(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            result = _PICK["results"](_as_row(record, "results"))
            self.model.results[result[0]] = result
            self.results[result[0]] = result

    def take_crawl(self, records: Iterable[asyncpg.Record]) -> None:
        for record in records:
            row = dict(record)
            for column in ("status_counts", "cache_counts", "response_ms"):
                row[column] = msgspec.json.decode(row[column])
            key = (row["job_id"], row["pass"], row["domain"])
            self.model.crawl.rows[key] = row
            self.crawl[key] = _PICK["crawl_stats"](row)


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


def _changed(
    table: str, rows: Iterable[tuple[_Key, Row]], before: Mapping[_Key, tuple[Any, ...]]
) -> list[Row]:
    pick = _PICK[table]
    return [row for key, row in rows if before.get(key) != pick(row)]


def _attempt_items(model: ReadModel) -> Iterator[tuple[_Key, Row]]:
    for task_id, attempts in model.attempts.items():
        for number, row in attempts.items():
            yield (task_id, number), row


def _result_items(model: ReadModel, before: Mapping[_Key, tuple[Any, ...]]) -> list[Row]:
    columns = COLUMNS["results"]
    return [
        dict(zip(columns, row, strict=True))
        for task_id, row in model.results.items()
        if before.get(task_id) != row
    ]


async def write(conn: asyncpg.Connection, queries: Mapping[str, str], loaded: Loaded) -> None:
    """Write what the rules changed in `loaded.model` since it was loaded."""
    model = loaded.model

    async def merge(query: str, rows: list[Any]) -> None:
        if rows:
            await conn.execute(queries[query], encode(rows).decode())

    ranges = [r.as_json() for per_job in model.ranges.values() for r in per_job]
    await merge("insert_task_ranges", ranges)
    await merge("merge_jobs", _changed("jobs", model.jobs.items(), loaded.jobs))
    await merge("merge_tasks", _changed("tasks", model.tasks.items(), loaded.tasks))
    await merge(
        "merge_task_attempts", _changed("task_attempts", _attempt_items(model), loaded.attempts)
    )
    await merge("merge_workers", _changed("workers", model.workers.items(), loaded.workers))
    gone_workers = [key for key in loaded.workers if key not in model.workers]
    if gone_workers:
        await conn.execute(queries["delete_workers"], gone_workers)
    gone_results = [key for key in loaded.results if key not in model.results]
    if gone_results:
        await conn.execute(queries["delete_results"], gone_results)
    await merge("merge_results", _result_items(model, loaded.results))
    await merge(
        "merge_crawl_stats", _changed("crawl_stats", model.crawl.rows.items(), loaded.crawl)
    )
    await merge("insert_job_batches", model.batches[loaded.batches :])


def parked(model: ReadModel) -> list[tuple[int, str, str, bytes]]:
    """The events the rules parked: the arguments of `reject_event`."""
    return [
        (row["seq"], row["subject"], row["error"], row["payload"])
        for row in model.rejected.values()
    ]


def keys_of(items: Iterable[SourceItem]) -> Keys:
    keys = Keys()
    for item in items:
        if item.event is not None:
            keys.add(item.event)
    return keys
