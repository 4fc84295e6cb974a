-- Partitioned projection (projections/_partitions.py): N projector processes share the log by
-- job. Every table's rows belong to one job, so to one partition, except a worker's: each
-- partition keeps its own row per worker (from the worker's events, which every partition
-- reads, and the task events of its jobs), and readers see them merged in `worker_summary`.
ALTER TABLE workers ADD COLUMN IF NOT EXISTS partition integer NOT NULL DEFAULT 0;
ALTER TABLE workers DROP CONSTRAINT IF EXISTS workers_pkey;
ALTER TABLE workers ADD CONSTRAINT workers_pkey PRIMARY KEY (worker_id, partition);

-- The partition of `partitions` that owns a job: 32-bit FNV-1a of its id modulo 64 buckets
-- (nats-server's `partition()`, which stores each task event with its bucket), then modulo
-- the count, as projections/_partitions.py's `partition_of` computes it.
CREATE OR REPLACE FUNCTION jobstream_partition(job_id text, partitions integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    bytes bytea := convert_to(job_id, 'UTF8');
    digest bigint := 2166136261;
BEGIN
    FOR i IN 0 .. length(bytes) - 1 LOOP
        digest := ((digest # get_byte(bytes, i)) * 16777619) % 4294967296;
    END LOOP;
    RETURN (digest % 64 % partitions)::integer;
END
$$;

-- A worker as readers see it: its partitions' rows merged. Counters are summed and the last
-- sighting is the latest; the rest is the row of the latest event (every partition applies
-- the worker's own events alike, so rows that changed at one event agree).
CREATE OR REPLACE VIEW worker_summary AS
SELECT
    latest.worker_id, latest.host, latest.pid, latest.queues, latest.concurrency,
    latest.version, latest.state, latest.started_at, merged.last_seen_at, latest.stopped_at,
    merged.tasks_succeeded, merged.tasks_failed, merged.updated_seq
FROM (
    SELECT DISTINCT ON (worker_id) *
    FROM workers
    ORDER BY worker_id, updated_seq DESC, partition
) AS latest
JOIN (
    SELECT
        worker_id,
        max(last_seen_at) AS last_seen_at,
        sum(tasks_succeeded)::bigint AS tasks_succeeded,
        sum(tasks_failed)::bigint AS tasks_failed,
        max(updated_seq) AS updated_seq
    FROM workers
    GROUP BY worker_id
) AS merged USING (worker_id);
