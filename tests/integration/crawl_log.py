"""A crawl's log written by hand: two passes over pages of three domains, with results shaped
as the `http.warm` contract says, and the statistics they should give, computed here from
the pages themselves (not through projections._crawl)."""

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from jobstream.events import (
    Event,
    JobSubmitted,
    TaskDeadLettered,
    TaskRequeued,
    TaskSpec,
    TaskSucceeded,
)

CRAWL_KIND = "http.warm"
DOMAINS = ("a.example", "b.example:8443", "c.example")
CACHES = ("HIT", "MISS", "EXPIRED", "DYNAMIC", "BYPASS", "unknown")
STATUSES = (200, 200, 200, 301, 404, 410, 200, 500, 200, 403)


@dataclass(frozen=True)
class Page:
    url: str
    domain: str
    pass_: int
    status: int
    cache: str
    total_ms: float
    size: int
    redirected: bool
    warm_cache: str | None  # the second GET's cache status (None: not warmed)
    saved_ms: float | None


@dataclass(frozen=True)
class Failure:
    url: str
    domain: str
    pass_: int
    error: str


@dataclass
class CrawlLog:
    job_id: str
    events: list[Event] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def warm_result(page: Page) -> dict[str, Any]:
    """A task.succeeded result as the contract shapes it."""
    return {
        "url": page.url,
        "final_url": page.url + ("/moved" if page.redirected else ""),
        "domain": page.domain,
        "pass": page.pass_,
        "status": page.status,
        "redirects": [{"url": page.url, "status": 301}] if page.redirected else [],
        "cache": page.cache,
        "cache_header": f"cf-cache-status: {page.cache}",
        "timings_ms": {
            "dns": 1.0,
            "connect": 2.0,
            "tls": None,
            "ttfb": 5.0,
            "total": page.total_ms,
        },
        "bytes": page.size,
        "content_type": "text/html",
        "warm": None
        if page.warm_cache is None
        else {"checks": 2, "cache": page.warm_cache, "status": 200, "total_ms": 12.5},
        "time_saved_ms": page.saved_ms,
    }


def _page(index: int, pass_: int) -> Page:
    domain = DOMAINS[index % len(DOMAINS)]
    scheme = "https" if index % 2 else "http"
    cache = CACHES[(index + pass_) % len(CACHES)] if pass_ == 1 else "HIT"
    # Times spread over 4 decades, a few over 3 s.
    total_ms = round(3.0 * 1.37 ** (index % 23) + index * 0.25, 3)
    warmed = cache in ("MISS", "EXPIRED")
    return Page(
        url=f"{scheme}://{domain.upper()}/p/{index}",
        domain=domain,
        pass_=pass_,
        status=STATUSES[index % len(STATUSES)],
        cache=cache,
        total_ms=total_ms,
        size=1000 + 37 * index,
        redirected=index % 7 == 3,
        warm_cache=("HIT" if index % 5 else "MISS") if warmed else None,
        saved_ms=(total_ms - 12.5) if warmed else None,
    )


