-- Queries of the Postgres projector, loaded once by projections/_queries.py.
-- Each block starts with "-- name: <name>". They run inside the batch transaction with
-- search_path set to the projection's schema.
--
-- One block per event type, run once per "round" of a batch (see projections/_postgres.py)
-- for all the events of that type in the round: $1 is a JSON array of one object per event,
-- unpacked into the rows of `e`. Events of one round touch disjoint rows, so their order
-- within the round does not matter and no statement touches a row twice. The effects of
-- task events on the shared job and worker rows are summed per round in `jobs_running`
-- and `workers_seen`. Within one statement no two CTEs touch the same row (they all see
-- the snapshot taken before the statement).
--
-- A terminal task state (succeeded, dead_lettered, cancelled) or job status (completed,
-- failed, cancelled) is never left. A task event makes its task's row if the row is not
-- there yet (a streamed job's rows are written apart, by list_task_batch, and may come
-- later), provided its job is known and its id is one of the job's (task_index, from
-- events.task_index_of, not NULL); other events whose rows are missing match nothing.


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


-- name: job_submitted
-- A second job.submitted for a known job id changes nothing, its tasks included. status:
-- queued, or submitting for a streamed job (its tasks follow in job.tasks_added batches until
-- its job.sealed). specs: one object per TaskSpec with the task index of its first task; its
-- `count` task rows are expanded here (generate_series), so a job of millions of tasks costs
-- the projector one JSON object. A task's id is "<job_id>-<task_index>", as
-- events.task_id_for makes it.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (
        seq bigint, at timestamptz, job_id text, name text, queue text, priority integer,
        status text, total_tasks integer, max_attempts integer, timeout_s float8,
        idempotency_key text, submitted_by text, labels jsonb, specs json
    )
),
job AS (
    INSERT INTO jobs (
        job_id, name, queue, priority, status, total_tasks, max_attempts, timeout_s,
        idempotency_key, submitted_by, labels, submitted_at, submitted_seq, updated_seq
    )
    SELECT
        e.job_id, e.name, e.queue, e.priority, e.status, e.total_tasks, e.max_attempts,
        e.timeout_s, e.idempotency_key, e.submitted_by, e.labels, e.at, e.seq, e.seq
    FROM e
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id
)
INSERT INTO tasks (task_id, job_id, task_index, kind, args, state, updated_seq)
SELECT e.job_id || '-' || i, e.job_id, i, s.kind, s.args, 'queued', e.seq
FROM e
JOIN job ON job.job_id = e.job_id
CROSS JOIN json_to_recordset(e.specs)
    AS s (kind text, args jsonb, count integer, first_index integer)
CROSS JOIN generate_series(s.first_index, s.first_index + s.count - 1) AS i
ON CONFLICT (task_id) DO NOTHING;


-- name: job_tasks_added
-- One batch of a streamed job's tasks. A job still submitting takes the batch that goes on
-- where its tasks end (first_index = total_tasks), as the dispatcher does; any other (a
-- repeat, a gap, an overlap, an empty batch, one of an unknown, sealed or ended job) changes
-- nothing. Only the batch and the job's count are written here: the batch's task rows are
-- written apart (list_task_batch), so a big job does not hold back the events after it.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json)
        AS e (seq bigint, job_id text, first_index integer, task_count integer)
),
taken AS (
    UPDATE jobs
    SET total_tasks = jobs.total_tasks + e.task_count, updated_seq = e.seq
    FROM e
    WHERE jobs.job_id = e.job_id
      AND jobs.status = 'submitting'
      AND jobs.total_tasks = e.first_index
      AND e.task_count > 0
    RETURNING jobs.job_id
)
INSERT INTO job_batches (job_id, first_index, task_count, seq, listed)
SELECT e.job_id, e.first_index, e.task_count, e.seq, false
FROM e
JOIN taken ON taken.job_id = e.job_id
ON CONFLICT (job_id, first_index) DO NOTHING;


-- name: unlisted_batches
-- $1 rows to fetch: the batches whose task rows are still to be written, in log order.
SELECT job_id, first_index, seq FROM job_batches WHERE NOT listed ORDER BY seq LIMIT $1;


-- name: count_unlisted_batches
SELECT count(*) FROM job_batches WHERE NOT listed;


