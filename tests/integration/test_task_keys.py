"""A task row's key is its job and index (migration 015): `task_key_of` in Python (the
projector's loads) and `jobstream_task_job` / `jobstream_task_index` in SQL (the API's
lookups by id) read the same key from an id, and none from any text that is not one."""

import asyncpg
import pytest

from jobstream.events import MAX_TASKS_PER_JOB, task_id_for, task_key_of
from jobstream.projections import migrate
from jobstream.projections._migrate import _migrations

IDS = [
    task_id_for("job", 0),
    task_id_for("job", 17),
    task_id_for("a-b-c", 12),
    task_id_for("01JD5ABCXYZ", MAX_TASKS_PER_JOB - 1),
    "x" * 5000 + "-3",
    "-5",
    "job--1",
    "job",
    "job-",
    "job-012",
    "job-1a",
    "job-+1",
    "job- 1",
    "job-1 ",
    "job-٣",  # an Arabic-Indic digit: no index
    "job-9999999999",
    "job-" + "9" * 200,
    "job-999999999",
    "",
]


async def test_sql_and_python_read_the_same_key_from_any_text(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, "key_check")
        rows = await conn.fetch(
            "SELECT key_check.jobstream_task_job(id), key_check.jobstream_task_index(id)"
            " FROM unnest($1::text[]) AS id",
            IDS,
        )
    finally:
        await conn.close()
    in_sql = [None if row[0] is None else (row[0], row[1]) for row in rows]
    in_python = [task_key_of(task_id) for task_id in IDS]
    # SQL reads any index of up to 9 digits; a row is only made below the task limit.
    assert in_python == [
        key if key is not None and key[1] < MAX_TASKS_PER_JOB else None for key in in_sql
    ]
    assert in_python[:7] == [
        ("job", 0),
        ("job", 17),
        ("a-b-c", 12),
        ("01JD5ABCXYZ", MAX_TASKS_PER_JOB - 1),
        ("x" * 5000, 3),
        ("", 5),
        ("job-", 1),
    ]
    assert in_python[7:] == [None] * (len(IDS) - 7)


async def test_a_schema_of_migration_014_keeps_its_task_rows_under_the_new_key(
    database_url: str,
) -> None:
    """Migration 015 rebuilds the key of the task rows an earlier projector wrote; they are
    found by their ids through it, in `tasks` and in both views."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS before_key CASCADE; CREATE SCHEMA before_key")
        await conn.execute("SET search_path TO before_key")
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in _migrations():
            if version < 15:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
        await conn.execute(
            "INSERT INTO tasks (task_id, job_id, task_index, kind, state, attempts, worker_id,"
            " finished_at, updated_seq)"
            " SELECT 'j-' || i, 'j', i, 'noop', CASE WHEN i < 3 THEN 'succeeded' ELSE 'queued'"
            " END, CASE WHEN i < 3 THEN 1 ELSE 0 END, 'w', now(), 1"
            " FROM generate_series(0, 9) AS i"
        )
        assert await migrate(conn, "before_key") == ["015_task_key.sql"]
        key = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conname = 'tasks_pkey' AND connamespace = 'before_key'::regnamespace"
        )
        assert key == "PRIMARY KEY (job_id, task_index)"
        found = await conn.fetch(
            "SELECT t.task_id, t.state FROM unnest($1::text[]) AS k (id) JOIN tasks AS t"
            " ON t.job_id = jobstream_task_job(k.id) AND t.task_index = jobstream_task_index(k.id)"
            " ORDER BY t.task_index",
            ["j-2", "j-7", "j-07", "k-1"],
        )
        assert [tuple(row) for row in found] == [("j-2", "succeeded"), ("j-7", "queued")]
        assert await conn.fetchval("SELECT count(*) FROM results WHERE task_index < 3") == 3
        attempt = await conn.fetchrow(
            "SELECT attempt, outcome, task_index FROM task_attempts WHERE task_id = 'j-1'"
        )
        assert tuple(attempt) == (1, "succeeded", 1)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO tasks (task_id, job_id, task_index, kind, state, updated_seq)"
                " VALUES ('j-99', 'j', 98, 'noop', 'queued', 1)"
            )
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS before_key CASCADE")
        await conn.close()
