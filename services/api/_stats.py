"""`GET /stats`: tasks finished per bucket over a bounded window, duration percentiles, the
same per queue and kind, and the projector's lag.

Each figure reads the window's rows of `stats_per_minute`, the finished tasks summed per
minute, queue and kind by the projector (migration 008), never `results`: at most (window
minutes x queues x kinds) small rows whatever the number of tasks. Buckets are whole
minutes, and the percentiles come from the rows' duration histograms: `percentile_cont` over
the durations with each taken as its histogram bucket's middle, so within 5% of the exact
figure. Answers are kept `STATS_CACHE_S` per set of parameters, so many viewers of one
dashboard cost one set of queries every few seconds.
"""

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from jobstream.events import bucket_middle_s, load_queries
from jobstream.services.api._live import projection_lag
from jobstream.services.api._params import READS, OptionalQueueQuery

DEFAULT_WINDOW_S = 3600
MAX_WINDOW_S = 86_400
DEFAULT_BUCKET_S = 60
# The projector sums finished tasks per minute: buckets are whole minutes.
BUCKET_STEP_S = 60
MIN_BUCKET_S = 60
MAX_BUCKET_S = 3600
MIN_WINDOW_S = 60
# At most MAX_WINDOW_S / MIN_BUCKET_S = 1440 buckets per answer.
MAX_QUEUE_KIND_ROWS = 200
STATS_CACHE_S = 2.0
# An answer that took long to compute is kept this many times as long, so viewers never keep
# the database busy.
STATS_KEEP_FACTOR = 10.0
STATS_CACHE_ENTRIES = 64
PROJECTION = "postgres"
KIND_MAX_LENGTH = 200

_SQL = load_queries("jobstream.services.api", "ops.sql")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class StatsBucket(_Model):
    # The bucket's start (UTC); it covers [at, at + bucket_s).
    at: datetime
    # Tasks that succeeded in the bucket.
    succeeded: int = Field(ge=0)
    # Tasks that failed for good (dead-lettered: out of attempts) in the bucket.
    failed: int = Field(ge=0)


class Durations(_Model):
    """Percentiles of the durations of the tasks that succeeded in the window (null: none),
    read from the per-minute duration histograms: `percentile_cont` with each duration taken
    as its log-scale bucket's middle, within 5% of the exact figure."""

    p50_s: float | None
    p90_s: float | None
    p99_s: float | None


class QueueKindStats(_Model):
    """One queue and kind over the window; its percentiles as in `Durations` (within 5%)."""

    queue: str
    kind: str
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)
    p50_s: float | None
    p99_s: float | None


class ProjectorLag(_Model):
    # How far the PostgreSQL read models are behind the event log: events not applied yet,
    # and the age of the oldest of them (0 when caught up). Null: not known (NATS is not
    # reachable, or the projection has not started).
    events: int | None
    seconds: float | None


class Stats(_Model):
    # The window asked for, rounded up to whole buckets.
    window_s: int
    bucket_s: int
    # The window is [since, until): until is the end of the current bucket.
    since: datetime
    until: datetime
    # Every bucket of the window, oldest first (empty ones too).
    buckets: list[StatsBucket]
    durations: Durations
    # Per queue and task kind, the busiest first (at most MAX_QUEUE_KIND_ROWS).
    by_queue_kind: list[QueueKindStats]
    projector_lag: ProjectorLag
    # When these figures were read (answers are kept a few seconds; longer if slow to read).
    as_of: datetime


WindowQuery = Annotated[
    int,
    Query(
        ge=MIN_WINDOW_S,
        le=MAX_WINDOW_S,
        description=f"seconds of history, {MIN_WINDOW_S}..{MAX_WINDOW_S}; rounded up to whole "
        "buckets (the answer's window_s says how much)",
    ),
]
BucketQuery = Annotated[
    int,
    Query(
        ge=MIN_BUCKET_S,
        le=MAX_BUCKET_S,
        multiple_of=BUCKET_STEP_S,
        description=f"seconds per bucket, {MIN_BUCKET_S}..{MAX_BUCKET_S}, whole minutes "
        f"(a multiple of {BUCKET_STEP_S}): the read models sum finished tasks per minute",
    ),
]
KindQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=KIND_MAX_LENGTH,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="only tasks of this kind (handler name)",
    ),
]


