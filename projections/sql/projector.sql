-- Queries of the Postgres projector, loaded once by projections/_queries.py.
-- Each block starts with "-- name: <name>". They run inside the batch transaction with
-- search_path set to the projection's schema.
--
-- No rule of the read models is written here: what an event does to a row is decided in
-- Python, once (projections/_rules.py). A batch loads the rows its events name (load_rows),
-- applies its events to them, and writes what changed (write_rows): two statements.


-- name: lock_checkpoint
-- $1 checkpoint row, $2 projection, $3 its partition count. Creates the checkpoint row if
-- missing and locks it until commit (projectors sharing a row take turns); claims the
-- projection's layout if no layout has it yet (projection_layouts, migration 011), without
-- locking the layout row (the partitions' batches do not queue on it). Returns the last
-- applied sequence and the layout's partition count, NULL if another transaction claimed
-- the layout while this statement ran (its row is not in this statement's snapshot:
-- read_layout reads it). One statement: the check costs a batch no round trip. $4 is the
-- taker's token (`writer`, migration 012); the token of the transaction that took the row
-- before is returned (`prior_writer`).
WITH claimed AS (
    INSERT INTO projection_layouts (projection, partitions)
    VALUES ($2, $3)
    ON CONFLICT (projection) DO NOTHING
    RETURNING partitions
),
locked AS (
    INSERT INTO projection_checkpoints AS c (projection, last_seq, writer)
    VALUES ($1, 0, $4)
    ON CONFLICT (projection) DO UPDATE SET writer = $4, prior_writer = c.writer
    RETURNING c.last_seq, c.prior_writer
)
SELECT
    locked.last_seq,
    locked.prior_writer,
    coalesce(
        (SELECT partitions FROM claimed),
        (SELECT partitions FROM projection_layouts WHERE projection = $2)
    ) AS partitions
FROM locked;


-- name: read_layout
-- $1 projection: the partition count of its layout (no row: not claimed yet).
SELECT partitions FROM projection_layouts WHERE projection = $1;


-- name: save_checkpoint
-- $1 projection, $2 last applied sequence
UPDATE projection_checkpoints SET last_seq = $2, updated_at = now() WHERE projection = $1;


-- name: read_checkpoint
-- $1 projection
SELECT last_seq FROM projection_checkpoints WHERE projection = $1;


-- name: read_checkpoints
-- $1 projection: its checkpoint rows, one per partition (`postgres`, `postgres/0-of-2`, ...).
SELECT projection, last_seq FROM projection_checkpoints
WHERE projection = $1 OR starts_with(projection, $1 || '/');


-- name: reject_event
-- $1 seq, $2 subject, $3 error, $4 payload
INSERT INTO rejected_events (seq, subject, error, payload)
VALUES ($1, $2, $3, $4)
ON CONFLICT (seq) DO NOTHING;


-- name: load_rows
-- The rows a batch's events name, each table's as one JSON array: $1 job ids, $2 task ids
-- (attempt_rows; tasks by their keys, the jobs $8 and indexes $9), $3 worker ids, $4 job ids of
-- crawl pages (crawl_stats), and partition $7's stats_per_minute rows of the minutes $5 and of the
-- minutes of the results of the requeued tasks $6 (every queue and kind of those minutes: a few
-- rows). $7 is also the partition of the workers' rows (one per partition) and of the
-- job_status_counts rows, all of which (one per status) come with any job id.
-- One primary-key lookup per key: OFFSET 0 keeps each LATERAL a subquery, which the planner
-- would otherwise join as a whole-table scan (it guesses many attempts per task).
SELECT
    (SELECT coalesce(json_agg(r), '[]') FROM unnest($1::text[]) AS k (id)
     CROSS JOIN LATERAL (SELECT * FROM jobs WHERE job_id = k.id OFFSET 0) AS r),
    (SELECT coalesce(json_agg(r), '[]') FROM unnest($8::text[], $9::integer[]) AS k (job, i)
     CROSS JOIN LATERAL (
         SELECT * FROM tasks WHERE job_id = k.job AND task_index = k.i OFFSET 0
     ) AS r),
    (SELECT coalesce(json_agg(r), '[]') FROM unnest($2::text[]) AS k (id)
     CROSS JOIN LATERAL (SELECT * FROM attempt_rows WHERE task_id = k.id OFFSET 0) AS r),
    (SELECT coalesce(json_agg(r), '[]') FROM unnest($3::text[]) AS k (id)
     CROSS JOIN LATERAL (
         SELECT * FROM workers WHERE worker_id = k.id AND partition = $7::integer OFFSET 0
     ) AS r),
    (SELECT coalesce(json_agg(r), '[]') FROM unnest($4::text[]) AS k (id)
     CROSS JOIN LATERAL (SELECT * FROM crawl_stats WHERE job_id = k.id OFFSET 0) AS r),
    (SELECT coalesce(json_agg(s), '[]') FROM stats_per_minute AS s
     WHERE s.partition = $7::integer
       AND s.minute IN (
           SELECT unnest($5::timestamptz[])
           UNION
           SELECT date_bin('1 minute', r.finished_at, timestamptz 'epoch')
           FROM unnest($6::text[]) AS k (id)
           JOIN results AS r
             ON r.job_id = jobstream_task_job(k.id)
            AND r.task_index = jobstream_task_index(k.id)
       )),
    (SELECT coalesce(json_agg(c), '[]') FROM job_status_counts AS c
     WHERE c.partition = $7::integer AND cardinality($1::text[]) > 0);


-- name: load_batch_tasks
-- $1 job, $2 first index, $3 end index, $4 seq of a batch; $5 its ranges' first indexes and
-- $6 their args (TaskRange): the indexes of the rows task events made before the listing, in
-- order, and as a JSON array those of them the listing may change (`task_listed`). It leaves
-- as it is a finished row that has its range's args and a later seq, as most of a job that
-- ended before its listing are: those are not loaded. (width_bucket finds a row's range.)
SELECT
    coalesce(array_agg(t.task_index ORDER BY t.task_index), '{}'),
    coalesce(json_agg(t) FILTER (
        WHERE t.state NOT IN ('succeeded', 'dead_lettered')
           OR t.updated_seq < $4::bigint
           OR t.args IS DISTINCT FROM (($6::text[])[width_bucket(t.task_index, $5::integer[])])::jsonb
    ), '[]')
FROM tasks AS t
WHERE t.job_id = $1 AND t.task_index >= $2 AND t.task_index < $3;


-- name: write_rows
-- What a batch changed, in one statement: $1 task ranges (the queued rows of TaskRanges in
-- projections/_rules.py, one row per task: a job of millions of tasks costs one object;
-- a task's id is "<job_id>-<task_index>", as events.task_id_for makes it), then whole rows
-- by column name to insert or update: $2 jobs, $3 tasks, $4 attempt_rows, $5 workers,
-- $7 crawl_stats, $9 stats_per_minute, $11 job_status_counts; $6 workers (of partition $10)
-- that went; $8 new job_batches. (The results are a view of the finished task rows.)
-- No two parts touch one row (the ranges leave out the rows written whole).
WITH ranges AS (
    INSERT INTO tasks (task_id, job_id, task_index, kind, args, state, updated_seq)
    SELECT r.job_id || '-' || i, r.job_id, i, r.kind, r.args, 'queued', r.seq
    FROM json_to_recordset($1::json) AS r (
        job_id text, first_index integer, count integer, kind text, args jsonb, seq bigint
    )
    CROSS JOIN generate_series(r.first_index, r.first_index + r.count - 1) AS i
    ON CONFLICT (job_id, task_index) DO NOTHING
),
merge_jobs AS (
    INSERT INTO jobs
    SELECT * FROM json_populate_recordset(NULL::jobs, $2::json)
    ON CONFLICT (job_id) DO UPDATE
    SET
        name = excluded.name, queue = excluded.queue, priority = excluded.priority,
        status = excluded.status, total_tasks = excluded.total_tasks,
        max_attempts = excluded.max_attempts, timeout_s = excluded.timeout_s,
        idempotency_key = excluded.idempotency_key, submitted_by = excluded.submitted_by,
        labels = excluded.labels, submitted_at = excluded.submitted_at,
        started_at = excluded.started_at, finished_at = excluded.finished_at,
        duration_s = excluded.duration_s, error = excluded.error,
        submitted_seq = excluded.submitted_seq, updated_seq = excluded.updated_seq,
        tasks_queued = excluded.tasks_queued, tasks_running = excluded.tasks_running,
        tasks_succeeded = excluded.tasks_succeeded, tasks_failed = excluded.tasks_failed,
        tasks_dead_lettered = excluded.tasks_dead_lettered,
        tasks_cancelled = excluded.tasks_cancelled
),
merge_tasks AS (
    INSERT INTO tasks
    SELECT * FROM json_populate_recordset(NULL::tasks, $3::json)
    ON CONFLICT (job_id, task_index) DO UPDATE
    SET
        job_id = excluded.job_id, task_index = excluded.task_index, kind = excluded.kind,
        args = excluded.args, state = excluded.state, attempts = excluded.attempts,
        worker_id = excluded.worker_id, result = excluded.result, error = excluded.error,
        started_at = excluded.started_at, finished_at = excluded.finished_at,
        duration_s = excluded.duration_s, updated_seq = excluded.updated_seq,
        progress = excluded.progress, progress_message = excluded.progress_message
),
merge_attempt_rows AS (
    INSERT INTO attempt_rows
    SELECT * FROM json_populate_recordset(NULL::attempt_rows, $4::json)
    ON CONFLICT (task_id, attempt) DO UPDATE
    SET
        job_id = excluded.job_id, worker_id = excluded.worker_id, outcome = excluded.outcome,
        error = excluded.error, started_at = excluded.started_at,
        finished_at = excluded.finished_at, duration_s = excluded.duration_s
),
merge_workers AS (
    INSERT INTO workers
    SELECT * FROM json_populate_recordset(NULL::workers, $5::json)
    ON CONFLICT (worker_id, partition) DO UPDATE
    SET
        host = excluded.host, pid = excluded.pid, queues = excluded.queues,
        concurrency = excluded.concurrency, version = excluded.version, state = excluded.state,
        started_at = excluded.started_at, last_seen_at = excluded.last_seen_at,
        stopped_at = excluded.stopped_at, tasks_succeeded = excluded.tasks_succeeded,
        tasks_failed = excluded.tasks_failed, updated_seq = excluded.updated_seq
),
merge_crawl_stats AS (
    INSERT INTO crawl_stats
    SELECT * FROM json_populate_recordset(NULL::crawl_stats, $7::json)
    ON CONFLICT (job_id, pass, domain) DO UPDATE
    SET
        pages_done = excluded.pages_done, pages_failed = excluded.pages_failed,
        broken_links = excluded.broken_links, server_errors = excluded.server_errors,
        redirects = excluded.redirects, bytes = excluded.bytes,
        slow_pages = excluded.slow_pages, pages_warmed = excluded.pages_warmed,
        misses_to_hits = excluded.misses_to_hits, time_saved_us = excluded.time_saved_us,
        timed_pages = excluded.timed_pages, total_us = excluded.total_us,
        min_ms = excluded.min_ms, max_ms = excluded.max_ms,
        status_counts = excluded.status_counts, cache_counts = excluded.cache_counts,
        response_ms = excluded.response_ms, updated_seq = excluded.updated_seq
),
workers_gone AS (
    DELETE FROM workers WHERE worker_id = ANY($6::text[]) AND partition = $10::integer
),
batches AS (
    INSERT INTO job_batches
    SELECT * FROM json_populate_recordset(NULL::job_batches, $8::json)
    ON CONFLICT (job_id, first_index) DO NOTHING
),
merge_stats_per_minute AS (
    INSERT INTO stats_per_minute
    SELECT * FROM json_populate_recordset(NULL::stats_per_minute, $9::json)
    ON CONFLICT (minute, queue, kind, partition) DO UPDATE
    SET succeeded = excluded.succeeded, failed = excluded.failed, durations = excluded.durations
),
merge_job_status_counts AS (
    INSERT INTO job_status_counts
    SELECT * FROM json_populate_recordset(NULL::job_status_counts, $11::json)
    ON CONFLICT (status, partition) DO UPDATE SET jobs = excluded.jobs
)
SELECT 1;


-- name: update_staged_tasks
-- The task rows of a big batch that changed, COPYed into the temporary table staged_tasks
-- (projections/_rows.py), written whole.
UPDATE tasks AS t
SET
    job_id = s.job_id, task_index = s.task_index, kind = s.kind, args = s.args,
    state = s.state, attempts = s.attempts, worker_id = s.worker_id, result = s.result,
    error = s.error, started_at = s.started_at, finished_at = s.finished_at,
    duration_s = s.duration_s, updated_seq = s.updated_seq, progress = s.progress,
    progress_message = s.progress_message
FROM staged_tasks AS s
WHERE t.job_id = s.job_id AND t.task_index = s.task_index;


-- name: unlisted_batches
-- $1 rows to fetch, $2 partitions, $3 partition: the batches of the partition's jobs whose task
-- rows are still to be written, in log order.
SELECT job_id, first_index, seq FROM job_batches
WHERE NOT listed AND ($2::integer = 1 OR jobstream_partition(job_id, $2::integer) = $3::integer)
ORDER BY seq LIMIT $1;


-- name: count_unlisted_batches
SELECT count(*) FROM job_batches WHERE NOT listed;


-- name: take_batch
-- $1 job, $2 first index, $3 seq: a batch's listing, once; its rows follow in the same
-- transaction. Returns nothing if it was listed already.
UPDATE job_batches SET listed = true
WHERE job_id = $1 AND first_index = $2 AND seq = $3 AND NOT listed
RETURNING task_count;
