-- Read queries of the HTTP API over the read models (projections/sql/migrations).
-- Tables are unqualified: the API's connections set search_path to the read-model schema.
-- Optional filters are written `($n::type IS NULL OR ...)`; the pool sets
-- plan_cache_mode = force_custom_plan, so the planner folds the unused branches away and
-- picks the matching index for each call instead of one generic plan for all.
-- Keyset cursors compare row values, which the (…, submitted_at DESC, job_id DESC) indexes serve.
-- A job's task counts by state are columns of its row (jobs.tasks_*, kept by the projector),
-- and so are the jobs by status (job_status_counts): no read counts jobs, tasks or results.

-- name: list_jobs
-- $1 status, $2 queue (NULL: any), $3/$4 the last (submitted_at, job_id) seen (NULL: first page),
-- $5 rows to fetch, $6 the jobs with tasks in flight (a queued one among them shows as
-- running, so the filter says so too), $7 labels the job must all have (NULL: any), $8/$9
-- submitted at or after / before (NULL: open), $10 a part of the name (a LIKE pattern,
-- escaped by the caller; NULL: any). Newest first.
SELECT job_id, name, queue, status, priority, total_tasks, max_attempts, timeout_s,
       idempotency_key, submitted_by, labels, submitted_at, started_at, finished_at, duration_s,
       error, tasks_queued, tasks_running, tasks_succeeded, tasks_failed, tasks_dead_lettered,
       tasks_cancelled
FROM jobs
WHERE ($1::text IS NULL
       OR ($1::text = 'running'
           AND (status = 'running' OR (status = 'queued' AND job_id = ANY($6::text[]))))
       OR ($1::text = 'queued' AND status = 'queued' AND job_id <> ALL($6::text[]))
       OR ($1::text NOT IN ('running', 'queued') AND status = $1::text))
  AND ($2::text IS NULL OR queue = $2::text)
  AND ($3::timestamptz IS NULL OR (submitted_at, job_id) < ($3::timestamptz, $4::text))
  AND ($7::jsonb IS NULL OR labels @> $7::jsonb)
  AND ($8::timestamptz IS NULL OR submitted_at >= $8::timestamptz)
  AND ($9::timestamptz IS NULL OR submitted_at < $9::timestamptz)
  AND ($10::text IS NULL OR name ILIKE $10::text)
ORDER BY submitted_at DESC, job_id DESC
LIMIT $5::integer;

-- name: get_job
SELECT job_id, name, queue, status, priority, total_tasks, max_attempts, timeout_s,
       idempotency_key, submitted_by, labels, submitted_at, started_at, finished_at, duration_s,
       error, tasks_queued, tasks_running, tasks_succeeded, tasks_failed, tasks_dead_lettered,
       tasks_cancelled
FROM jobs
WHERE job_id = $1::text;

-- name: job_exists
SELECT EXISTS (SELECT 1 FROM jobs WHERE job_id = $1::text);

-- name: waiting_task_counts
-- $1 tasks in flight, $2 the states a task in flight may still have in the read model:
-- how many of them each job has in each such state.
SELECT t.job_id, t.state, count(*) AS n
FROM unnest($1::text[]) AS k (id)
JOIN tasks AS t
  ON t.job_id = jobstream_task_job(k.id) AND t.task_index = jobstream_task_index(k.id)
WHERE t.state = ANY($2::text[])
GROUP BY t.job_id, t.state;

-- name: list_tasks
-- $1 job, $2 state (NULL: any), $3 the last task_index seen (a job's key), $4 rows to fetch,
-- $5 the tasks in flight (one of them that is queued or failed here shows as running: the
-- filter says so too).
SELECT task_id, job_id, task_index, kind, args, state, attempts, worker_id, result, error,
       started_at, finished_at, duration_s, progress, progress_message
FROM tasks
WHERE job_id = $1::text
  AND ($2::text IS NULL
       OR ($2::text = 'running'
           AND (state = 'running'
                OR (state IN ('queued', 'failed') AND task_id = ANY($5::text[]))))
       OR ($2::text IN ('queued', 'failed') AND state = $2::text AND task_id <> ALL($5::text[]))
       OR ($2::text NOT IN ('running', 'queued', 'failed') AND state = $2::text))
  AND ($3::integer IS NULL OR task_index > $3::integer)
ORDER BY task_index
LIMIT $4::integer;

-- name: get_task
SELECT task_id, job_id, task_index, kind, args, state, attempts, worker_id, result, error,
       started_at, finished_at, duration_s, progress, progress_message
FROM tasks
WHERE job_id = jobstream_task_job($1::text) AND task_index = jobstream_task_index($1::text);

-- name: list_attempts
-- A task's attempts, oldest first.
SELECT attempt, worker_id, outcome, error, started_at, finished_at, duration_s
FROM task_attempts
WHERE task_id = $1::text
  AND job_id = jobstream_task_job($1::text) AND task_index = jobstream_task_index($1::text)
ORDER BY attempt;

-- name: list_workers
-- Active workers first, then the most recently started.
SELECT worker_id, host, pid, queues, concurrency, version, state, started_at, last_seen_at,
       stopped_at, tasks_succeeded, tasks_failed
FROM worker_summary
ORDER BY (state = 'active') DESC, started_at DESC NULLS LAST, worker_id;

-- name: list_results
-- $1/$2 finished_at bounds [from, to) (NULL: open), $3 job (NULL: any),
-- $4/$5 the last (finished_at, task_id) seen, $6 rows to fetch. In the order tasks finished,
-- like the daily NDJSON partitions.
SELECT task_id, job_id, kind, inputs, output, processed_by, duration_s, status, error,
       attempts, finished_at, seq
FROM results
WHERE ($1::timestamptz IS NULL OR finished_at >= $1::timestamptz)
  AND ($2::timestamptz IS NULL OR finished_at < $2::timestamptz)
  AND ($3::text IS NULL OR job_id = $3::text)
  AND ($4::timestamptz IS NULL OR (finished_at, task_id) > ($4::timestamptz, $5::text))
ORDER BY finished_at, task_id
LIMIT $6::integer;

-- name: list_dead_letters
-- $1 job (NULL: any), $2 rows to fetch. Dead-lettered tasks, the latest first.
SELECT task_id, job_id, kind, args, attempts, error, finished_at
FROM tasks
WHERE state = 'dead_lettered'
  AND ($1::text IS NULL OR job_id = $1::text)
ORDER BY finished_at DESC NULLS LAST, task_id
LIMIT $2::integer;

-- name: list_checkpoints
SELECT projection, last_seq, updated_at FROM projection_checkpoints ORDER BY projection;

-- name: count_jobs_by_status
-- The jobs in each status, kept by the projector per partition (job_status_counts, migration
-- 010): at most 7 rows per partition, whatever the number of jobs. The statuses no job is in
-- are left out.
SELECT status, sum(jobs)::bigint AS n FROM job_status_counts GROUP BY status
HAVING sum(jobs) <> 0;

-- name: count_unlisted_batches
SELECT count(*) FROM job_batches WHERE NOT listed;

-- name: count_rejected_events
SELECT count(*) FROM rejected_events;