def window(now: datetime, window_s: int, bucket_s: int) -> tuple[datetime, datetime]:
    """[since, until): until is the end of the bucket holding `now`, buckets aligned to the
    Unix epoch so that successive answers share their buckets."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    elapsed = int((now - epoch).total_seconds())
    until = epoch + timedelta(seconds=(elapsed // bucket_s + 1) * bucket_s)
    return until - timedelta(seconds=window_s), until


class StatsCache:
    """Answers kept per set of parameters (the last `entries` sets) for `ttl_s`, or
    `keep_factor` times as long as they took to read; one computation at a time, so
    concurrent viewers share it."""

    def __init__(
        self,
        ttl_s: float = STATS_CACHE_S,
        entries: int = STATS_CACHE_ENTRIES,
        keep_factor: float = STATS_KEEP_FACTOR,
    ) -> None:
        self.ttl_s = ttl_s
        self.entries = entries
        self.keep_factor = keep_factor
        # key: (when it expires on the monotonic clock, the answer)
        self._values: OrderedDict[tuple[object, ...], tuple[float, Stats]] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, key: tuple[object, ...], compute: Callable[[], Awaitable[Stats]]) -> Stats:
        async with self._lock:
            kept = self._values.get(key)
            if kept is not None and time.monotonic() < kept[0]:
                return kept[1]
            started = time.monotonic()
            value = await compute()
            took = time.monotonic() - started
            self._values[key] = (started + max(self.ttl_s, self.keep_factor * took), value)
            self._values.move_to_end(key)
            while len(self._values) > self.entries:
                self._values.popitem(last=False)
            return value


async def _projector_lag(request: Request) -> ProjectorLag:
    progress = await projection_lag(request, PROJECTION)
    if progress is None:
        return ProjectorLag(events=None, seconds=None)
    return ProjectorLag(events=progress.behind_events, seconds=progress.behind_s)


Histogram = Mapping[int, int]


def percentile(histogram: Histogram, fraction: float) -> float | None:
    """`percentile_cont(fraction)` over the durations of `histogram` ({bucket: tasks}), each
    taken as its bucket's middle (None: no durations)."""
    buckets = sorted((bucket, count) for bucket, count in histogram.items() if count > 0)
    total = sum(count for _, count in buckets)
    if total == 0:
        return None
    position = fraction * (total - 1)
    lower = math.floor(position)
    low = _value_at(buckets, lower)
    high = _value_at(buckets, min(lower + 1, total - 1))
    return low + (position - lower) * (high - low)


def _value_at(buckets: list[tuple[int, int]], rank: int) -> float:
    """The middle of the bucket holding the duration of 0-based `rank`, in seconds."""
    seen = 0
    for bucket, count in buckets:
        seen += count
        if rank < seen:
            return bucket_middle_s(bucket)
    return bucket_middle_s(buckets[-1][0])


def _summed(histograms: Iterable[Histogram]) -> dict[int, int]:
    total: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            total[bucket] = total.get(bucket, 0) + count
    return total


async def _compute(
    request: Request, window_s: int, bucket_s: int, queue: str | None, kind: str | None
) -> Stats:
    now = datetime.now(UTC)
    since, until = window(now, window_s, bucket_s)
    width = timedelta(seconds=bucket_s)
    async with request.app.state.read_models.connection() as conn:
        rows = await conn.fetch(_SQL["stats_buckets"], since, until, width, queue, kind)
        per_queue_kind = await conn.fetch(
            _SQL["stats_by_queue_kind"], since, until, queue, kind, MAX_QUEUE_KIND_ROWS
        )
        histogram_rows = await conn.fetch(_SQL["stats_durations"], since, until, queue, kind)
    histograms: dict[tuple[str, str], dict[int, int]] = {}
    for row in histogram_rows:
        histograms.setdefault((row["queue"], row["kind"]), {})[row["bucket"]] = row["n"]
    overall = _summed(histograms.values())
    counted = {row["at"]: row for row in rows}
    buckets = []
    for index in range(window_s // bucket_s):
        at = since + index * width
        row = counted.get(at)
        buckets.append(
            StatsBucket(
                at=at,
                succeeded=row["succeeded"] if row else 0,
                failed=row["failed"] if row else 0,
            )
        )
    by_queue_kind = []
    for row in per_queue_kind:
        histogram = histograms.get((row["queue"], row["kind"]), {})
        by_queue_kind.append(
            QueueKindStats(
                **dict(row), p50_s=percentile(histogram, 0.5), p99_s=percentile(histogram, 0.99)
            )
        )
    return Stats(
        window_s=window_s,
        bucket_s=bucket_s,
        since=since,
        until=until,
        buckets=buckets,
        durations=Durations(
            p50_s=percentile(overall, 0.5),
            p90_s=percentile(overall, 0.9),
            p99_s=percentile(overall, 0.99),
        ),
        by_queue_kind=by_queue_kind,
        projector_lag=await _projector_lag(request),
        as_of=now,
    )


stats_router = APIRouter()


@stats_router.get("/stats", responses=READS)
async def get_stats(
    request: Request,
    window_s: WindowQuery = DEFAULT_WINDOW_S,
    bucket_s: BucketQuery = DEFAULT_BUCKET_S,
    queue: OptionalQueueQuery = None,
    kind: KindQuery = None,
) -> Stats:
    """Tasks succeeded and failed (dead-lettered) per bucket over the last `window_s`,
    duration percentiles, the same per queue and kind, and the read models' lag.

    Read from the finished tasks the projector sums per minute, queue and kind (never from
    the tasks themselves): buckets are whole minutes, and the percentiles are
    `percentile_cont` over the durations each taken as the middle of its log-scale
    histogram bucket, within 5% of the exact figure (a duration under 1 µs counts as 1 µs).
    A task's queue is its job's ('' if its job was not known when it finished)."""
    window_s = -(-window_s // bucket_s) * bucket_s
    cache: StatsCache = request.app.state.stats_cache
    key = (window_s, bucket_s, queue, kind)
    return await cache.get(key, lambda: _compute(request, window_s, bucket_s, queue, kind))
