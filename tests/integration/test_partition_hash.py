"""The partition of a job is the same in SQL (`jobstream_partition`, the lister's filter) as
in Python (`partition_of`, the projector's)."""

import asyncpg

from jobstream.projections import migrate, partition_of


async def test_sql_and_python_agree_on_every_jobs_partition(database_url: str) -> None:
    job_ids = [f"job-{n}" for n in range(2000)] + ["ÿ-ünïcode", "x" * 200, "01JD0000000000"]
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, "hash_check")
        for count in (1, 2, 3, 4, 7, 64):
            rows = await conn.fetch(
                "SELECT hash_check.jobstream_partition(id, $2) FROM unnest($1::text[]) AS id",
                job_ids,
                count,
            )
            assert [row[0] for row in rows] == [partition_of(job, count) for job in job_ids]
    finally:
        await conn.close()
