"""The api section's read models, written by COPY, hold together as the projector's would: every
job's task rows match its count, each finished task has a finish time (a results row), attempt
rows as many as each task's attempts, the workers' counters the sums of what they did, the
streamed job's batches all listed; and the API's own reads show the big job as seeded."""

import asyncpg

from jobstream.bench._api_seed import BIG_JOB_FINISHED_SHARE, seed
from jobstream.services.api._reads import job_summary

SCHEMA = "bench_api_seed"
SMALL_JOBS = 120
BIG_TASKS = 3_000

CHECKS = {
    "jobs whose task rows differ from total_tasks": """
        SELECT count(*) FROM jobs j
        WHERE j.total_tasks <> (SELECT count(*) FROM tasks t WHERE t.job_id = j.job_id)""",
    "finished tasks without a finish time (a results row has one)": """
        SELECT count(*) FROM tasks
        WHERE state IN ('succeeded', 'dead_lettered') AND finished_at IS NULL""",
    "tasks whose attempt rows are not as many as their attempts": """
        SELECT count(*) FROM tasks t
        WHERE t.attempts <> (SELECT count(*) FROM task_attempts a WHERE a.task_id = t.task_id)""",
    "completed jobs with a task not succeeded": """
        SELECT count(*) FROM jobs j JOIN tasks t USING (job_id)
        WHERE j.status = 'completed' AND t.state <> 'succeeded'""",
    "failed jobs without a dead letter": """
        SELECT count(*) FROM jobs j WHERE j.status = 'failed' AND NOT EXISTS (
            SELECT 1 FROM tasks t WHERE t.job_id = j.job_id AND t.state = 'dead_lettered')""",
    "queued jobs with a task not queued": """
        SELECT count(*) FROM jobs j JOIN tasks t USING (job_id)
        WHERE j.status = 'queued' AND t.state <> 'queued'""",
    "workers whose counters are not the sums of their attempts": """
        SELECT count(*) FROM workers w
        WHERE w.tasks_succeeded <> (SELECT count(*) FROM task_attempts a
                                    WHERE a.worker_id = w.worker_id AND a.outcome = 'succeeded')
           OR w.tasks_failed <> (SELECT count(*) FROM task_attempts a
                                 WHERE a.worker_id = w.worker_id AND a.outcome = 'failed')""",
    "running tasks held by a worker not active": """
        SELECT count(*) FROM tasks t JOIN workers w ON w.worker_id = t.worker_id
        WHERE t.state = 'running' AND w.state <> 'active'""",
    "jobs whose kept task counts differ from their task rows by state": """
        SELECT count(*) FROM jobs j
        WHERE (j.tasks_queued, j.tasks_running, j.tasks_succeeded, j.tasks_failed,
               j.tasks_dead_lettered, j.tasks_cancelled)
              <> (SELECT count(*) FILTER (WHERE state = 'queued'),
                         count(*) FILTER (WHERE state = 'running'),
                         count(*) FILTER (WHERE state = 'succeeded'),
                         count(*) FILTER (WHERE state = 'failed'),
                         count(*) FILTER (WHERE state = 'dead_lettered'),
                         count(*) FILTER (WHERE state = 'cancelled')
                  FROM tasks t WHERE t.job_id = j.job_id)""",
    "minutes whose kept sums differ from their results rows": """
        SELECT count(*) FROM (
            SELECT date_bin('1 minute', r.finished_at, timestamptz 'epoch') AS minute,
                   j.queue, r.kind,
                   count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
                   count(*) FILTER (WHERE r.status = 'dead_lettered') AS failed
            FROM results r JOIN jobs j USING (job_id) GROUP BY 1, 2, 3
        ) AS r FULL JOIN stats_per_minute s USING (minute, queue, kind)
        WHERE s.minute IS NULL OR r.minute IS NULL
           OR (r.succeeded, r.failed) <> (s.succeeded, s.failed)""",
    "statuses whose kept job count differs from the jobs rows": """
        SELECT count(*) FROM (SELECT status, count(*) AS jobs FROM jobs GROUP BY status) AS j
        FULL JOIN (SELECT status, sum(jobs) AS jobs FROM job_status_counts GROUP BY status) AS k
            USING (status)
        WHERE j.jobs IS DISTINCT FROM k.jobs""",
    "jobs whose updated_seq is before their tasks'": """
        SELECT count(*) FROM jobs j
        WHERE j.updated_seq < (SELECT max(t.updated_seq) FROM tasks t WHERE t.job_id = j.job_id)""",
}


async def test_seeded_read_models_hold_together(database_url: str) -> None:
    seeded = await seed(database_url, SCHEMA, small_jobs=SMALL_JOBS, big_job_tasks=BIG_TASKS)

    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        for what, sql in CHECKS.items():
            assert await conn.fetchval(sql) == 0, what
        assert await conn.fetchval("SELECT count(*) FROM jobs") == seeded.jobs == SMALL_JOBS + 1
        assert await conn.fetchval("SELECT count(*) FROM tasks") == seeded.tasks
        assert await conn.fetchval("SELECT count(*) FROM results") == seeded.results
        assert await conn.fetchval("SELECT count(*) FROM task_attempts") == seeded.attempts
        dead = "SELECT count(*) FROM results WHERE status = 'dead_lettered'"
        assert await conn.fetchval(dead) == seeded.dead_letters > 0
        batches = await conn.fetchrow(
            "SELECT sum(task_count) AS tasks, bool_and(listed) AS listed FROM job_batches"
            " WHERE job_id = $1",
            seeded.big_job_id,
        )
        assert batches["tasks"] == BIG_TASKS and batches["listed"]
        newest = await conn.fetchval(
            "SELECT job_id FROM jobs ORDER BY submitted_at DESC, job_id DESC LIMIT 1"
        )
        assert newest == seeded.big_job_id
        big = await job_summary(conn, seeded.big_job_id)
    finally:
        await conn.close()

    assert big is not None
    assert big["status"] == "running" and big["total_tasks"] == BIG_TASKS
    assert big["progress"] == BIG_JOB_FINISHED_SHARE
    counts = big["tasks"]
    assert isinstance(counts, dict)
    assert counts["queued"] + counts["running"] == round(BIG_TASKS * (1 - BIG_JOB_FINISHED_SHARE))
