"""A task row's key is its job and index (migration 015): `task_key_of` in Python (the
projector's loads) and `jobstream_task_job` / `jobstream_task_index` in SQL (the API's
lookups by id) read the same key from an id, and none from any text that is not one."""

import asyncpg

from jobstream.events import MAX_TASKS_PER_JOB, task_id_for, task_key_of
from jobstream.projections import migrate

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
