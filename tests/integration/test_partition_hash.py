"""A job's partition is the same everywhere: the bucket nats-server stores its task events
under (the events stream's subject transform), `partition_of` in Python (the projector's
`wants`) and `jobstream_partition` in SQL (the lister's filter)."""

import asyncpg

from jobstream.events import (
    EVENTS_STREAM,
    JOB_BUCKETS,
    Bus,
    TaskProgress,
    ensure_streams,
    events_stream_config,
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


async def test_a_stream_made_before_buckets_keeps_its_subjects_and_its_fences(
    nats_url: str,
) -> None:
    """An events stream made without the transform keeps storing task events as published:
    `ensure_streams` does not add it (a task's fences compare with its earlier events'
    subject), and the subject lookups find them there."""
    bus = await Bus.connect([nats_url], name="legacy")
    try:
        await bus.js.add_stream(events_stream_config().evolve(subject_transform=None))
        await ensure_streams(bus.js)
        info = await bus.js.stream_info(EVENTS_STREAM)
        assert info.config.subject_transform is None
        event = TaskProgress(job_id="J", task_id="J-0", worker_id="w", attempt=1)
        seq = await bus.publish_event(event)
        assert (await bus.js.get_msg(EVENTS_STREAM, seq=seq)).subject == "evt.task.J.J-0"
        last = await bus.last_on_subject("evt.task.J.J-0")
        assert last is not None and last[0] == seq
        # Fenced on that sequence, as a worker fences its ending.
        again = TaskProgress(job_id="J", task_id="J-0", worker_id="w", attempt=2)
        assert await bus.publish_event(again, expected_last_subject_seq=seq) == seq + 1
    finally:
        await bus.close()
