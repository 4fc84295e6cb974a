"""`GET /jobs/{job_id}/crawl`: a crawl's statistics, read from its `crawl_stats` rows (one per
pass and domain) and, for the lists of URLs, a bounded read of its results."""

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Protocol

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, Request

from jobstream.events import load_queries
from jobstream.services.api._crawl_figures import (
    CrawlReport,
    DomainFigures,
    ListedFigures,
    PageLink,
    PassFigures,
    Sum,
    summed,
)
from jobstream.services.api._errors import ErrorBody
from jobstream.services.api._params import READS, JobIdPath

CRAWL_KIND = "http.warm"
DEFAULT_LISTED_URLS = 20
MAX_LISTED_URLS = 200
DEFAULT_MAX_DOMAINS = 100
MAX_DOMAINS = 1000

_SQL = load_queries("jobstream.services.api", "crawl.sql")


class _Connections(Protocol):
    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...


def _connections(request: Request) -> _Connections:
    read_models: _Connections = request.app.state.read_models
    return read_models


Connections = Annotated[_Connections, Depends(_connections)]
ListedUrls = Annotated[
    int,
    Query(ge=0, le=MAX_LISTED_URLS, description="broken links and slow pages listed per list"),
]
MaxDomains = Annotated[
    int, Query(ge=0, le=MAX_DOMAINS, description="domains listed, those with the most pages")
]

crawl_router = APIRouter()


def not_a_crawl_reason(job: Mapping[str, Any]) -> str | None:
    """Why the job is not a crawl (None: it is one): a crawl is labelled `crawl` (as
    `jobstream crawl` submits it) or made of `http.warm` tasks."""
    labels = job["labels"]
    if isinstance(labels, Mapping) and "crawl" in labels:
        return None
    if job["first_kind"] == CRAWL_KIND:
        return None
    kind = job["first_kind"] or "none"
    return f"job {job['job_id']} is not a crawl: its tasks are of kind {kind}, not {CRAWL_KIND}"


@crawl_router.get(
    "/jobs/{job_id}/crawl",
    responses={404: {"model": ErrorBody, "description": "No such job"}, **READS},
)
async def get_crawl(
    job_id: JobIdPath,
    read_models: Connections,
    urls: ListedUrls = DEFAULT_LISTED_URLS,
    max_domains: MaxDomains = DEFAULT_MAX_DOMAINS,
) -> CrawlReport:
    """A crawl's statistics: totals, per pass and per domain (pages done and failed, status
    codes, broken links, server errors, redirects, response times, cache hit ratio, warming,
    bytes, slow pages), with the first `urls` broken links and slow pages."""
    async with read_models.connection() as conn:
        job = await conn.fetchrow(_SQL["crawl_job"], job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        rows = await conn.fetch(_SQL["crawl_stats"], job_id)
        reason = None if rows else not_a_crawl_reason(job)
        if reason is not None:
            return CrawlReport(job_id=job_id, is_crawl=False, detail=reason)
        lists = _Lists(conn, job_id, urls)
        broken, slow = await lists.of(None)
        totals = ListedFigures(**summed(rows).figures(), broken_urls=broken, slow_urls=slow)
        passes = []
        for number, pass_sum in _by_pass(rows):
            broken, slow = await lists.of(number)
            figures = pass_sum.figures()
            passes.append(PassFigures(pass_=number, **figures, broken_urls=broken, slow_urls=slow))
    by_domain = _by_domain(rows)
    domains = [
        DomainFigures(domain=domain, **domain_sum.figures())
        for domain, domain_sum in by_domain[:max_domains]
    ]
    return CrawlReport(
        job_id=job_id,
        is_crawl=True,
        totals=totals,
        passes=passes,
        domains=domains,
        domains_total=len(by_domain),
    )


def _by_pass(rows: Sequence[asyncpg.Record]) -> list[tuple[int, Sum]]:
    """The rows summed per pass, in pass order (the rows come in pass order)."""
    sums: dict[int, Sum] = {}
    for row in rows:
        sums.setdefault(row["pass"], Sum()).add(row)
    return list(sums.items())


def _by_domain(rows: Sequence[asyncpg.Record]) -> list[tuple[str, Sum]]:
    sums: dict[str, Sum] = {}
    for row in rows:
        sums.setdefault(row["domain"], Sum()).add(row)
    return sorted(sums.items(), key=lambda item: (-item[1].pages, item[0]))


class _Lists:
    """The first broken links and slow pages, of one pass or of all."""

    def __init__(self, conn: asyncpg.Connection, job_id: str, limit: int) -> None:
        self.conn = conn
        self.job_id = job_id
        self.limit = limit

    async def of(self, pass_number: int | None) -> tuple[list[PageLink], list[PageLink]]:
        """The broken links and the slow pages."""
        if self.limit == 0:
            return [], []
        args = (self.job_id, pass_number, self.limit)
        broken = await self.conn.fetch(_SQL["crawl_broken_links"], *args)
        slow = await self.conn.fetch(_SQL["crawl_slow_pages"], *args)
        return (
            [
                PageLink(url=row["url"], pass_=_pass(row["pass"]), status=_int(row["status"]))
                for row in broken
            ],
            [
                PageLink(url=row["url"], pass_=_pass(row["pass"]), total_ms=_ms(row["total_ms"]))
                for row in slow
            ],
        )


def _pass(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _int(text: str | None) -> int | None:
    number = _ms(text)
    return None if number is None else int(number)


def _ms(text: str | None) -> float | None:
    try:
        number = float(text) if text is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None
