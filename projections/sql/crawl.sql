-- The projector's crawl statistics (migration 006): run once per round, like the blocks of
-- projector.sql, with the round's `http.warm` pages as one JSON array in $1, each object made
-- by projections/_crawl.py (the one place that reads a page's result).


-- name: crawl_pages_counted
-- Runs after the round's task_succeeded and task_dead_lettered: a page counts only if its
-- event made its results row (a results row carries the sequence of the event that made
-- it), so an event seen again, or a second terminal event, adds nothing. The pages are
-- summed per (job, pass, domain) before the upsert, so no row is touched twice. A page's
-- zero counts are left out of its object (NULL here).
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
    -- One primary-key lookup per page (a join may be planned as a scan of all results).
    SELECT e.* FROM e WHERE (SELECT r.seq FROM results r WHERE r.task_id = e.task_id) = e.seq
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
        coalesce(sum(c.pages_done), 0) AS pages_done,
        coalesce(sum(c.pages_failed), 0) AS pages_failed,
        coalesce(sum(c.broken_links), 0) AS broken_links,
        coalesce(sum(c.server_errors), 0) AS server_errors,
        coalesce(sum(c.redirects), 0) AS redirects,
        coalesce(sum(c.bytes), 0) AS bytes,
        coalesce(sum(c.slow_pages), 0) AS slow_pages,
        coalesce(sum(c.pages_warmed), 0) AS pages_warmed,
        coalesce(sum(c.misses_to_hits), 0) AS misses_to_hits,
        coalesce(sum(c.time_saved_us), 0) AS time_saved_us,
        coalesce(sum(c.timed_pages), 0) AS timed_pages,
        coalesce(sum(c.total_us), 0) AS total_us,
        min(c.ms) AS min_ms, max(c.ms) AS max_ms,
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
         WHERE (m.job_id, m.pass, m.domain) = (sums.job_id, sums.pass, sums.domain)
           AND m.map = 'status'),
        '{}'::jsonb
    ),
    coalesce(
        (SELECT jsonb_object_agg(m.key, m.n) FROM maps m
         WHERE (m.job_id, m.pass, m.domain) = (sums.job_id, sums.pass, sums.domain)
           AND m.map = 'cache'),
        '{}'::jsonb
    ),
    coalesce(
        (SELECT jsonb_object_agg(m.key, m.n) FROM maps m
         WHERE (m.job_id, m.pass, m.domain) = (sums.job_id, sums.pass, sums.domain)
           AND m.map = 'bucket'),
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
failed AS (
    -- Primary-key lookups per page, as in crawl_pages_counted.
    SELECT e.*, (SELECT r.error FROM results r WHERE r.task_id = e.task_id) AS error
    FROM e
    WHERE (SELECT t.state FROM tasks t WHERE t.task_id = e.task_id) = 'dead_lettered'
      AND (SELECT r.status = 'dead_lettered' AND r.kind = 'http.warm'
           FROM results r WHERE r.task_id = e.task_id)
),
undone AS (
    SELECT
        job_id, pass, domain, count(*) AS failed,
        count(*) FILTER (WHERE starts_with(error, 'HTTP 5')) AS server_errors,
        max(seq) AS seq
    FROM failed
    GROUP BY job_id, pass, domain
)
UPDATE crawl_stats AS s
SET pages_failed = s.pages_failed - undone.failed,
    server_errors = s.server_errors - undone.server_errors,
    updated_seq = greatest(s.updated_seq, undone.seq)
FROM undone
WHERE (s.job_id, s.pass, s.domain) = (undone.job_id, undone.pass, undone.domain);
