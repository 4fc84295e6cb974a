-- A task's attempts (issue 15): the attempt a succeeded task's row already tells of is not
-- written a second time. `attempt_rows` keeps every other attempt (one that a task.started
-- announced, that failed, or that came after its task had ended); `task_attempts`, what
-- readers see, adds to them the last attempt of each succeeded task that has no row of its
-- own, from the task's row (a finished row never changes).
ALTER TABLE task_attempts RENAME TO attempt_rows;
ALTER INDEX IF EXISTS task_attempts_pkey RENAME TO attempt_rows_pkey;
ALTER INDEX IF EXISTS task_attempts_by_job RENAME TO attempt_rows_by_job;

CREATE VIEW task_attempts AS
SELECT task_id, attempt, job_id, worker_id, outcome, error, started_at, finished_at, duration_s
FROM attempt_rows
UNION ALL
SELECT
    t.task_id, t.attempts, t.job_id, coalesce(t.worker_id, ''), 'succeeded', NULL,
    t.started_at, t.finished_at, t.duration_s
FROM tasks AS t
WHERE t.state = 'succeeded'
  AND NOT EXISTS (
      SELECT 1 FROM attempt_rows AS a WHERE a.task_id = t.task_id AND a.attempt = t.attempts
  );
