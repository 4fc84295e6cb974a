-- The jobs in each status, kept by the projector, so that `/metrics` (and the dashboard's
-- "Jobs by status", which reads it) count no table (issue 14). `partition`: the projection
-- partition that writes the row (each row has one writer); it adds a job as the job's row is
-- made in or moves into `status` and takes it off as it moves out, so one partition's count
-- may be below 0 (a job counted by the backfill below, into partition 0, that another
-- partition moves on). Readers sum over partitions (events/_read_model.py JobStatusCountRow).
CREATE TABLE IF NOT EXISTS job_status_counts (
    status      text NOT NULL,
    partition   integer NOT NULL,
    jobs        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (status, partition)
);

-- The jobs by status made again from the jobs rows (into partition 0). Run it while no
-- projector writes.
CREATE OR REPLACE FUNCTION recount_job_statuses() RETURNS void
LANGUAGE sql AS $$
    DELETE FROM job_status_counts;

    INSERT INTO job_status_counts (status, partition, jobs)
    SELECT status, 0, count(*) FROM jobs GROUP BY status;
$$;

-- Migration 008's recount, and the jobs by status.
CREATE OR REPLACE FUNCTION recount_read_model() RETURNS void
LANGUAGE sql AS $$
    WITH counted AS (
        SELECT job_id,
               count(*) FILTER (WHERE state = 'queued') AS queued,
               count(*) FILTER (WHERE state = 'running') AS running,
               count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE state = 'failed') AS failed,
               count(*) FILTER (WHERE state = 'dead_lettered') AS dead_lettered,
               count(*) FILTER (WHERE state = 'cancelled') AS cancelled
        FROM tasks
        GROUP BY job_id
    )
    UPDATE jobs AS j
    SET tasks_queued = coalesce(c.queued, 0), tasks_running = coalesce(c.running, 0),
        tasks_succeeded = coalesce(c.succeeded, 0), tasks_failed = coalesce(c.failed, 0),
        tasks_dead_lettered = coalesce(c.dead_lettered, 0),
        tasks_cancelled = coalesce(c.cancelled, 0)
    FROM jobs AS k
    LEFT JOIN counted AS c ON c.job_id = k.job_id
    WHERE k.job_id = j.job_id;

    DELETE FROM stats_per_minute;

    INSERT INTO stats_per_minute (minute, queue, kind, partition, succeeded, failed, durations)
    SELECT minute, queue, kind, 0, sum(succeeded), sum(failed),
           coalesce(jsonb_object_agg(bucket, succeeded) FILTER (WHERE bucket IS NOT NULL),
                    '{}'::jsonb)
    FROM (
        SELECT date_bin('1 minute', r.finished_at, timestamptz 'epoch') AS minute,
               coalesce(j.queue, '') AS queue,
               r.kind,
               CASE WHEN r.status = 'succeeded' AND r.duration_s IS NOT NULL THEN
                   floor(ln(least(1e12, greatest(0.001, r.duration_s * 1000))) / ln(1.1))
                       ::integer::text
               END AS bucket,
               count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE r.status = 'dead_lettered') AS failed
        FROM results AS r
        LEFT JOIN jobs AS j ON j.job_id = r.job_id
        GROUP BY 1, 2, 3, 4
    ) AS per_bucket
    GROUP BY minute, queue, kind;

    SELECT recount_job_statuses();
$$;

SELECT recount_job_statuses();
