"""The API's pure helpers: the rate limit's buckets, queue names from consumer names, the
stats window and CORS origins."""

import asyncio
from datetime import UTC, datetime

import pytest

from jobstream.events import LEVELS_HIGH_FIRST, due_consumer_name, worker_consumer_name
from jobstream.services.api._queues import level_of_consumer
from jobstream.services.api._safety import TokenBuckets, check_origins
from jobstream.services.api._stats import Durations, ProjectorLag, Stats, StatsCache, window


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_buckets_allow_a_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_s=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # each address its own
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 60
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, no more


def test_refused_requests_do_not_spend() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_s=1.0, burst=1, clock=clock)
    buckets.take("a")
    for _ in range(10):
        assert buckets.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert buckets.take("a") == 0.0


def test_buckets_forget_the_least_recent_clients_beyond_the_bound() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_s=1.0, burst=1, max_clients=2, clock=clock)
    for client in ("a", "b", "c"):
        buckets.take(client)
    assert buckets.take("c") > 0 and buckets.take("b") > 0
    assert buckets.take("a") == 0.0  # forgotten: a full bucket again


@pytest.mark.parametrize("queue", ["default", "workers-x", "high-workers-y", "due", "a-b_c"])
def test_consumer_names_give_back_queue_and_level(queue: str) -> None:
    for level in LEVELS_HIGH_FIRST:
        assert level_of_consumer(worker_consumer_name(queue, level)) == (queue, level.value)
    assert level_of_consumer(due_consumer_name(queue)) == (queue, "due")


@pytest.mark.parametrize("name", ["audit", "workers-", "dispatchers-schedule-ticks", ""])
def test_other_consumers_are_not_queues(name: str) -> None:
    assert level_of_consumer(name) is None


def test_stats_window_ends_with_the_current_bucket() -> None:
    now = datetime(2026, 12, 2, 10, 30, 15, tzinfo=UTC)
    since, until = window(now, 3600, 60)
    assert until == datetime(2026, 12, 2, 10, 31, tzinfo=UTC)
    assert since == datetime(2026, 12, 2, 9, 31, tzinfo=UTC)
    assert window(now, 300, 300)[1] == datetime(2026, 12, 2, 10, 35, tzinfo=UTC)
    on_the_edge = datetime(2026, 12, 2, 10, 35, tzinfo=UTC)  # a bucket's first instant
    assert window(on_the_edge, 300, 300)[1] == datetime(2026, 12, 2, 10, 40, tzinfo=UTC)


def test_cors_origins() -> None:
    good = ["*", "https://ops.example.com", "http://127.0.0.1:8000"]
    assert check_origins(good) == good
    for bad in ["ops.example.com", "https://ops.example.com/", "https://u@h", "https://h?q"]:
        with pytest.raises(ValueError, match="CORS origin"):
            check_origins([bad])


def _stats(marker: int) -> Stats:
    now = datetime.now(UTC)
    return Stats(
        window_s=marker,
        bucket_s=60,
        since=now,
        until=now,
        buckets=[],
        durations=Durations(p50_s=None, p90_s=None, p99_s=None),
        by_queue_kind=[],
        projector_lag=ProjectorLag(events=None, seconds=None),
        as_of=now,
    )


async def test_stats_kept_longer_the_longer_they_took() -> None:
    cache = StatsCache(ttl_s=0.0, keep_factor=20.0)
    computed = 0

    async def slow() -> Stats:
        nonlocal computed
        computed += 1
        await asyncio.sleep(0.02)
        return _stats(computed)

    first = await cache.get(("k",), slow)
    assert await cache.get(("k",), slow) is first  # kept ~0.4 s: 20 times the 0.02 s it took
    other = await cache.get(("other",), slow)
    assert other.window_s == 2
    await asyncio.sleep(0.5)
    assert (await cache.get(("k",), slow)).window_s == 3