-- name: list_task_batch
-- $1 job, $2 first index, $3 seq, $4 specs (as job_submitted's): the task rows of one batch
-- that job_tasks_added took, once (`listed`). A row that a task event made first keeps its
-- state and gets its index, kind and args; a result recorded without the task's args (the
-- event's were empty) gets them, as if the row had been there first.
WITH batch AS (
    UPDATE job_batches SET listed = true
    WHERE job_id = $1::text AND first_index = $2::integer AND seq = $3::bigint AND NOT listed
    RETURNING job_id, seq
),
listed AS (
    INSERT INTO tasks (task_id, job_id, task_index, kind, args, state, updated_seq)
    SELECT batch.job_id || '-' || i, batch.job_id, i, s.kind, s.args, 'queued', batch.seq
    FROM batch
    CROSS JOIN json_to_recordset($4::json)
        AS s (kind text, args jsonb, count integer, first_index integer)
    CROSS JOIN generate_series(s.first_index, s.first_index + s.count - 1) AS i
    ON CONFLICT (task_id) DO UPDATE
    SET task_index = excluded.task_index, kind = excluded.kind, args = excluded.args,
        updated_seq = greatest(tasks.updated_seq, excluded.updated_seq)
    RETURNING tasks.task_id, tasks.args
)
UPDATE results
SET inputs = listed.args
FROM listed
WHERE results.task_id = listed.task_id AND results.inputs = '{}'::jsonb;


-- name: job_sealed
-- A streamed job is whole: it is queued, and runs. Only a job still submitting (a rejected or
-- cancelled one stays so). A task_count other than the job's rows is the dispatcher's to
-- judge: it rejects such a job (job.rejected, which ends a submitting or queued job).
WITH e AS (
    SELECT * FROM json_to_recordset($1::json) AS e (seq bigint, job_id text)
)
UPDATE jobs
SET status = 'queued', updated_seq = e.seq
FROM e
WHERE jobs.job_id = e.job_id AND jobs.status = 'submitting';


-- name: job_finished
-- status: completed | failed | cancelled; duration_s NULL: the time since submission.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json)
        AS e (seq bigint, at timestamptz, job_id text, status text, duration_s float8)
)
UPDATE jobs
SET status = e.status,
    finished_at = e.at,
    duration_s = coalesce(e.duration_s, extract(epoch FROM e.at - jobs.submitted_at)),
    updated_seq = e.seq
FROM e
WHERE jobs.job_id = e.job_id
  AND jobs.status NOT IN ('completed', 'failed', 'cancelled', 'rejected');


-- name: job_rejected
-- A job the dispatcher set aside ends as rejected. Its row is made if its submission could not
-- be read (then it has no tasks).
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (seq bigint, at timestamptz, job_id text, reason text)
)
INSERT INTO jobs (
    job_id, queue, status, total_tasks, max_attempts, submitted_at, finished_at, duration_s,
    error, submitted_seq, updated_seq
)
SELECT e.job_id, '', 'rejected', 0, 0, e.at, e.at, 0, e.reason, e.seq, e.seq
FROM e
ON CONFLICT (job_id) DO UPDATE
SET status = 'rejected',
    finished_at = excluded.finished_at,
    duration_s = extract(epoch FROM excluded.finished_at - jobs.submitted_at),
    error = excluded.error,
    updated_seq = excluded.updated_seq
WHERE jobs.status NOT IN ('completed', 'failed', 'cancelled', 'rejected');


-- name: jobs_running
-- One row per job: the sum of a round's task.started, .progress, .succeeded and .failed
-- events of the job, with the earliest attempt start and the latest sequence. A queued job is now
-- running. Every change commutes, so the order of the events in a round does not matter.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (job_id text, started_at timestamptz, seq bigint)
)
UPDATE jobs
SET status = CASE jobs.status WHEN 'queued' THEN 'running' ELSE jobs.status END,
    started_at = least(jobs.started_at, e.started_at),
    updated_seq = greatest(jobs.updated_seq, e.seq)
FROM e
WHERE jobs.job_id = e.job_id;


