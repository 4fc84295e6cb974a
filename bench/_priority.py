"""Priority: a backlog of normal-priority `sleep` tasks, every one of them queued by the
dispatcher and the first already done, then a small job at a high level; how long from its
submit until its first task started, with the backlog still mostly queued.

A task's start is the handler's start: the `task.succeeded` event's `at` minus its
`duration_s` (both taken by the worker), as the latency section reads it.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from jobstream.bench._common import job_of, poll_until
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.bench._sql import read_model_query
from jobstream.bench._throughput import MIN_TIMEOUT_S, TIMEOUT_S_PER_TASK
from jobstream.events import TASKS_STREAM, Bus, JobstreamError

# Each backlog task sleeps long enough that the backlog would keep every slot busy for at
# least BACKLOG_S (so it is still mostly queued when the dispatcher has queued all of it and
# the high job comes), and never less than MIN_TASK_S.
BACKLOG_S = 8.0
MIN_TASK_S = 0.005
JOB_TASKS = 10
LEVEL = 5
POLL_S = 0.02


@dataclass(frozen=True, kw_only=True)
class PriorityResult:
    backlog_tasks: int
    task_s: float
    priority: int
    job_tasks: int
    # The high job's submit → its first task started.
    start_ms: float
    # The high job's submit → the last of its tasks started.
    all_started_ms: float
    # Share of the backlog whose handler had started when the high job's first task did.
    backlog_started_percent: float
    cpu: CpuReport


async def _wait_status(
    pool: asyncpg.Pool,
    job_id: str,
    *,
    what: str,
    alive: Callable[[], None] | None,
    timeout_s: float = MIN_TIMEOUT_S,
) -> None:
    query = read_model_query("job_status")

    async def check() -> bool | None:
        return True if await pool.fetchval(query, job_id) == "completed" else None

    await poll_until(check, timeout_s=timeout_s, interval_s=POLL_S, what=what, alive=alive)


async def measure_priority(
    bus: Bus,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    *,
    backlog_tasks: int,
    slots: int,
    queue: str,
    alive: Callable[[], None] | None = None,
) -> PriorityResult:
    """`slots`: tasks the workers run at once (workers x concurrency)."""
    task_s = max(MIN_TASK_S, BACKLOG_S * slots / backlog_tasks)
    timeout_s = max(
        MIN_TIMEOUT_S, backlog_tasks * task_s / slots + backlog_tasks * TIMEOUT_S_PER_TASK
    )
    args = {"seconds": task_s}
    backlog = job_of("sleep", backlog_tasks, queue=queue, name="bench-priority-backlog", args=args)
    meter.start()
    # Nothing else publishes task messages in this section: the backlog is all queued when
    # the tasks stream's last sequence has moved on by its size.
    queued_from = await bus.stream_last_seq(TASKS_STREAM)
    await bus.publish_event(backlog)
    any_succeeded = read_model_query("any_succeeded")

    async def backlog_running() -> bool | None:
        if await bus.stream_last_seq(TASKS_STREAM) < queued_from + backlog_tasks:
            return None
        return True if await pool.fetchval(any_succeeded, backlog.job_id) is not None else None

    await poll_until(
        backlog_running,
        timeout_s=MIN_TIMEOUT_S,
        interval_s=POLL_S,
        what="the priority backlog all queued and its first task succeeded",
        alive=alive,
    )
    high = job_of(
        "sleep", JOB_TASKS, queue=queue, name="bench-priority-high", args=args, priority=LEVEL
    )
    submitted = time.time()
    await bus.publish_event(high)
    await _wait_status(pool, high.job_id, what="the high-priority job completed", alive=alive)
    rows = await pool.fetch(read_model_query("succeeded_tasks"), [high.job_id])
    if len(rows) != JOB_TASKS:
        raise JobstreamError(f"bench: the high-priority job has {len(rows)} succeeded tasks")
    starts = sorted(row["finished_at"].timestamp() - row["duration_s"] for row in rows)
    await _wait_status(
        pool,
        backlog.job_id,
        what="the priority backlog completed",
        alive=alive,
        timeout_s=timeout_s,
    )
    cpu = meter.stop()
    # Counted once every backlog task has its row, so none that started before is missed.
    before = await pool.fetchval(
        read_model_query("started_before"),
        backlog.job_id,
        datetime.fromtimestamp(starts[0], tz=UTC),
    )
    return PriorityResult(
        backlog_tasks=backlog_tasks,
        task_s=round(task_s, 4),
        priority=LEVEL,
        job_tasks=JOB_TASKS,
        start_ms=round(1000 * (starts[0] - submitted), 2),
        all_started_ms=round(1000 * (starts[-1] - submitted), 2),
        backlog_started_percent=round(100 * before / backlog_tasks, 1),
        cpu=cpu,
    )
