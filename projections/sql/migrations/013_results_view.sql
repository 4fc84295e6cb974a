-- The results are the finished tasks (issue 15): a view over `tasks`, no longer a second row
-- written per finished task. A task's row already holds all a result shows, and a finished
-- row never changes (a terminal state is never left; a dead letter given another round
-- leaves the view as its state leaves `dead_lettered`). Readers keep the table's columns.
--
-- What the table held beyond its task rows goes: a finishing event of a task the read models
-- do not hold (of an unknown job, or an id that is not one of its job's), and one that came
-- after its task was cancelled. The daily NDJSON files keep every first finishing event.
DROP TABLE IF EXISTS results;

CREATE OR REPLACE VIEW results AS
SELECT
    task_id, job_id, kind, args AS inputs, result AS output,
    coalesce(worker_id, '') AS processed_by, duration_s, state AS status, error, attempts,
    finished_at, updated_seq AS seq
FROM tasks
WHERE state IN ('succeeded', 'dead_lettered');

-- The indexes the table had, on the finished rows of `tasks` (a query on the view is planned
-- on `tasks`: its predicates imply these).
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at, task_id)
WHERE state IN ('succeeded', 'dead_lettered');
CREATE INDEX IF NOT EXISTS tasks_dead_lettered ON tasks (finished_at DESC, task_id DESC)
WHERE state = 'dead_lettered';
CREATE INDEX IF NOT EXISTS tasks_crawl_broken ON tasks (job_id, (result -> 'pass'), updated_seq)
WHERE kind = 'http.warm' AND state = 'succeeded'
  AND result -> 'status' >= '400'::jsonb AND result -> 'status' < '500'::jsonb;
CREATE INDEX IF NOT EXISTS tasks_crawl_slow ON tasks (job_id, (result -> 'pass'), updated_seq)
WHERE kind = 'http.warm' AND state = 'succeeded'
  AND jsonb_typeof(result #> '{timings_ms,total}') = 'number'
  AND result #> '{timings_ms,total}' > '3000'::jsonb;
