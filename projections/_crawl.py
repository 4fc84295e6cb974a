"""Crawl statistics: what one `http.warm` page adds to its job's `crawl_stats` row.

The rule is written once, here: `page_facts` reads a finished page (a task.succeeded's result,
or a task.dead_lettered's args and error) into flat figures, and `CrawlStatsFold` adds those
of the events that made a results row up per job, pass and domain (for the live projector
and the replay alike: `_rules.ReadModel`). Sums are of
integers (times in microseconds), so the order of the additions never shows.

A page's response time goes into a log-scale histogram (buckets growing by `BUCKET_GROWTH`,
each named by its geometric middle, so within 5% of every time in it), from which the API
reads percentiles without reading the pages.
"""

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from jobstream.events import BUCKET_GROWTH, TaskDeadLettered, TaskRequeued, TaskSucceeded, encode

CRAWL_KIND = "http.warm"
SLOW_PAGE_MS = 3000.0
CACHE_STATUSES = frozenset(
    {"HIT", "MISS", "EXPIRED", "STALE", "BYPASS", "DYNAMIC", "REVALIDATED", "UPDATING", "unknown"}
)
WARMABLE = frozenset({"MISS", "EXPIRED"})
MAX_DOMAIN_CHARS = 300
MAX_PASS = 1_000_000
MAX_BYTES = 1 << 40  # a sum of a million pages stays far within bigint
MAX_MS = 1e12  # times beyond (31 years) are taken as this
SERVER_ERROR_PREFIX = "HTTP 5"

_Row = dict[str, Any]

# The columns `crawl_stats` sums, in `page_facts`' names.
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


def domain_of(url: object) -> str:
    """host[:port] of `url`, lower-case ('' if it has none)."""
    if not isinstance(url, str):
        return ""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return ""
    return _clean(netloc.rpartition("@")[2].lower())


def _clean(text: str) -> str:
    """A text PostgreSQL takes (no NUL), bounded."""
    return text.replace("\x00", "")[:MAX_DOMAIN_CHARS]


