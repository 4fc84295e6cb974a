-- Counts kept by the projector, so that no page load counts a big table (issue 14).
--
-- A job's task rows by state, on its row (events/_read_model.py JobRow): what
-- `SELECT state, count(*) FROM tasks WHERE job_id = ... GROUP BY state` gives. The tasks of
-- a streamed job's batch not listed yet have no rows and are in no count (the readers show
-- `total_tasks` less the counted as queued).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS tasks_queued integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS tasks_running integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS tasks_succeeded integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS tasks_failed integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS tasks_dead_lettered integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS tasks_cancelled integer NOT NULL DEFAULT 0;

-- The results rows summed per minute of finished_at (UTC), queue (the job's; '' when the
-- job was not known as its task finished) and kind: those succeeded, those dead-lettered, and
-- the succeeded ones' durations as a log-scale histogram {"<bucket>": tasks}, bucket i
-- holding [1.1^i, 1.1^(i+1)) ms (events/_read_model.py duration_bucket; a NULL duration is
-- in none). `partition`: the projection partition that writes the row (each row has one
-- writer); readers sum over partitions. GET /stats reads these, never `results`.
CREATE TABLE IF NOT EXISTS stats_per_minute (
    minute      timestamptz NOT NULL,
    queue       text NOT NULL,
    kind        text NOT NULL,
    partition   integer NOT NULL,
    succeeded   bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    durations   jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (minute, queue, kind, partition)
);

-- Both made again from the rows they count (all into partition 0): for read models
-- written before this migration, and for rows written by other means than the projector
-- (the bench's COPY). Run it while no projector writes.
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
$$;

SELECT recount_read_model();
