"""A crawl's figures from its `crawl_stats` rows (one per pass and domain): sums, the merged
response-time histogram and the percentiles read from it. No page is read here."""

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The columns of crawl_stats (projections' migration 006) that add up.
SUMMED = (
    "pages_done",
    "pages_failed",
    "broken_links",
    "server_errors",
    "redirects",
    "bytes",
    "slow_pages",
    "pages_warmed",
    "misses_to_hits",
    "time_saved_us",
    "timed_pages",
    "total_us",
)
_MAPS = ("status_counts", "cache_counts", "response_ms")
PERCENTILES = (50, 90, 95, 99)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class ResponseTimes(_Model):
    """Times of the pages done (ms). min and max are exact; the percentiles come from a
    log-scale histogram and are within 5% of the exact ones."""

    pages: int
    min_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None


class Warming(_Model):
    """Pages given a second GET after a MISS or EXPIRED, those that then answered HIT, and
    the time saved (first total - second total, summed)."""

    pages_warmed: int
    misses_to_hits: int
    time_saved_ms: float


class CrawlFigures(_Model):
    pages_done: int
    pages_failed: int
    # pages done by HTTP status ("unknown": no valid status)
    status_counts: dict[str, int]
    # pages done with a status of 400..499
    broken_links: int
    # pages done with a 5xx, and pages that failed with an HTTP 5xx
    server_errors: int
    # pages done that were redirected
    redirects: int
    bytes: int
    # pages done in over 3 s
    slow_pages: int
    cache_counts: dict[str, int]
    # HIT / pages done (null: none done)
    cache_hit_ratio: float | None
    warming: Warming
    response_ms: ResponseTimes


class PageLink(_Model):
    url: str
    pass_: int = Field(serialization_alias="pass")
    status: int | None = None
    total_ms: float | None = None


class ListedFigures(CrawlFigures):
    """With the first broken links and slow pages, pass by pass in the order they finished."""

    broken_urls: list[PageLink]
    slow_urls: list[PageLink]


class PassFigures(ListedFigures):
    pass_: int = Field(serialization_alias="pass")


class DomainFigures(CrawlFigures):
    domain: str


class CrawlReport(_Model):
    """A crawl's statistics: totals, per pass and per domain. For a job that is not a crawl,
    `is_crawl` is false, `detail` says why and the figures are empty."""

    job_id: str
    is_crawl: bool
    detail: str | None = None
    totals: ListedFigures | None = None
    passes: list[PassFigures] = []
    # the domains with the most pages first, at most `max_domains` of them
    domains: list[DomainFigures] = []
    domains_total: int = 0


class Sum:
    """crawl_stats rows added up."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(SUMMED, 0)
        self.maps: dict[str, dict[str, int]] = {name: {} for name in _MAPS}
        self.min_ms: float | None = None
        self.max_ms: float | None = None

    def add(self, row: Mapping[str, Any]) -> "Sum":
        for column in SUMMED:
            self.sums[column] += row[column]
        for name in _MAPS:
            merged = self.maps[name]
            for key, count in _json_map(row[name]).items():
                merged[key] = merged.get(key, 0) + int(count)
        self.min_ms = _extreme(min, self.min_ms, row["min_ms"])
        self.max_ms = _extreme(max, self.max_ms, row["max_ms"])
        return self

    @property
    def pages(self) -> int:
        return self.sums["pages_done"] + self.sums["pages_failed"]

    def figures(self) -> dict[str, Any]:
        """The fields of `CrawlFigures`."""
        done = self.sums["pages_done"]
        timed = self.sums["timed_pages"]
        times = ResponseTimes(
            pages=timed,
            min_ms=self.min_ms,
            max_ms=self.max_ms,
            mean_ms=self.sums["total_us"] / 1000 / timed if timed else None,
            **{f"p{p}_ms": self._percentile(p / 100) for p in PERCENTILES},
        )
        return {
            **{c: self.sums[c] for c in SUMMED[:7]},
            "status_counts": self.maps["status_counts"],
            "cache_counts": self.maps["cache_counts"],
            "cache_hit_ratio": self.maps["cache_counts"].get("HIT", 0) / done if done else None,
            "warming": Warming(
                pages_warmed=self.sums["pages_warmed"],
                misses_to_hits=self.sums["misses_to_hits"],
                time_saved_ms=self.sums["time_saved_us"] / 1000,
            ),
            "response_ms": times,
        }

    def _percentile(self, fraction: float) -> float | None:
        """The nearest-rank percentile from the histogram: the middle of the bucket holding
        it, kept within the exact min and max."""
        buckets = sorted((float(key), count) for key, count in self.maps["response_ms"].items())
        total = sum(count for _, count in buckets)
        if not total or self.min_ms is None or self.max_ms is None:
            return None
        rank = max(1, math.ceil(fraction * total))
        seen = 0
        for middle, count in buckets:
            seen += count
            if seen >= rank:
                return min(self.max_ms, max(self.min_ms, middle))
        return self.max_ms


def _json_map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _extreme(pick: Any, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return float(pick(a, b))


def summed(rows: Iterable[Mapping[str, Any]]) -> Sum:
    total = Sum()
    for row in rows:
        total.add(row)
    return total
