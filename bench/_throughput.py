"""Throughput: N no-op tasks in several jobs, from the first submit until the last one is
`succeeded` in the Postgres read model; and the rate the workers finished them at."""

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from jobstream.bench._common import job_of, poll_until, rate, split, submit_all
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.bench._memory import RssReport, RssSampler
from jobstream.bench._sql import read_model_query
from jobstream.events import Bus

POLL_S = 0.02
MIN_TIMEOUT_S = 60.0
# Generous: even 500 tasks/s finishes in time.
TIMEOUT_S_PER_TASK = 0.002


@dataclass(frozen=True, kw_only=True)
class ThroughputResult:
    tasks: int
    jobs: int
    elapsed_s: float
    tasks_per_s: float
    # First to last task.succeeded (the events' `at`): the workers' own pace.
    worker_tasks_per_s: float
    # First submit to the last task.succeeded event: end to end, without the projector's lag.
    log_tasks_per_s: float
    # Last task.succeeded event to its row visible as succeeded.
    projector_lag_s: float
    tasks_by_worker: dict[str, int]
    cpu: CpuReport
    # CPU of all measured processes (servers included) per task.
    cpu_us_per_task: float
    worker_rss: RssReport


async def _wait_all_succeeded(
    pool: asyncpg.Pool,
    sizes: dict[str, int],
    rss: RssSampler,
    *,
    timeout_s: float,
    alive: Callable[[], None] | None,
) -> None:
    """Poll only the jobs not yet complete, so the poll stays cheap as jobs finish."""
    remaining = dict(sizes)

    async def check() -> bool | None:
        rss.sample()
        rows = await pool.fetch(read_model_query("succeeded_by_job"), list(remaining))
        for row in rows:
            if row["n"] >= remaining[row["job_id"]]:
                del remaining[row["job_id"]]
        return True if not remaining else None

    await poll_until(
        check,
        timeout_s=timeout_s,
        interval_s=POLL_S,
        what=f"{sum(sizes.values())} tasks succeeded in the read model",
        alive=alive,
    )


async def measure_throughput(
    bus: Bus,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    *,
    tasks: int,
    jobs: int,
    queue: str,
    chunk_size: int | None = None,
    alive: Callable[[], None] | None = None,
) -> ThroughputResult:
    """`chunk_size`: chunked mode, that many tasks per message."""
    label = "chunked" if chunk_size else "throughput"
    batch = [
        job_of("noop", size, queue=queue, name=f"bench-{label}-{index}", chunk_size=chunk_size)
        for index, size in enumerate(split(tasks, jobs))
    ]
    sizes = {job.job_id: job.task_count for job in batch}
    rss = RssSampler({name: pid for name, pid in meter.pids.items() if name.startswith("worker")})
    rss.start()
    meter.start()
    started_wall = time.time()
    started = time.monotonic()
    await submit_all(bus, batch)
    timeout_s = max(MIN_TIMEOUT_S, tasks * TIMEOUT_S_PER_TASK)
    await _wait_all_succeeded(pool, sizes, rss, timeout_s=timeout_s, alive=alive)
    elapsed_s = time.monotonic() - started
    visible_wall = time.time()
    cpu = meter.stop()
    worker_rss = rss.stop()
    span = await pool.fetchrow(read_model_query("finish_span"), list(sizes))
    by_worker = await pool.fetch(read_model_query("tasks_by_worker"), list(sizes))
    first_at, last_at = span["first_at"].timestamp(), span["last_at"].timestamp()
    return ThroughputResult(
        tasks=tasks,
        jobs=len(batch),
        elapsed_s=round(elapsed_s, 3),
        tasks_per_s=rate(tasks, elapsed_s),
        worker_tasks_per_s=rate(tasks, last_at - first_at),
        log_tasks_per_s=rate(tasks, last_at - started_wall),
        projector_lag_s=round(max(0.0, visible_wall - last_at), 3),
        tasks_by_worker={row["worker_id"]: row["n"] for row in by_worker},
        cpu=cpu,
        cpu_us_per_task=round(sum(cpu.per_process.values()) / 100 * elapsed_s / tasks * 1e6, 1),
        worker_rss=worker_rss,
    )