-- name: task_started
-- An earlier attempt still running never reported an outcome: its lease expired.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (
        seq bigint, at timestamptz, job_id text, task_id text, task_index integer,
        worker_id text, attempt integer
    )
),
task AS (
    INSERT INTO tasks AS t (
        task_id, job_id, task_index, kind, state, attempts, worker_id, started_at, updated_seq
    )
    SELECT
        e.task_id, e.job_id, e.task_index, '', 'running', e.attempt, e.worker_id, e.at, e.seq
    FROM e
    WHERE e.task_index IS NOT NULL
      AND EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = e.job_id)
    ON CONFLICT (task_id) DO UPDATE
    SET state = 'running', attempts = excluded.attempts, worker_id = excluded.worker_id,
        started_at = excluded.started_at, updated_seq = excluded.updated_seq
    WHERE t.state NOT IN ('succeeded', 'dead_lettered', 'cancelled')
),
abandoned AS (
    UPDATE task_attempts AS a
    SET outcome = 'failed', error = 'lease expired', finished_at = e.at
    FROM e
    WHERE a.task_id = e.task_id AND a.attempt < e.attempt AND a.outcome = 'running'
)
INSERT INTO task_attempts (task_id, attempt, job_id, worker_id, outcome, started_at)
SELECT e.task_id, e.attempt, e.job_id, e.worker_id, 'running', e.at
FROM e
ON CONFLICT (task_id, attempt) DO NOTHING;


-- name: task_progress
-- A report of a task in flight: it is running (a task.started may never come: a worker
-- sends one only for tasks slower than its tick).
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (
        seq bigint, job_id text, task_id text, task_index integer, worker_id text,
        fraction float8, message text
    )
)
INSERT INTO tasks AS t (
    task_id, job_id, task_index, kind, state, worker_id, progress, progress_message, updated_seq
)
SELECT
    e.task_id, e.job_id, e.task_index, '', 'running', e.worker_id, e.fraction, e.message,
    e.seq
FROM e
WHERE e.task_index IS NOT NULL
  AND EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = e.job_id)
ON CONFLICT (task_id) DO UPDATE
SET state = 'running', worker_id = excluded.worker_id,
    progress = coalesce(excluded.progress, t.progress),
    progress_message = excluded.progress_message, updated_seq = excluded.updated_seq
WHERE t.state NOT IN ('succeeded', 'dead_lettered', 'cancelled');


-- name: task_succeeded
-- started_at: when the attempt started. The result's inputs are the event's args, else the
-- task's.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (
        seq bigint, at timestamptz, job_id text, task_id text, task_index integer,
        worker_id text, attempt integer, started_at timestamptz, duration_s float8, kind text,
        args jsonb, result jsonb
    )
),
task AS (
    INSERT INTO tasks AS t (
        task_id, job_id, task_index, kind, state, attempts, worker_id, result, started_at,
        finished_at, duration_s, updated_seq
    )
    SELECT
        e.task_id, e.job_id, e.task_index, e.kind, 'succeeded', e.attempt, e.worker_id,
        e.result, e.started_at, e.at, e.duration_s, e.seq
    FROM e
    WHERE e.task_index IS NOT NULL
      AND EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = e.job_id)
    ON CONFLICT (task_id) DO UPDATE
    SET state = 'succeeded', attempts = excluded.attempts, worker_id = excluded.worker_id,
        result = excluded.result, error = NULL,
        started_at = CASE
            WHEN t.attempts = excluded.attempts AND t.started_at IS NOT NULL THEN t.started_at
            ELSE excluded.started_at
        END,
        finished_at = excluded.finished_at, duration_s = excluded.duration_s,
        updated_seq = excluded.updated_seq
    WHERE t.state NOT IN ('succeeded', 'dead_lettered', 'cancelled')
),
attempt AS (
    INSERT INTO task_attempts AS a (
        task_id, attempt, job_id, worker_id, outcome, started_at, finished_at, duration_s
    )
    SELECT
        e.task_id, e.attempt, e.job_id, e.worker_id, 'succeeded', e.started_at, e.at,
        e.duration_s
    FROM e
    ON CONFLICT (task_id, attempt) DO UPDATE
    SET worker_id = excluded.worker_id, outcome = excluded.outcome, error = NULL,
        started_at = coalesce(a.started_at, excluded.started_at),
        finished_at = excluded.finished_at, duration_s = excluded.duration_s
)
INSERT INTO results (
    task_id, job_id, kind, inputs, output, processed_by, duration_s, status, error,
    attempts, finished_at, seq
)
SELECT
    e.task_id, e.job_id, e.kind,
    coalesce(
        nullif(e.args, '{}'::jsonb),
        (SELECT tasks.args FROM tasks WHERE tasks.task_id = e.task_id),
        '{}'::jsonb
    ),
    e.result, e.worker_id, e.duration_s, 'succeeded', NULL, e.attempt, e.at, e.seq
