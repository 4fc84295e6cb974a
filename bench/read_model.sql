-- What the bench reads from jobstream's read models (search_path: the projection's schema).
-- The tables' schema (projections/sql/migrations) is the contract with the projector.


-- name: active_workers
-- $1 worker ids
SELECT count(*) FROM worker_summary WHERE worker_id = ANY($1::text[]) AND state = 'active';


-- name: succeeded_by_job
-- $1 job ids: succeeded tasks per job, as the jobs' rows count them (kept by the projector in
-- the transaction that changes the task rows: a key lookup per job, where counting the task
-- rows made the bench's own polls a share of PostgreSQL's work)
SELECT job_id, tasks_succeeded AS n
FROM jobs
WHERE job_id = ANY($1::text[]);


-- name: finish_span
-- $1 job ids: the first and last task.succeeded time (the event's `at`, set by the worker)
SELECT min(finished_at) AS first_at, max(finished_at) AS last_at
FROM tasks
WHERE job_id = ANY($1::text[]) AND state = 'succeeded';


-- name: tasks_by_worker
-- $1 job ids
SELECT worker_id, count(*) AS n
FROM tasks
WHERE job_id = ANY($1::text[]) AND state = 'succeeded'
GROUP BY worker_id
ORDER BY worker_id;


-- name: succeeded_tasks
-- $1 job ids: the finished ones, with the event's time and the handler's duration
SELECT job_id, task_id, worker_id, finished_at, duration_s
FROM tasks
WHERE job_id = ANY($1::text[]) AND state = 'succeeded';


-- name: task_states
-- $1 job id: how many tasks of the job are in each state, per worker
SELECT state, worker_id, count(*) AS n
FROM tasks
WHERE job_id = $1
GROUP BY state, worker_id;


-- name: running_tasks_of
-- $1 job id, $2 worker id
SELECT task_id FROM tasks WHERE job_id = $1 AND state = 'running' AND worker_id = $2;


-- name: ended_tasks
-- $1 task ids: those in a terminal state, with who ended them and when
SELECT t.task_id, t.state, t.worker_id, t.finished_at, t.duration_s
FROM unnest($1::text[]) AS k (id)
JOIN tasks AS t
  ON t.job_id = jobstream_task_job(k.id) AND t.task_index = jobstream_task_index(k.id)
WHERE t.state IN ('succeeded', 'dead_lettered', 'cancelled');


-- name: job_status
-- $1 job id: its status (NULL before the projector has seen it)
SELECT status FROM jobs WHERE job_id = $1;


-- name: any_succeeded
-- $1 job id: one succeeded task of the job, if there is one (an index range, not a count)
SELECT task_id FROM tasks WHERE job_id = $1 AND state = 'succeeded' LIMIT 1;


-- name: started_before
-- $1 job id, $2 a time: the job's succeeded tasks whose handler started before it
-- (the start is the task.succeeded event's `at` minus its `duration_s`)
SELECT count(*) AS n
FROM tasks
WHERE job_id = $1
  AND state = 'succeeded'
  AND finished_at - make_interval(secs => duration_s) < $2;
