-- Queries of the Postgres projector, loaded once by projections/_queries.py.
-- Each block starts with "-- name: <name>". They run inside the batch transaction with
-- search_path set to the projection's schema.
--
-- No rule of the read models is written here: what an event does to a row is decided in
-- Python, once (projections/_rules.py). A batch loads the rows its events name (load_*),
-- applies its events to them, and writes the rows that changed: one statement per table
-- (merge_*: $1 a JSON array of whole rows, by column name), deletions, and the task rows of
-- new jobs as ranges (insert_task_ranges), expanded here so a job of millions of tasks
-- costs the projector one JSON object.


-- name: lock_checkpoint
-- $1 projection. Creates the checkpoint row if missing, locks it until commit (projectors
-- sharing a name take turns) and returns the last applied sequence.
INSERT INTO projection_checkpoints AS c (projection, last_seq)
VALUES ($1, 0)
ON CONFLICT (projection) DO UPDATE SET projection = c.projection
RETURNING c.last_seq;


-- name: save_checkpoint
-- $1 projection, $2 last applied sequence
UPDATE projection_checkpoints SET last_seq = $2, updated_at = now() WHERE projection = $1;


-- name: read_checkpoint
-- $1 projection
SELECT last_seq FROM projection_checkpoints WHERE projection = $1;


-- name: reject_event
-- $1 seq, $2 subject, $3 error, $4 payload
INSERT INTO rejected_events (seq, subject, error, payload)
VALUES ($1, $2, $3, $4)
ON CONFLICT (seq) DO NOTHING;


-- name: load_jobs
SELECT * FROM jobs WHERE job_id = ANY($1::text[]);


-- name: load_tasks
SELECT * FROM tasks WHERE task_id = ANY($1::text[]);


-- name: load_task_attempts
SELECT * FROM task_attempts WHERE task_id = ANY($1::text[]);


-- name: load_workers
SELECT * FROM workers WHERE worker_id = ANY($1::text[]);


-- name: load_results
SELECT * FROM results WHERE task_id = ANY($1::text[]);


-- name: load_crawl_stats
SELECT * FROM crawl_stats WHERE job_id = ANY($1::text[]);


-- name: load_batch_tasks
-- $1 job, $2 first index, $3 end index: the task rows a batch's listing may meet (rows that
-- task events made before the listing).
SELECT * FROM tasks WHERE job_id = $1 AND task_index >= $2 AND task_index < $3;


-- name: merge_jobs
INSERT INTO jobs
SELECT * FROM json_populate_recordset(NULL::jobs, $1::json)
ON CONFLICT (job_id) DO UPDATE
SET
    name = excluded.name, queue = excluded.queue, priority = excluded.priority,
    status = excluded.status, total_tasks = excluded.total_tasks,
    max_attempts = excluded.max_attempts, timeout_s = excluded.timeout_s,
    idempotency_key = excluded.idempotency_key, submitted_by = excluded.submitted_by,
    labels = excluded.labels, submitted_at = excluded.submitted_at,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    duration_s = excluded.duration_s, error = excluded.error,
    submitted_seq = excluded.submitted_seq, updated_seq = excluded.updated_seq;


-- name: merge_tasks
INSERT INTO tasks
SELECT * FROM json_populate_recordset(NULL::tasks, $1::json)
ON CONFLICT (task_id) DO UPDATE
SET
    job_id = excluded.job_id, task_index = excluded.task_index, kind = excluded.kind,
    args = excluded.args, state = excluded.state, attempts = excluded.attempts,
    worker_id = excluded.worker_id, result = excluded.result, error = excluded.error,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    duration_s = excluded.duration_s, updated_seq = excluded.updated_seq,
    progress = excluded.progress, progress_message = excluded.progress_message;


-- name: merge_task_attempts
INSERT INTO task_attempts
SELECT * FROM json_populate_recordset(NULL::task_attempts, $1::json)
ON CONFLICT (task_id, attempt) DO UPDATE
SET
    job_id = excluded.job_id, worker_id = excluded.worker_id, outcome = excluded.outcome,
    error = excluded.error, started_at = excluded.started_at,
    finished_at = excluded.finished_at, duration_s = excluded.duration_s;


-- name: merge_workers
INSERT INTO workers
SELECT * FROM json_populate_recordset(NULL::workers, $1::json)
ON CONFLICT (worker_id) DO UPDATE
SET
    host = excluded.host, pid = excluded.pid, queues = excluded.queues,
    concurrency = excluded.concurrency, version = excluded.version, state = excluded.state,
    started_at = excluded.started_at, last_seen_at = excluded.last_seen_at,
    stopped_at = excluded.stopped_at, tasks_succeeded = excluded.tasks_succeeded,
    tasks_failed = excluded.tasks_failed, updated_seq = excluded.updated_seq;


-- name: merge_results
INSERT INTO results
SELECT * FROM json_populate_recordset(NULL::results, $1::json)
ON CONFLICT (task_id) DO UPDATE
SET
    job_id = excluded.job_id, kind = excluded.kind, inputs = excluded.inputs,
    output = excluded.output, processed_by = excluded.processed_by,
    duration_s = excluded.duration_s, status = excluded.status, error = excluded.error,
    attempts = excluded.attempts, finished_at = excluded.finished_at, seq = excluded.seq;


-- name: merge_crawl_stats
INSERT INTO crawl_stats
SELECT * FROM json_populate_recordset(NULL::crawl_stats, $1::json)
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
    response_ms = excluded.response_ms, updated_seq = excluded.updated_seq;

-- name: delete_workers
DELETE FROM workers WHERE worker_id = ANY($1::text[]);


-- name: delete_results
DELETE FROM results WHERE task_id = ANY($1::text[]);


-- name: insert_job_batches
INSERT INTO job_batches
SELECT * FROM json_populate_recordset(NULL::job_batches, $1::json)
ON CONFLICT (job_id, first_index) DO NOTHING;


-- name: insert_task_ranges
-- The queued task rows of TaskRanges (projections/_rules.py), one row per task; a row that is
-- there already (one an event of the same batch changed, written by merge_tasks) is kept. A
-- task's id is "<job_id>-<task_index>", as events.task_id_for makes it.
INSERT INTO tasks (task_id, job_id, task_index, kind, args, state, updated_seq)
SELECT r.job_id || '-' || i, r.job_id, i, r.kind, r.args, 'queued', r.seq
FROM json_to_recordset($1::json) AS r (
    job_id text, first_index integer, count integer, kind text, args jsonb, seq bigint
)
CROSS JOIN generate_series(r.first_index, r.first_index + r.count - 1) AS i
ON CONFLICT (task_id) DO NOTHING;


-- name: unlisted_batches
-- $1 rows to fetch: the batches whose task rows are still to be written, in log order.
SELECT job_id, first_index, seq FROM job_batches WHERE NOT listed ORDER BY seq LIMIT $1;


-- name: count_unlisted_batches
SELECT count(*) FROM job_batches WHERE NOT listed;


-- name: take_batch
-- $1 job, $2 first index, $3 seq: a batch's listing, once; its rows follow in the same
-- transaction. Returns nothing if it was listed already.
UPDATE job_batches SET listed = true
WHERE job_id = $1 AND first_index = $2 AND seq = $3 AND NOT listed
RETURNING task_count;
