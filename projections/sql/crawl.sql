-- The projector's crawl statistics (migration 006): run once per round, like the blocks of
-- projector.sql, with the round's `http.warm` pages as one JSON array in $1, each object made
-- by projections/_crawl.py (the one place that reads a page's result).


-- name: crawl_pages_counted
-- Runs after the round's task_succeeded and task_dead_lettered: a page counts only if its
-- event made its results row (a results row carries the sequence of the event that made
-- it), so an event seen again, or a second terminal event, adds nothing. The pages are
-- summed per (job, pass, domain) before the upsert, so no row is touched twice.
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json) AS e (
        seq bigint, job_id text, task_id text, pass integer, domain text,
        pages_done bigint, pages_failed bigint, broken_links bigint, server_errors bigint,
        redirects bigint, bytes bigint, slow_pages bigint, pages_warmed bigint,
        misses_to_hits bigint, time_saved_us bigint, timed_pages bigint, total_us bigint,
        ms float8, status text, cache text, bucket text
    )
),
counted AS (
    SELECT e.* FROM e JOIN results r ON r.task_id = e.task_id AND r.seq = e.seq
),
maps AS (
    SELECT job_id, pass, domain, 'status' AS map, status AS key, count(*) AS n
    FROM counted WHERE status IS NOT NULL GROUP BY job_id, pass, domain, status
    UNION ALL
    SELECT job_id, pass, domain, 'cache', cache, count(*)
    FROM counted WHERE cache IS NOT NULL GROUP BY job_id, pass, domain, cache
    UNION ALL
    SELECT job_id, pass, domain, 'bucket', bucket, count(*)
    FROM counted WHERE bucket IS NOT NULL GROUP BY job_id, pass, domain, bucket
),
sums AS (
    SELECT
        c.job_id, c.pass, c.domain,
        sum(c.pages_done) AS pages_done, sum(c.pages_failed) AS pages_failed,
        sum(c.broken_links) AS broken_links, sum(c.server_errors) AS server_errors,
        sum(c.redirects) AS redirects, sum(c.bytes) AS bytes, sum(c.slow_pages) AS slow_pages,
        sum(c.pages_warmed) AS pages_warmed, sum(c.misses_to_hits) AS misses_to_hits,
        sum(c.time_saved_us) AS time_saved_us, sum(c.timed_pages) AS timed_pages,
        sum(c.total_us) AS total_us, min(c.ms) AS min_ms, max(c.ms) AS max_ms,
        max(c.seq) AS seq
    FROM counted AS c
    GROUP BY c.job_id, c.pass, c.domain
)
INSERT INTO crawl_stats AS s (
    job_id, pass, domain, pages_done, pages_failed, broken_links, server_errors, redirects,
    bytes, slow_pages, pages_warmed, misses_to_hits, time_saved_us, timed_pages, total_us,
    min_ms, max_ms, status_counts, cache_counts, response_ms, updated_seq
)
SELECT
    sums.job_id, sums.pass, sums.domain, sums.pages_done, sums.pages_failed,
    sums.broken_links, sums.server_errors, sums.redirects, sums.bytes, sums.slow_pages,
    sums.pages_warmed, sums.misses_to_hits, sums.time_saved_us, sums.timed_pages,
    sums.total_us, sums.min_ms, sums.max_ms,
    coalesce(
        (SELECT jsonb_object_agg(m.key, m.n) FROM maps m
         WHERE (m.job_id, m.pass, m.domain, m.map) = (sums.job_id, sums.pass, sums.domain, 'status')),
        '{}'::jsonb
    ),
    coalesce(
        (SELECT jsonb_object_agg(m.key, m.n) FROM maps m
         WHERE (m.job_id, m.pass, m.domain, m.map) = (sums.job_id, sums.pass, sums.domain, 'cache')),
        '{}'::jsonb
    ),
    coalesce(
        (SELECT jsonb_object_agg(m.key, m.n) FROM maps m
         WHERE (m.job_id, m.pass, m.domain, m.map) = (sums.job_id, sums.pass, sums.domain, 'bucket')),
        '{}'::jsonb
    ),
    sums.seq
FROM sums
ON CONFLICT (job_id, pass, domain) DO UPDATE
SET pages_done = s.pages_done + excluded.pages_done,
    pages_failed = s.pages_failed + excluded.pages_failed,
    broken_links = s.broken_links + excluded.broken_links,
    server_errors = s.server_errors + excluded.server_errors,
    redirects = s.redirects + excluded.redirects,
    bytes = s.bytes + excluded.bytes,
    slow_pages = s.slow_pages + excluded.slow_pages,
    pages_warmed = s.pages_warmed + excluded.pages_warmed,
    misses_to_hits = s.misses_to_hits + excluded.misses_to_hits,
    time_saved_us = s.time_saved_us + excluded.time_saved_us,
    timed_pages = s.timed_pages + excluded.timed_pages,
    total_us = s.total_us + excluded.total_us,
    min_ms = least(s.min_ms, excluded.min_ms),
    max_ms = greatest(s.max_ms, excluded.max_ms),
    status_counts = crawl_counts_sum(s.status_counts, excluded.status_counts),
    cache_counts = crawl_counts_sum(s.cache_counts, excluded.cache_counts),
    response_ms = crawl_counts_sum(s.response_ms, excluded.response_ms),
    updated_seq = greatest(s.updated_seq, excluded.updated_seq);


-- name: crawl_failures_undone
-- Runs before the round's task_requeued: a failed page whose task is requeued loses its
-- results row there, so its count goes too (the same test as task_requeued's: the task is
-- dead-lettered; its results row is a dead letter of an `http.warm` task). 'HTTP 5': the
-- server-error rule of projections/_crawl.py (`is_server_error`).
WITH e AS (
    SELECT *
    FROM json_to_recordset($1::json)
        AS e (seq bigint, job_id text, task_id text, pass integer, domain text)
),
undone AS (
    SELECT
        e.job_id, e.pass, e.domain, count(*) AS failed,
        count(*) FILTER (WHERE starts_with(r.error, 'HTTP 5')) AS server_errors,
        max(e.seq) AS seq
    FROM e
    JOIN tasks t ON t.task_id = e.task_id AND t.state = 'dead_lettered'
    JOIN results r
        ON r.task_id = e.task_id AND r.status = 'dead_lettered' AND r.kind = 'http.warm'
    GROUP BY e.job_id, e.pass, e.domain
)
UPDATE crawl_stats AS s
SET pages_failed = s.pages_failed - undone.failed,
    server_errors = s.server_errors - undone.server_errors,
    updated_seq = greatest(s.updated_seq, undone.seq)
FROM undone
WHERE (s.job_id, s.pass, s.domain) = (undone.job_id, undone.pass, undone.domain);
