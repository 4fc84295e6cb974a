-- A task's key is its job and its index in the job (issue 15). Its id is made of the two
-- ("<job_id>-<task_index>", events.task_id_for), so the primary key on `task_id` and the index
-- on (job_id, task_index) said the same thing twice; and the index on (job_id, state) held
-- every row. Each task row written (queued, then finished) paid an entry in all three. Now:
--
-- - the primary key is (job_id, task_index): a job's tasks in order, and a task by its id
--   through `jobstream_task_job` and `jobstream_task_index` below (a check keeps every id
--   the one its key makes);
-- - `tasks_not_succeeded` keeps the rows a job's task list is filtered to by state, all
--   but the succeeded ones (most of a big job, found in task order through the key).
--
-- A task row that is made queued and then succeeds costs four index entries instead of seven.
ALTER TABLE tasks DROP CONSTRAINT tasks_pkey;
ALTER TABLE tasks ADD CONSTRAINT tasks_pkey PRIMARY KEY (job_id, task_index);
ALTER TABLE tasks ADD CONSTRAINT tasks_id_is_key CHECK (task_id = job_id || '-' || task_index);
DROP INDEX IF EXISTS tasks_by_job_index;
DROP INDEX IF EXISTS tasks_by_job_state;
CREATE INDEX IF NOT EXISTS tasks_not_succeeded ON tasks (job_id, task_index)
WHERE state <> 'succeeded';

-- The job and the index of a task id as events.task_id_for makes them (an index below 10^9,
-- no leading zero, as events.task_index_of reads it); NULL for any other text.
CREATE OR REPLACE FUNCTION jobstream_task_job(task_id text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN substring(task_id FROM '^(.*)-(?:0|[1-9][0-9]{0,8})$');

CREATE OR REPLACE FUNCTION jobstream_task_index(task_id text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN substring(task_id FROM '-(0|[1-9][0-9]{0,8})$')::integer;

-- Readers of a task's result or attempts find its row by its key: both views gain the
-- task's index (of the rows of attempt_rows, which are found by their task id, computed).
CREATE OR REPLACE VIEW results AS
SELECT
    task_id, job_id, kind, args AS inputs, result AS output,
    coalesce(worker_id, '') AS processed_by, duration_s, state AS status, error, attempts,
    finished_at, updated_seq AS seq, task_index
FROM tasks
WHERE state IN ('succeeded', 'dead_lettered');

CREATE OR REPLACE VIEW task_attempts AS
SELECT
    task_id, attempt, job_id, worker_id, outcome, error, started_at, finished_at, duration_s,
    jobstream_task_index(task_id) AS task_index
FROM attempt_rows
UNION ALL
SELECT
    t.task_id, t.attempts, t.job_id, coalesce(t.worker_id, ''), 'succeeded', NULL,
    t.started_at, t.finished_at, t.duration_s, t.task_index
FROM tasks AS t
WHERE t.state = 'succeeded'
  AND NOT EXISTS (
      SELECT 1 FROM attempt_rows AS a WHERE a.task_id = t.task_id AND a.attempt = t.attempts
  );
