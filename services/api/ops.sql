-- Read queries of the API's operations views: statistics over a window, dead letters, a
-- worker's recent rate. Every one is bounded: a window of `results` read through its
-- finished_at index, or a page read through an index in the order it is served.

-- name: stats_buckets
-- $1/$2 the window [since, until), $3 the bucket width, $4 queue, $5 kind (NULL: any).
-- Tasks finished per bucket: succeeded, and failed for good (dead-lettered).
SELECT date_bin($3::interval, r.finished_at, $1::timestamptz) AS at,
       count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE r.status = 'dead_lettered') AS failed
FROM results AS r
WHERE r.finished_at >= $1::timestamptz AND r.finished_at < $2::timestamptz
  AND ($4::text IS NULL
       OR EXISTS (SELECT 1 FROM jobs AS j WHERE j.job_id = r.job_id AND j.queue = $4::text))
  AND ($5::text IS NULL OR r.kind = $5::text)
GROUP BY 1
ORDER BY 1;

-- name: stats_durations
-- The same window and filters: percentiles of the succeeded tasks' durations.
SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]::float8[])
           WITHIN GROUP (ORDER BY r.duration_s) AS p
FROM results AS r
WHERE r.finished_at >= $1::timestamptz AND r.finished_at < $2::timestamptz
  AND r.status = 'succeeded'
  AND ($3::text IS NULL
       OR EXISTS (SELECT 1 FROM jobs AS j WHERE j.job_id = r.job_id AND j.queue = $3::text))
  AND ($4::text IS NULL OR r.kind = $4::text);

-- name: stats_by_queue_kind
-- The same window and filters, per queue and kind (at most $5 rows, the busiest first).
SELECT coalesce(j.queue, '') AS queue, r.kind,
       count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE r.status = 'dead_lettered') AS failed,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_s)
           FILTER (WHERE r.status = 'succeeded') AS p50_s,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY r.duration_s)
           FILTER (WHERE r.status = 'succeeded') AS p99_s
FROM results AS r
LEFT JOIN jobs AS j ON j.job_id = r.job_id
WHERE r.finished_at >= $1::timestamptz AND r.finished_at < $2::timestamptz
  AND ($3::text IS NULL OR j.queue = $3::text)
  AND ($4::text IS NULL OR r.kind = $4::text)
GROUP BY 1, 2
ORDER BY count(*) DESC, 1, 2
LIMIT $5::integer;

-- name: dead_letter_page
-- $1 queue, $2 job (NULL: any), $3/$4 the last (finished_at, task_id) seen (NULL: first
-- page), $5 rows to fetch. The latest first, through results_dead_lettered (migration 007).
SELECT r.task_id, r.job_id, r.kind, j.queue, r.attempts, r.error, r.finished_at
FROM results AS r
LEFT JOIN jobs AS j ON j.job_id = r.job_id
WHERE r.status = 'dead_lettered'
  AND ($1::text IS NULL OR j.queue = $1::text)
  AND ($2::text IS NULL OR r.job_id = $2::text)
  AND ($3::timestamptz IS NULL OR (r.finished_at, r.task_id) < ($3::timestamptz, $4::text))
ORDER BY r.finished_at DESC, r.task_id DESC
LIMIT $5::integer;

-- name: get_worker
SELECT worker_id, host, pid, queues, concurrency, version, state, started_at, last_seen_at,
       stopped_at, tasks_succeeded, tasks_failed
FROM worker_summary
WHERE worker_id = $1::text;

-- name: worker_finished_since
-- $1 worker, $2 since: the tasks it finished (succeeded or dead-lettered) since then.
SELECT count(*) FROM results WHERE finished_at >= $2::timestamptz AND processed_by = $1::text;