FROM e
ON CONFLICT (task_id) DO NOTHING;


-- name: task_failed
-- Not terminal: a retry or a dead letter follows. started_at: when the attempt started.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (
        seq bigint, at timestamptz, job_id text, task_id text, task_index integer,
        worker_id text, attempt integer, started_at timestamptz, duration_s float8, error text
    )
),
task AS (
    INSERT INTO tasks AS t (
        task_id, job_id, task_index, kind, state, attempts, worker_id, error, updated_seq
    )
    SELECT
        e.task_id, e.job_id, e.task_index, '', 'failed', e.attempt, e.worker_id, e.error, e.seq
    FROM e
    WHERE e.task_index IS NOT NULL
      AND EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = e.job_id)
    ON CONFLICT (task_id) DO UPDATE
    SET state = 'failed', attempts = excluded.attempts, worker_id = excluded.worker_id,
        error = excluded.error, progress = NULL, progress_message = NULL,
        updated_seq = excluded.updated_seq
    WHERE t.state NOT IN ('succeeded', 'dead_lettered', 'cancelled')
)
INSERT INTO task_attempts AS a (
    task_id, attempt, job_id, worker_id, outcome, error, started_at, finished_at, duration_s
)
SELECT
    e.task_id, e.attempt, e.job_id, e.worker_id, 'failed', e.error, e.started_at, e.at,
    e.duration_s
FROM e
ON CONFLICT (task_id, attempt) DO UPDATE
SET worker_id = excluded.worker_id, outcome = excluded.outcome, error = excluded.error,
    started_at = coalesce(a.started_at, excluded.started_at),
    finished_at = excluded.finished_at, duration_s = excluded.duration_s;


-- name: task_dead_lettered
-- worker_id NULL: unknown. error: the last error, else the reason. Attempts still running
-- end as failed.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (
        seq bigint, at timestamptz, job_id text, task_id text, task_index integer,
        worker_id text, attempts integer, kind text, args jsonb, error text
    )
),
task AS (
    INSERT INTO tasks AS t (
        task_id, job_id, task_index, kind, state, attempts, worker_id, error, finished_at,
        updated_seq
    )
    SELECT
        e.task_id, e.job_id, e.task_index, e.kind, 'dead_lettered', e.attempts, e.worker_id,
        e.error, e.at, e.seq
    FROM e
    WHERE e.task_index IS NOT NULL
      AND EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = e.job_id)
    ON CONFLICT (task_id) DO UPDATE
    SET state = 'dead_lettered', attempts = excluded.attempts,
        worker_id = coalesce(excluded.worker_id, t.worker_id), error = excluded.error,
        finished_at = excluded.finished_at, updated_seq = excluded.updated_seq
    WHERE t.state NOT IN ('succeeded', 'dead_lettered', 'cancelled')
),
abandoned AS (
    UPDATE task_attempts AS a
    SET outcome = 'failed', error = e.error, finished_at = e.at
    FROM e
    WHERE a.task_id = e.task_id AND a.outcome = 'running'
)
INSERT INTO results (
    task_id, job_id, kind, inputs, output, processed_by, duration_s, status, error,
    attempts, finished_at, seq
)
SELECT
    e.task_id, e.job_id, e.kind,
    coalesce(
        nullif(e.args, '{}'::jsonb),
        (SELECT tasks.args FROM tasks WHERE tasks.task_id = e.task_id),
        '{}'::jsonb
    ),
    NULL, coalesce(e.worker_id, ''), NULL, 'dead_lettered', e.error, e.attempts, e.at, e.seq
FROM e
ON CONFLICT (task_id) DO NOTHING;


