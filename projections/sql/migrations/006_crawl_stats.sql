-- Crawl statistics (issue 12): the results of `http.warm` tasks summed per job, pass and
-- domain, kept up to date by the projector (sql/crawl.sql) and the replay fold
-- (projections/_crawl.py holds the rule), so a crawl's figures never need a scan of its
-- result rows. A row is exactly the sum of the job's `http.warm` results rows of that pass
-- and domain: a task.succeeded counts as a page done, a task.dead_lettered as a page failed.
CREATE TABLE IF NOT EXISTS crawl_stats (
    job_id          text NOT NULL,
    pass            integer NOT NULL,
    -- host[:port] of the page's URL, lower-case; '' when a failed page's URL is unknown
    domain          text NOT NULL,
    pages_done      bigint NOT NULL DEFAULT 0,
    pages_failed    bigint NOT NULL DEFAULT 0,
    -- pages done with a status of 400..499
    broken_links    bigint NOT NULL DEFAULT 0,
    -- pages done with a status of 500 or more, and failed pages whose error starts 'HTTP 5'
    server_errors   bigint NOT NULL DEFAULT 0,
    -- pages done whose first GET was redirected
    redirects       bigint NOT NULL DEFAULT 0,
    bytes           bigint NOT NULL DEFAULT 0,
    -- pages done whose total time was over 3000 ms
    slow_pages      bigint NOT NULL DEFAULT 0,
    -- warming: pages given a second GET, those of them a MISS or EXPIRED that then answered
    -- HIT, and the time saved (first total - second total, in microseconds: integer sums
    -- are exact in any order, so the projector and the replay agree to the last digit)
    pages_warmed    bigint NOT NULL DEFAULT 0,
    misses_to_hits  bigint NOT NULL DEFAULT 0,
    time_saved_us   bigint NOT NULL DEFAULT 0,
    -- pages done with a total time, their sum (microseconds), and the extremes (ms)
    timed_pages     bigint NOT NULL DEFAULT 0,
    total_us        bigint NOT NULL DEFAULT 0,
    min_ms          double precision,
    max_ms          double precision,
    -- {"<status>": pages} and {"<cache status>": pages} of the pages done
    status_counts   jsonb NOT NULL DEFAULT '{}'::jsonb,
    cache_counts    jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- the response-time histogram: {"<ms>": pages}, log-scale buckets each named by its
    -- geometric middle, within 5% of every time in the bucket ("0": a time of 0)
    response_ms     jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_seq     bigint NOT NULL,
    PRIMARY KEY (job_id, pass, domain)
);

-- Two maps of counts added key by key.
CREATE OR REPLACE FUNCTION crawl_counts_sum(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(key, total), '{}'::jsonb)
    FROM (
        SELECT key, sum(value::bigint) AS total
        FROM (
            SELECT * FROM jsonb_each_text(a)
            UNION ALL
            SELECT * FROM jsonb_each_text(b)
        ) AS both_maps
        GROUP BY key
    ) AS summed
$$;

-- The first broken links and slow pages of a crawl, pass by pass in the order they finished,
-- without a scan of its other results (the predicates are those of projections/_crawl.py: a
-- status in [400, 500), a total time over 3000 ms).
CREATE INDEX IF NOT EXISTS results_crawl_broken ON results (job_id, (output -> 'pass'), seq)
WHERE kind = 'http.warm' AND status = 'succeeded'
  AND output -> 'status' >= '400'::jsonb AND output -> 'status' < '500'::jsonb;
CREATE INDEX IF NOT EXISTS results_crawl_slow ON results (job_id, (output -> 'pass'), seq)
WHERE kind = 'http.warm' AND status = 'succeeded'
  AND jsonb_typeof(output #> '{timings_ms,total}') = 'number'
  AND output #> '{timings_ms,total}' > '3000'::jsonb;