def _pass_of(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PASS:
        return value
    return 1


def _number(value: object) -> float | None:
    """A finite number, else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            return None
        return number if math.isfinite(number) else None
    return None


def _ms(value: object) -> float | None:
    """A time in ms, within ±`MAX_MS` (None: not a number)."""
    number = _number(value)
    return None if number is None else max(-MAX_MS, min(MAX_MS, number))


def _micros(ms: float) -> int:
    return round(ms * 1000)


def bucket_of(ms: float) -> str:
    """The name of the histogram bucket holding a time of `ms` (≥ 0): its geometric middle,
    to 4 significant digits."""
    if ms <= 0:
        return "0"
    index = math.floor(math.log(ms) / math.log(BUCKET_GROWTH))
    return f"{BUCKET_GROWTH ** (index + 0.5):.4g}"


def _field(mapping: object, key: str) -> object:
    return mapping.get(key) if isinstance(mapping, Mapping) else None


def page_facts(seq: int, event: TaskSucceeded | TaskDeadLettered) -> _Row:
    """What a finished page adds to its crawl_stats row (one flat object), with the keys of
    the event and its results row."""
    facts: _Row = dict.fromkeys(SUMMED, 0) | {
        "seq": seq,
        "job_id": event.job_id,
        "task_id": event.task_id,
        "status": None,
        "cache": None,
        "bucket": None,
        "ms": None,
    }
    if isinstance(event, TaskDeadLettered):
        error = event.last_error or event.reason
        return facts | {
            "pass": _pass_of(event.args.get("pass")),
            "domain": domain_of(event.args.get("url")),
            "pages_failed": 1,
            "server_errors": int(error.startswith(SERVER_ERROR_PREFIX)),
        }
    result = event.result
    url = _field(result, "url")
    if url is None:
        url = event.args.get("url")
    domain = _field(result, "domain")
    facts |= {
        "pass": _pass_of(_field(result, "pass") or event.args.get("pass")),
        "domain": _clean(domain.lower()) if isinstance(domain, str) else domain_of(url),
        "pages_done": 1,
    }
    _add_answer(facts, result)
    _add_timing(facts, _field(_field(result, "timings_ms"), "total"))
    _add_warming(facts, result)
    return facts


def _add_answer(facts: _Row, result: object) -> None:
    status = _field(result, "status")
    number = _number(status)
    facts["status"] = str(status) if isinstance(status, int) and number is not None else "unknown"
    facts["broken_links"] = int(number is not None and 400 <= number < 500)
    facts["server_errors"] = int(number is not None and number >= 500)
    redirects = _field(result, "redirects")
    facts["redirects"] = int(isinstance(redirects, list) and len(redirects) > 0)
    size = _field(result, "bytes")
    if isinstance(size, int) and not isinstance(size, bool):
        facts["bytes"] = max(0, min(MAX_BYTES, size))
    cache = _field(result, "cache")
    facts["cache"] = cache if isinstance(cache, str) and cache in CACHE_STATUSES else "unknown"


def _add_timing(facts: _Row, total: object) -> None:
    ms = _ms(total)
    if ms is None or ms < 0:
        return
    facts |= {
        "ms": ms,
        "bucket": bucket_of(ms),
        "timed_pages": 1,
        "total_us": _micros(ms),
        "slow_pages": int(ms > SLOW_PAGE_MS),
    }


def _add_warming(facts: _Row, result: object) -> None:
    warm = _field(result, "warm")
    if not isinstance(warm, Mapping):
        return
    facts["pages_warmed"] = 1
    facts["misses_to_hits"] = int(facts["cache"] in WARMABLE and _field(warm, "cache") == "HIT")
    saved = _ms(_field(result, "time_saved_ms"))
    if saved is not None:
        facts["time_saved_us"] = _micros(saved)


def failure_undone(seq: int, event: TaskRequeued) -> _Row:
    """The keys of the failed page a requeue takes back: its results row goes, and with it
    its count."""
    return {
        "seq": seq,
        "job_id": event.job_id,
        "task_id": event.task_id,
        "pass": _pass_of(event.args.get("pass")),
        "domain": domain_of(event.args.get("url")),
    }


def is_server_error(error: str | None) -> bool:
    return error is not None and error.startswith(SERVER_ERROR_PREFIX)


class CrawlStatsFold:
    """The crawl_stats rows in memory, changed page by page."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int, str], _Row] = {}

    def count(self, facts: _Row) -> None:
        """Add a page whose results row was just made."""
        row = self._row(facts)
        for column in SUMMED:
            row[column] += facts[column]
        ms = facts["ms"]
        if ms is not None:
            row["min_ms"] = ms if row["min_ms"] is None else min(row["min_ms"], ms)
            row["max_ms"] = ms if row["max_ms"] is None else max(row["max_ms"], ms)
        for column, key in (
            ("status_counts", facts["status"]),
            ("cache_counts", facts["cache"]),
            ("response_ms", facts["bucket"]),
        ):
            if key is not None:
                row[column][key] = row[column].get(key, 0) + 1
        row["updated_seq"] = max(row["updated_seq"], facts["seq"])

    def undo_failure(self, keys: _Row, error: str | None) -> None:
        """Take back a failed page whose results row a requeue removed."""
        row = self.rows.get((keys["job_id"], keys["pass"], keys["domain"]))
        if row is None:  # as the projector's UPDATE: no row, nothing to take back
            return
        row["pages_failed"] -= 1
        row["server_errors"] -= int(is_server_error(error))
        row["updated_seq"] = max(row["updated_seq"], keys["seq"])

    def _row(self, keys: _Row) -> _Row:
        key = (keys["job_id"], keys["pass"], keys["domain"])
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = dict.fromkeys(SUMMED, 0) | {
                "job_id": key[0],
                "pass": key[1],
                "domain": key[2],
                "min_ms": None,
                "max_ms": None,
                "status_counts": {},
                "cache_counts": {},
                "response_ms": {},
                "updated_seq": keys["seq"],
            }
        return row

    def table_rows(self) -> list[_Row]:
        """The rows, their maps as JSON text (as COPY takes jsonb)."""
        maps = ("status_counts", "cache_counts", "response_ms")
        return [
            row | {column: encode(row[column]).decode() for column in maps}
            for row in self.rows.values()
        ]
