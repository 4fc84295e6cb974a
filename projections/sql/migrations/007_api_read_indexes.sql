-- Indexes for the API's operations views (services/api/ops.sql).
-- Dead letters, the latest first, without reading every finished task.
CREATE INDEX IF NOT EXISTS results_dead_lettered ON results (finished_at DESC, task_id DESC)
WHERE status = 'dead_lettered';
