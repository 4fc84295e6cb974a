"""Crawl: one job of `http.warm` pages spread over N local "domains" (web sites on 127.0.0.1,
one per port), each limited to the same rate; the pages per second the fleet reaches, against
the sum of the domains' rates (what politeness allows, and all it allows)."""

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from jobstream.bench._common import poll_until
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.bench._sites import Reply, Request, Site, rate_per_s, serving
from jobstream.bench._sql import read_model_query
from jobstream.cli._submit import build_job
from jobstream.events import Bus, TaskSpec

# Each page takes the site this long to answer: a quick page of a real site.
PAGE_S = 0.005
CONCURRENCY_PER_DOMAIN = 2
POLL_S = 0.05
# The job must end within this multiple of its planned duration (plus a start-up allowance).
TIMEOUT_FACTOR = 3.0
TIMEOUT_ALLOWANCE_S = 30.0


@dataclass(frozen=True, kw_only=True)
class CrawlResult:
    domains: int
    rate_per_domain: float
    pages: int
    # The sum of the domains' rates: the most politeness allows.
    target_pages_per_s: float
    # Requests the sites got, first to last, per second (all domains together).
    pages_per_s: float
    # The same per domain, and the most requests each had in flight at once.
    domain_pages_per_s: list[float]
    domain_max_in_flight: list[int]
    # The job's submit until the read model shows it completed.
    job_s: float
    cpu: CpuReport


def _page(request: Request) -> Reply:
    return Reply(delay_s=PAGE_S)


async def measure_crawl(
    bus: Bus,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    *,
    domains: int,
    rate_per_domain: float,
    duration_s: float,
    queue: str,
    alive: Callable[[], None] | None = None,
) -> CrawlResult:
    pages_per_domain = max(2, round(rate_per_domain * duration_s))
    sites = [Site(_page) for _ in range(domains)]
    async with serving(*sites):
        args = {"rate": rate_per_domain, "concurrency": CONCURRENCY_PER_DOMAIN, "warm": False}
        specs = [
            TaskSpec(kind="http.warm", args={"url": site.url(f"/page/{index}"), **args})
            for index in range(pages_per_domain)
            for site in sites
        ]
        job = build_job(
            specs,
            name="bench-crawl",
            queue=queue,
            max_attempts=3,
            timeout_s=None,
            submitted_by="bench",
        )
        status = read_model_query("job_status")

        async def completed() -> bool | None:
            return True if await pool.fetchval(status, job.job_id) == "completed" else None

        meter.start()
        started = time.monotonic()
        await bus.publish_event(job)
        await poll_until(
            completed,
            timeout_s=duration_s * TIMEOUT_FACTOR + TIMEOUT_ALLOWANCE_S,
            interval_s=POLL_S,
            what="the crawl job completed",
            alive=alive,
        )
        job_s = time.monotonic() - started
        cpu = meter.stop()
    every = sorted(at for site in sites for at in site.times())
    return CrawlResult(
        domains=domains,
        rate_per_domain=rate_per_domain,
        pages=len(specs),
        target_pages_per_s=round(domains * rate_per_domain, 1),
        pages_per_s=round(rate_per_s(every), 1),
        domain_pages_per_s=[round(rate_per_s(site.times()), 2) for site in sites],
        domain_max_in_flight=[site.max_in_flight for site in sites],
        job_s=round(job_s, 2),
        cpu=cpu,
    )