def crawl_log(job_id: str, at: datetime, *, pages_per_pass: int = 40) -> CrawlLog:
    """Two passes of `pages_per_pass` pages; each pass also has pages that failed (a 503 and
    a timeout), and one 503 that is requeued and then answers."""
    log = CrawlLog(job_id)
    total = 2 * (pages_per_pass + 3)
    specs = [TaskSpec(kind=CRAWL_KIND, args={"url": f"https://x/{i}"}) for i in range(total)]
    log.events.append(
        JobSubmitted(at=at, job_id=job_id, labels={"crawl": "example", "pass": "1"}, tasks=specs)
    )
    task = 0
    clock = at
    for pass_ in (1, 2):
        for index in range(pages_per_pass):
            page = _page(index, pass_)
            clock += timedelta(milliseconds=10)
            log.events.append(_succeeded(job_id, task, page, clock))
            log.pages.append(page)
            task += 1
        for error in ("HTTP 503 Service Unavailable for x", "ConnectTimeout"):
            url = f"https://{DOMAINS[pass_]}/gone/{task}"
            clock += timedelta(milliseconds=10)
            log.events.append(_dead(job_id, task, url, pass_, error, clock))
            log.failures.append(Failure(url, DOMAINS[pass_], pass_, error))
            task += 1
        # Failed, requeued, then answered: a page done, not a failure.
        url = f"https://{DOMAINS[0]}/flaky/{task}"
        clock += timedelta(milliseconds=10)
        log.events.append(_dead(job_id, task, url, pass_, "HTTP 502 Bad Gateway", clock))
        log.events.append(
            TaskRequeued(
                at=clock + timedelta(milliseconds=1),
                job_id=job_id,
                task_id=f"{job_id}-{task}",
                kind=CRAWL_KIND,
                args={"url": url, "pass": pass_},
            )
        )
        page = Page(url, DOMAINS[0], pass_, 200, "HIT", 42.0, 500, False, None, None)
        log.events.append(_succeeded(job_id, task, page, clock + timedelta(milliseconds=2)))
        log.pages.append(page)
        task += 1
    return log


def _succeeded(job_id: str, task: int, page: Page, at: datetime) -> TaskSucceeded:
    return TaskSucceeded(
        at=at,
        job_id=job_id,
        task_id=f"{job_id}-{task}",
        kind=CRAWL_KIND,
        args={"url": page.url, "pass": page.pass_},
        worker_id="w-crawl",
        attempt=1,
        result=warm_result(page),
        duration_s=page.total_ms / 1000,
    )


def _dead(job_id: str, task: int, url: str, pass_: int, error: str, at: datetime) -> Event:
    return TaskDeadLettered(
        at=at,
        job_id=job_id,
        task_id=f"{job_id}-{task}",
        kind=CRAWL_KIND,
        args={"url": url, "pass": pass_},
        reason="failed 3 attempts",
        attempts=3,
        last_error=error,
        worker_id="w-crawl",
    )


# --- the figures expected, from the pages -----------------------------------------------


def expected_figures(pages: list[Page], failures: list[Failure]) -> dict[str, Any]:
    """The statistics of these pages, as the API reports them (times exact: the API's
    percentiles are to be within 5% of these)."""
    times = sorted(page.total_ms for page in pages)
    statuses: dict[str, int] = {}
    caches: dict[str, int] = {}
    for page in pages:
        statuses[str(page.status)] = statuses.get(str(page.status), 0) + 1
        caches[page.cache] = caches.get(page.cache, 0) + 1
    warmed = [page for page in pages if page.warm_cache is not None]
    return {
        "pages_done": len(pages),
        "pages_failed": len(failures),
        "status_counts": statuses,
        "cache_counts": caches,
        "broken_links": sum(400 <= page.status < 500 for page in pages),
        "server_errors": sum(page.status >= 500 for page in pages)
        + sum(failure.error.startswith("HTTP 5") for failure in failures),
        "redirects": sum(page.redirected for page in pages),
        "bytes": sum(page.size for page in pages),
        "slow_pages": sum(page.total_ms > 3000 for page in pages),
        "cache_hit_ratio": caches.get("HIT", 0) / len(pages) if pages else None,
        "pages_warmed": len(warmed),
        "misses_to_hits": sum(page.warm_cache == "HIT" for page in warmed),
        "time_saved_ms": sum(page.saved_ms or 0.0 for page in warmed),
        "min_ms": times[0] if times else None,
        "max_ms": times[-1] if times else None,
        "percentiles": {f"p{p}": _nearest_rank(times, p / 100) for p in (50, 90, 95, 99)},
        "broken_urls": [page.url for page in pages if 400 <= page.status < 500],
        "slow_urls": [page.url for page in pages if page.total_ms > 3000],
    }


def _nearest_rank(times: list[float], fraction: float) -> float | None:
    if not times:
        return None
    return times[max(0, math.ceil(fraction * len(times)) - 1)]
