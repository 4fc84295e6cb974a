"""A job's partition is the same everywhere: the bucket nats-server stores its task events
under (the events stream's subject transform), `partition_of` in Python (the projector's
`wants`) and `jobstream_partition` in SQL (the lister's filter)."""

import asyncpg

from jobstream.events import (
    EVENTS_STREAM,
    JOB_BUCKETS,
    Bus,
    TaskProgress,
    job_bucket,
    job_task_events_subject,
)
from jobstream.projections import migrate, partition_of

JOB_IDS = [f"job-{n}" for n in range(500)] + ["01JD5ABCXYZ", "x" * 64, "a_b-c"]


async def test_the_server_stores_task_events_under_the_jobs_bucket(bus: Bus) -> None:
    first = await bus.stream_last_seq() + 1
    for job_id in JOB_IDS:
        await bus.publish_event(
            TaskProgress(job_id=job_id, task_id=f"{job_id}-0", worker_id="w", attempt=1)
        )
    for seq, job_id in enumerate(JOB_IDS, start=first):
        message = await bus.js.get_msg(EVENTS_STREAM, seq=seq)
        assert message.subject == f"evt.task.{job_id}.{job_id}-0.{job_bucket(job_id)}"
    # A job's task events, whatever they were stored as.
    found = await bus.js.get_msg(
        EVENTS_STREAM, seq=first, subject=job_task_events_subject(JOB_IDS[7]), next=True
    )
    assert found.seq == first + 7
    assert {job_bucket(job_id) for job_id in JOB_IDS} == set(range(JOB_BUCKETS))


async def test_sql_and_python_agree_on_every_jobs_partition(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, "hash_check")
        for count in (1, 2, 3, 4, 7, 64):
            rows = await conn.fetch(
                "SELECT hash_check.jobstream_partition(id, $2) FROM unnest($1::text[]) AS id",
                JOB_IDS,
                count,
            )
            assert [row[0] for row in rows] == [partition_of(job, count) for job in JOB_IDS]
    finally:
        await conn.close()
