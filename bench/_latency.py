"""Latency at a light fixed rate: single-task jobs submitted on a clock, and for each task

- submit → started: the handler's start, which is the `task.succeeded` event's `at` minus
  its `duration_s` (both set by the worker), minus the wall time just before the submit;
- submit → done: the start of the first read-model poll that sees the task `succeeded`,
  minus the same submit time (so it overstates by up to one poll interval).
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from jobstream.bench._common import Percentiles, job_of, percentiles_ms, poll_until, rate
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.bench._sql import read_model_query
from jobstream.events import Bus

POLL_S = 0.005
DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True, kw_only=True)
class LatencyResult:
    tasks: int
    target_rate_per_s: float
    achieved_rate_per_s: float
    submit_to_started: Percentiles
    submit_to_done: Percentiles
    # The p50 of submit → started for the tasks submitted in each second: flat when the
    # system keeps up with the rate, rising when a backlog builds.
    started_p50_by_second_ms: list[float]
    poll_interval_ms: float
    cpu: CpuReport


@dataclass
class _Samples:
    submitted: dict[str, float]
    # job id → (seen in the read model, handler start), both wall-clock seconds
    seen: dict[str, tuple[float, float]]


async def _submit_at_rate(
    bus: Bus, samples: _Samples, *, count: int, rate_per_s: float, queue: str
) -> float:
    """Submit `count` single-task jobs on a fixed clock; return the seconds it took."""
    started = time.monotonic()
    for index in range(count):
        delay = started + index / rate_per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        job = job_of("noop", 1, queue=queue, name="bench-latency")
        samples.submitted[job.job_id] = time.time()
        await bus.publish_event(job)
    return time.monotonic() - started


async def _watch(pool: asyncpg.Pool, samples: _Samples, *, count: int, timeout_s: float) -> None:
    """Record when each submitted task first shows as succeeded in the read model."""
    query = read_model_query("succeeded_tasks")

    async def check() -> bool | None:
        pending = [job for job in samples.submitted if job not in samples.seen]
        if pending:
            polled_at = time.time()
            for row in await pool.fetch(query, pending):
                handler_start = row["finished_at"].timestamp() - row["duration_s"]
                samples.seen[row["job_id"]] = (polled_at, handler_start)
        return True if len(samples.seen) >= count else None

    await poll_until(
        check, timeout_s=timeout_s, interval_s=POLL_S, what=f"{count} latency tasks done"
    )


async def measure_latency(
    bus: Bus,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    *,
    rate_per_s: float,
    duration_s: float,
    queue: str,
    alive: Callable[[], None] | None = None,
) -> LatencyResult:
    count = max(1, round(rate_per_s * duration_s))
    samples = _Samples(submitted={}, seen={})
    meter.start()
    watcher = asyncio.create_task(
        _watch(pool, samples, count=count, timeout_s=duration_s + DRAIN_TIMEOUT_S)
    )
    try:
        took_s = await _submit_at_rate(
            bus, samples, count=count, rate_per_s=rate_per_s, queue=queue
        )
        if alive is not None:
            alive()
        await watcher
    finally:
        watcher.cancel()
    cpu = meter.stop()
    started = [start - samples.submitted[job] for job, (_, start) in samples.seen.items()]
    first_submit = min(samples.submitted.values())
    by_second: dict[int, list[float]] = {}
    for job, (_, start) in samples.seen.items():
        second = int(samples.submitted[job] - first_submit)
        by_second.setdefault(second, []).append(start - samples.submitted[job])
    done = [seen - samples.submitted[job] for job, (seen, _) in samples.seen.items()]
    return LatencyResult(
        tasks=count,
        target_rate_per_s=rate_per_s,
        achieved_rate_per_s=rate(count, took_s),
        submit_to_started=percentiles_ms(started),
        submit_to_done=percentiles_ms(done),
        started_p50_by_second_ms=[
            percentiles_ms(by_second[second]).p50 for second in sorted(by_second)
        ],
        poll_interval_ms=POLL_S * 1000,
        cpu=cpu,
    )
