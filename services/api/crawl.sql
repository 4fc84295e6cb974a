-- Read queries of GET /jobs/{job_id}/crawl over crawl_stats and results (projections'
-- migration 006). Tables are unqualified, as in queries.sql.

-- name: crawl_job
-- $1 job. Its labels and the kind of its first task (index order: one row of the index).
SELECT
    j.job_id, j.labels,
    (SELECT t.kind FROM tasks t WHERE t.job_id = j.job_id ORDER BY t.task_index LIMIT 1)
        AS first_kind
FROM jobs j
WHERE j.job_id = $1::text;

-- name: crawl_stats
-- $1 job. One row per pass and domain: a crawl of N domains and P passes reads N * P rows.
SELECT
    pass, domain, pages_done, pages_failed, broken_links, server_errors, redirects, bytes,
    slow_pages, pages_warmed, misses_to_hits, time_saved_us, timed_pages, total_us, min_ms,
    max_ms, status_counts, cache_counts, response_ms
FROM crawl_stats
WHERE job_id = $1::text
ORDER BY pass, domain;

-- name: crawl_broken_links
-- $1 job, $2 pass (NULL: any), $3 rows. Pass by pass, in the order they finished, through
-- the partial index results_crawl_broken (its predicate repeated here).
SELECT
    coalesce(output ->> 'url', inputs ->> 'url', task_id) AS url,
    output -> 'pass' AS pass,
    output ->> 'status' AS status
FROM results
WHERE job_id = $1::text
  AND kind = 'http.warm' AND status = 'succeeded'
  AND output -> 'status' >= '400'::jsonb AND output -> 'status' < '500'::jsonb
  AND ($2::integer IS NULL OR output -> 'pass' = to_jsonb($2::integer))
ORDER BY output -> 'pass', seq
LIMIT $3::integer;

-- name: crawl_slow_pages
-- $1 job, $2 pass (NULL: any), $3 rows. As crawl_broken_links, through results_crawl_slow.
SELECT
    coalesce(output ->> 'url', inputs ->> 'url', task_id) AS url,
    output -> 'pass' AS pass,
    output #>> '{timings_ms,total}' AS total_ms
FROM results
WHERE job_id = $1::text
  AND kind = 'http.warm' AND status = 'succeeded'
  AND jsonb_typeof(output #> '{timings_ms,total}') = 'number'
  AND output #> '{timings_ms,total}' > '3000'::jsonb
  AND ($2::integer IS NULL OR output -> 'pass' = to_jsonb($2::integer))
ORDER BY output -> 'pass', seq
LIMIT $3::integer;
