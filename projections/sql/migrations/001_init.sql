-- The read models. The projectors own writes; the API only reads.
-- Every table lives in the schema named by the projector (default "jobstream"):
-- the migration runs with search_path set to it, so a replay can build a fresh schema.

CREATE TABLE IF NOT EXISTS jobs (
    job_id          text PRIMARY KEY,
    name            text NOT NULL DEFAULT '',
    queue           text NOT NULL,
    priority        integer NOT NULL DEFAULT 0,
    -- queued | running | completed | failed | cancelled
    status          text NOT NULL,
    total_tasks     integer NOT NULL,
    max_attempts    integer NOT NULL,
    timeout_s       double precision,
    idempotency_key text,
    submitted_by    text NOT NULL DEFAULT '',
    labels          jsonb NOT NULL DEFAULT '{}'::jsonb,
    submitted_at    timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    duration_s      double precision,
    submitted_seq   bigint NOT NULL,
    updated_seq     bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_submitted ON jobs (submitted_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, submitted_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (queue, submitted_at DESC, job_id DESC);

CREATE TABLE IF NOT EXISTS tasks (
    task_id      text PRIMARY KEY,
    job_id       text NOT NULL,
    task_index   integer NOT NULL,
    kind         text NOT NULL,
    args         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- queued | running | succeeded | failed (an attempt failed, a retry is due)
    -- | dead_lettered | cancelled
    state        text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    worker_id    text,
    result       jsonb,
    error        text,
    started_at   timestamptz,
    finished_at  timestamptz,
    duration_s   double precision,
    updated_seq  bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_job_state ON tasks (job_id, state);
CREATE INDEX IF NOT EXISTS tasks_by_job_index ON tasks (job_id, task_index);

CREATE TABLE IF NOT EXISTS task_attempts (
    task_id      text NOT NULL,
    attempt      integer NOT NULL,
    job_id       text NOT NULL,
    worker_id    text NOT NULL,
    -- running | succeeded | failed
    outcome      text NOT NULL,
    error        text,
    started_at   timestamptz,
    finished_at  timestamptz,
    duration_s   double precision,
    PRIMARY KEY (task_id, attempt)
);
CREATE INDEX IF NOT EXISTS task_attempts_by_job ON task_attempts (job_id);

CREATE TABLE IF NOT EXISTS workers (
    worker_id        text PRIMARY KEY,
    host             text NOT NULL DEFAULT '',
    pid              integer NOT NULL DEFAULT 0,
    queues           text[] NOT NULL DEFAULT '{}',
    concurrency      integer NOT NULL DEFAULT 0,
    version          text NOT NULL DEFAULT '',
    -- active | stopped | lost
    state            text NOT NULL,
    started_at       timestamptz,
    last_seen_at     timestamptz,
    stopped_at       timestamptz,
    tasks_succeeded  bigint NOT NULL DEFAULT 0,
    tasks_failed     bigint NOT NULL DEFAULT 0,
    updated_seq      bigint NOT NULL
);

-- The original system's results table: one row per finished task
-- (succeeded or dead-lettered).
CREATE TABLE IF NOT EXISTS results (
    task_id       text PRIMARY KEY,
    job_id        text NOT NULL,
    kind          text NOT NULL,
    inputs        jsonb NOT NULL DEFAULT '{}'::jsonb,
    output        jsonb,
    processed_by  text NOT NULL DEFAULT '',
    duration_s    double precision,
    -- succeeded | dead_lettered
    status        text NOT NULL,
    error         text,
    attempts      integer NOT NULL,
    finished_at   timestamptz NOT NULL,
    seq           bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_job ON results (job_id);
CREATE INDEX IF NOT EXISTS results_by_finished ON results (finished_at);

-- Events on the subjects that could not be decoded: parked, not applied.
CREATE TABLE IF NOT EXISTS rejected_events (
    seq        bigint PRIMARY KEY,
    subject    text NOT NULL,
    error      text NOT NULL,
    payload    bytea NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection  text PRIMARY KEY,
    last_seq    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