-- name: task_requeued
-- A dead-lettered task given another round (`jobstream dlq retry`): it is queued again and no
-- longer finished, so its results row goes, and its job runs again.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (seq bigint, at timestamptz, job_id text, task_id text)
),
task AS (
    UPDATE tasks
    SET state = 'queued', finished_at = NULL, duration_s = NULL, updated_seq = e.seq
    FROM e
    WHERE tasks.task_id = e.task_id AND tasks.state = 'dead_lettered'
    RETURNING tasks.task_id
),
unfinished AS (
    DELETE FROM results USING task WHERE results.task_id = task.task_id
)
-- Written to commute (any order of a round's requeues of one job gives the same row), and
-- to touch the job row once however many of its tasks are requeued in the round.
UPDATE jobs
SET status = CASE
        WHEN jobs.status IN ('failed', 'completed') THEN 'running' ELSE jobs.status
    END,
    finished_at = CASE
        WHEN jobs.status IN ('failed', 'completed') THEN NULL ELSE jobs.finished_at
    END,
    duration_s = CASE
        WHEN jobs.status IN ('failed', 'completed') THEN NULL ELSE jobs.duration_s
    END,
    updated_seq = greatest(jobs.updated_seq, j.seq)
FROM (SELECT e.job_id, max(e.seq) AS seq FROM e GROUP BY e.job_id) AS j
WHERE jobs.job_id = j.job_id;


-- name: task_cancelled
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (
        seq bigint, at timestamptz, job_id text, task_id text, task_index integer
    )
)
INSERT INTO tasks AS t (task_id, job_id, task_index, kind, state, finished_at, updated_seq)
SELECT e.task_id, e.job_id, e.task_index, '', 'cancelled', e.at, e.seq
FROM e
WHERE e.task_index IS NOT NULL
  AND EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = e.job_id)
ON CONFLICT (task_id) DO UPDATE
SET state = 'cancelled', finished_at = excluded.finished_at, updated_seq = excluded.updated_seq
WHERE t.state NOT IN ('succeeded', 'dead_lettered', 'cancelled');


-- name: worker_started
-- A restarted worker keeps its counters.
INSERT INTO workers AS w (
    worker_id, host, pid, queues, concurrency, version, state, started_at, last_seen_at,
    updated_seq
)
SELECT
    e.worker_id, e.host, e.pid, e.queues, e.concurrency, e.version, 'active', e.at, e.at,
    e.seq
FROM json_to_recordset($1::json) AS e (
    seq bigint, at timestamptz, worker_id text, host text, pid integer, queues text[],
    concurrency integer, version text
)
ON CONFLICT (worker_id) DO UPDATE
SET host = excluded.host, pid = excluded.pid, queues = excluded.queues,
    concurrency = excluded.concurrency, version = excluded.version, state = 'active',
    started_at = excluded.started_at,
    last_seen_at = greatest(w.last_seen_at, excluded.last_seen_at),
    stopped_at = NULL, updated_seq = excluded.updated_seq;


-- name: worker_stopped
WITH e AS (
    SELECT * FROM json_to_recordset($1::json) AS e (seq bigint, at timestamptz, worker_id text)
)
UPDATE workers
SET state = 'stopped', stopped_at = e.at,
    last_seen_at = greatest(workers.last_seen_at, e.at), updated_seq = e.seq
FROM e
WHERE workers.worker_id = e.worker_id;


-- name: worker_lost
-- last_seen_at NULL: unknown. Only an active worker is lost.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json)
        AS e (seq bigint, at timestamptz, worker_id text, last_seen_at timestamptz)
)
UPDATE workers
SET state = 'lost', last_seen_at = coalesce(e.last_seen_at, workers.last_seen_at),
    updated_seq = e.seq
FROM e
WHERE workers.worker_id = e.worker_id AND workers.state = 'active';


-- name: worker_forgotten
-- A stopped or lost worker leaves the read model (an active one stays: it came back).
DELETE FROM workers
USING json_to_recordset($1::json) AS e (seq bigint, worker_id text)
WHERE workers.worker_id = e.worker_id AND workers.state <> 'active';


-- name: workers_seen
-- One row per worker: the sum of a round's task.started, .progress, .succeeded and .failed
-- events of the worker. A worker known only from its task events gets a row, shown active;
-- a lost one seen working again is active again.
INSERT INTO workers AS w (
    worker_id, state, tasks_succeeded, tasks_failed, last_seen_at, updated_seq
)
SELECT e.worker_id, 'active', e.succeeded, e.failed, e.last_seen_at, e.seq
FROM json_to_recordset($1::json) AS e (
    worker_id text, succeeded bigint, failed bigint, last_seen_at timestamptz, seq bigint
)
ON CONFLICT (worker_id) DO UPDATE
SET state = CASE WHEN w.state = 'lost' THEN 'active' ELSE w.state END,
    tasks_succeeded = w.tasks_succeeded + excluded.tasks_succeeded,
    tasks_failed = w.tasks_failed + excluded.tasks_failed,
    last_seen_at = greatest(w.last_seen_at, excluded.last_seen_at),
    updated_seq = greatest(w.updated_seq, excluded.updated_seq);
