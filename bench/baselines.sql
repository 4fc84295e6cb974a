-- The two Postgres-centred designs jobstream replaces, as the bench runs them: a jobs table
-- claimed with SELECT … FOR UPDATE SKIP LOCKED, either by a FastAPI control plane
-- (claim, start, complete: a transaction each) or by the workers directly (claim and
-- complete in one transaction, of one job or of a batch). search_path: a scratch schema.


-- name: create_tables
CREATE TABLE bench_jobs (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    args         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- queued | claimed | running | succeeded
    status       text NOT NULL DEFAULT 'queued',
    worker_id    text,
    attempts     integer NOT NULL DEFAULT 0,
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    claimed_at   timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX bench_jobs_queued ON bench_jobs (id) WHERE status = 'queued';


-- name: insert_jobs
-- $1 how many no-op jobs
INSERT INTO bench_jobs (kind) SELECT 'noop' FROM generate_series(1, $1);


-- name: claim
-- $1 worker id, $2 how many, $3 the status a claimed job takes (claimed | running)
WITH next AS (
    SELECT id
    FROM bench_jobs
    WHERE status = 'queued'
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE bench_jobs AS j
SET status = $3, worker_id = $1, attempts = j.attempts + 1, claimed_at = now(),
    started_at = CASE WHEN $3 = 'running' THEN now() END
FROM next
WHERE j.id = next.id
RETURNING j.id, j.kind, j.args;


-- name: start
-- $1 job id
UPDATE bench_jobs SET status = 'running', started_at = now() WHERE id = $1;


-- name: complete
-- $1 job id, $2 result (JSON text)
UPDATE bench_jobs SET status = 'succeeded', result = $2::jsonb, finished_at = now()
WHERE id = $1;


-- name: complete_many
-- $1 job ids, $2 results (JSON texts), in the same order
UPDATE bench_jobs AS j SET status = 'succeeded', result = r.result::jsonb, finished_at = now()
FROM unnest($1::bigint[], $2::text[]) AS r (id, result)
WHERE j.id = r.id;


-- name: count_succeeded
SELECT count(*) FROM bench_jobs WHERE status = 'succeeded';
