"""The crawl-statistics rule (projections/_crawl.py) and the API's reading of its rows."""

import json
import math
import random
from typing import Any

from jobstream.events import TaskDeadLettered, TaskSucceeded
from jobstream.projections._crawl import CrawlStatsFold, bucket_of, domain_of, page_facts
from jobstream.services.api._crawl_figures import summed


def succeeded(task: int, result: Any, args: dict[str, Any] | None = None) -> TaskSucceeded:
    return TaskSucceeded(
        job_id="j",
        task_id=f"j-{task}",
        kind="http.warm",
        args=args or {},
        worker_id="w",
        attempt=1,
        result=result,
        duration_s=0.1,
    )


def dead(task: int, error: str, args: dict[str, Any]) -> TaskDeadLettered:
    return TaskDeadLettered(
        job_id="j",
        task_id=f"j-{task}",
        kind="http.warm",
        args=args,
        reason="exhausted",
        attempts=3,
        last_error=error,
    )


def test_every_time_is_within_five_percent_of_its_bucket() -> None:
    value = 0.001
    while value < 3_600_000:
        middle = float(bucket_of(value))
        assert abs(middle - value) <= 0.05 * value, value
        value *= 1.013
    assert bucket_of(0.0) == "0"


def test_domain_is_host_and_port_lower_case() -> None:
    assert domain_of("https://User:pw@Example.COM:8443/a?b#c") == "example.com:8443"
    assert domain_of("not a url") == ""
    assert domain_of(None) == ""
    assert domain_of("http://[::1]:80/") == "[::1]:80"
    assert domain_of("http://a\x00b/") == "ab"


def test_a_page_done_and_pages_failed() -> None:
    result = {
        "url": "https://a.example/x",
        "domain": "a.example",
        "pass": 2,
        "status": 404,
        "redirects": [{"url": "https://a.example/y", "status": 301}],
        "cache": "MISS",
        "timings_ms": {"total": 3500.25},
        "bytes": 10,
        "warm": {"checks": 1, "cache": "HIT", "status": 200, "total_ms": 20.0},
        "time_saved_ms": 3480.25,
    }
    facts = page_facts(7, succeeded(1, result))
    assert {k: facts[k] for k in ("pass", "domain", "status", "cache", "ms")} == {
        "pass": 2,
        "domain": "a.example",
        "status": "404",
        "cache": "MISS",
        "ms": 3500.25,
    }
    assert (facts["broken_links"], facts["redirects"], facts["slow_pages"]) == (1, 1, 1)
    assert (facts["pages_warmed"], facts["misses_to_hits"], facts["time_saved_us"]) == (
        1,
        1,
        3_480_250,
    )
    failed = page_facts(8, dead(2, "HTTP 503 Service Unavailable for x", {"url": "http://B/"}))
    assert (failed["domain"], failed["pass"], failed["pages_failed"]) == ("b", 1, 1)
    assert failed["server_errors"] == 1
    assert page_facts(9, dead(3, "ConnectTimeout", {}))["server_errors"] == 0
    odd = page_facts(10, succeeded(4, [1, 2], {"url": "https://C.example/", "pass": 3}))
    assert (odd["domain"], odd["pass"], odd["status"], odd["cache"]) == (
        "c.example",
        3,
        "unknown",
        "unknown",
    )
    assert odd["bucket"] is None and odd["pages_done"] == 1


def test_the_api_reads_percentiles_within_five_percent() -> None:
    rng = random.Random(12)
    fold = CrawlStatsFold()
    times = []
    for task in range(5000):
        ms = rng.lognormvariate(5, 1.2)
        times.append(ms)
        domain = f"d{task % 3}.example"
        result = {"domain": domain, "status": 200, "cache": "HIT", "timings_ms": {"total": ms}}
        fold.count(page_facts(task + 1, succeeded(task, result)))
    rows = [
        row | {k: json.loads(row[k]) for k in ("status_counts", "cache_counts", "response_ms")}
        for row in fold.table_rows()
    ]
    figures = summed(rows).figures()
    times.sort()
    response = figures["response_ms"]
    assert (response.min_ms, response.max_ms) == (times[0], times[-1])
    for p in (50, 90, 95, 99):
        exact = times[math.ceil(p / 100 * len(times)) - 1]
        assert abs(getattr(response, f"p{p}_ms") - exact) <= 0.05 * exact, p
    assert figures["pages_done"] == 5000 and figures["cache_hit_ratio"] == 1.0


def test_a_requeue_without_a_row_takes_nothing_back() -> None:
    fold = CrawlStatsFold()
    fold.undo_failure({"seq": 1, "job_id": "j", "pass": 1, "domain": "x"}, "HTTP 500")
    assert fold.rows == {}


def test_numbers_off_any_scale_are_bounded() -> None:
    result = {
        "status": 10**40,
        "cache": "MISS",
        "timings_ms": {"total": 1.7e308},
        "bytes": 10**30,
        "warm": {"cache": "HIT"},
        "time_saved_ms": -(10**400),
    }
    facts = page_facts(1, succeeded(1, result, {"url": "http://a/", "pass": 10**20}))
    assert facts["ms"] == 1e12 and facts["total_us"] == 10**15
    assert facts["bytes"] == 1 << 40 and facts["pass"] == 1
    assert facts["status"] == str(10**40) and facts["server_errors"] == 1
    assert facts["time_saved_us"] == 0  # not a float: no time saved
