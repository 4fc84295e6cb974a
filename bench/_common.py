"""Small pieces every section uses: bounded polling, percentiles, jobs of no-op tasks."""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from jobstream.cli._submit import build_job
from jobstream.events import Bus, JobstreamError, JobSubmitted, TaskSpec

T = TypeVar("T")


async def poll_until(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float,
    interval_s: float,
    what: str,
    alive: Callable[[], None] | None = None,
) -> T:
    """Call `check` every `interval_s` until it returns a value; give up after `timeout_s`.

    `alive` raises if a process the wait depends on has died, so a crash fails fast.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None:
            alive()
        value = await check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise JobstreamError(f"bench: {what} did not happen within {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)


@dataclass(frozen=True, kw_only=True)
class Percentiles:
    p50: float
    p95: float
    p99: float


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def percentiles_ms(values_s: Sequence[float]) -> Percentiles:
    if not values_s:
        raise JobstreamError("bench: no samples to take percentiles of")
    return Percentiles(
        p50=round(1000 * percentile(values_s, 0.50), 2),
        p95=round(1000 * percentile(values_s, 0.95), 2),
        p99=round(1000 * percentile(values_s, 0.99), 2),
    )


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def job_of(
    kind: str,
    count: int,
    *,
    queue: str,
    name: str,
    args: dict[str, float] | None = None,
    chunk_size: int | None = None,
    priority: int = 0,
) -> JobSubmitted:
    return build_job(
        [TaskSpec(kind=kind, args=dict(args or {}), count=count)],
        name=name,
        queue=queue,
        max_attempts=3,
        timeout_s=None,
        submitted_by="bench",
        chunk_size=chunk_size,
        priority=priority,
    )


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal positive counts."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


async def submit_all(bus: Bus, jobs: Sequence[JobSubmitted]) -> None:
    for job in jobs:
        await bus.publish_event(job)


async def read_model_pool(database_url: str, schema: str) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=2,
        timeout=10,
        server_settings={"search_path": schema},
    )
    return pool
