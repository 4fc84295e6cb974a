"""One big job against many small ones: the same N no-op tasks (a) as ONE job submitted from an
NDJSON file of distinct args through the real CLI (`jobstream submit --tasks-file F --json`, a
child process), then (b) as jobs of `tasks_per_job` submitted by the bench, as the throughput
section does; on the same processes, in the same run. The big job goes first, so the peak RSS
of each process during it is the big job's own, not what the small jobs left.

For the big job:
- submit_s: the submit process's wall time, from its start to its exit (what a user waits);
- first_task_visible_s: the submit's exit → the answer of the first poll (every 20 ms, from
  the exit) that sees one of the job's tasks `succeeded` in the read model (a value of one
  query's round trip means it was visible already when the submit ended);
- end to end: the submit's start → the first poll that sees the job `completed` in `jobs`.
  The dispatcher's `job.completed` follows the job's last `task.succeeded` in the log and the
  projector applies the log in order, so by then every task row is `succeeded` (checked once
  after). The small jobs are timed as the throughput section does (a count of each unfinished
  job's `succeeded` rows every 20 ms); a count over one job of a million rows every 20 ms
  would load PostgreSQL, and `completed` comes a little later than the last row, so the
  difference, if any, is against the big job;
- peak RSS: the submit process's own high-water mark (`wait4`); the dispatcher's, the
  projector's, the workers', nats-server's and the bench's sampled every 0.1 s from the
  submit's start until the job is `completed`.
"""

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from jobstream.bench._common import poll_until, rate
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.bench._memory import RssReport, RssSampler
from jobstream.bench._sql import read_model_query
from jobstream.bench._stack import JOBSTREAM, log_tail
from jobstream.bench._throughput import (
    MIN_TIMEOUT_S,
    TIMEOUT_S_PER_TASK,
    ThroughputResult,
    measure_throughput,
)
from jobstream.events import Bus, JobstreamError

POLL_S = 0.02
RSS_INTERVAL_S = 0.1
MIB = 1024 * 1024
JOB_NAME = "bench-one-big-job"


@dataclass(frozen=True, kw_only=True)
class OneBigJobResult:
    tasks: int
    file_mib: float
    # The big job: submit process start → exit.
    submit_s: float
    # The submit's exit → one of its tasks `succeeded` in the read model.
    first_task_visible_s: float
    # The submit's start → the job `completed` in the read model.
    elapsed_s: float
    tasks_per_s: float
    # The submit's start → the job's last task.succeeded (the event's `at`).
    log_tasks_per_s: float
    worker_tasks_per_s: float
    projector_lag_s: float
    # The same tasks as many small jobs, measured as the throughput section does.
    small_jobs: ThroughputResult
    # tasks_per_s ÷ small_jobs.tasks_per_s
    ratio: float
    submit_peak_rss_mib: float
    submit_cpu_s: float
    # From the big job's submit until it is `completed`.
    rss: RssReport
    cpu: CpuReport
    cpu_us_per_task: float


def write_tasks_file(path: Path, tasks: int) -> int:
    """`tasks` NDJSON lines of distinct args, written as a stream; returns the file's bytes."""
    with path.open("w", encoding="utf-8") as out:
        for index in range(tasks):
            out.write(f'{{"kind": "noop", "args": {{"i": {index}}}}}\n')
    return path.stat().st_size


@dataclass(frozen=True, kw_only=True)
class _Submitted:
    job_id: str
    started: float
    started_wall: float
    returned: float
    peak_rss_mib: float
    cpu_s: float


def _spawn(command: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    """The child, its stdout (the JSON line) to `submit.out`, its stderr to `submit.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "submit.out").open("wb") as out, (log_dir / "submit.log").open("ab") as log:
        return subprocess.Popen(
            command, stdout=out, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )


def _job_id(log_dir: Path, returncode: int) -> str:
    if returncode != 0:
        raise JobstreamError(
            f"bench: submit exited with {returncode}: {log_tail(log_dir / 'submit.log')}"
        )
    return str(json.loads((log_dir / "submit.out").read_text())["job_id"])


async def _submit_file(
    path: Path, *, nats_url: str, queue: str, log_dir: Path, timeout_s: float
) -> _Submitted:
    """`jobstream submit --tasks-file path --json` as a child; its own peak RSS and CPU come
    from `wait4`, which reaps it."""
    command = [
        *JOBSTREAM,
        "submit",
        "--tasks-file",
        str(path),
        "--json",
        "--queue",
        queue,
        "--name",
        JOB_NAME,
        "--nats-url",
        nats_url,
    ]
    started_wall = time.time()
    started = time.monotonic()
    process = _spawn(command, log_dir)
    waiter = asyncio.ensure_future(asyncio.to_thread(os.wait4, process.pid, 0))
    try:
        _, status, usage = await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
    except TimeoutError:
        process.kill()
        await waiter
        raise JobstreamError(
            f"bench: the big job's submit did not end within {timeout_s:.0f}s"
        ) from None
    returned = time.monotonic()
    process.returncode = os.waitstatus_to_exitcode(status)
    return _Submitted(
        job_id=_job_id(log_dir, process.returncode),
        started=started,
        started_wall=started_wall,
        returned=returned,
        # Linux reports ru_maxrss in KiB.
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


async def _first_visible(
    pool: asyncpg.Pool, job_id: str, *, timeout_s: float, alive: Callable[[], None] | None
) -> float:
    """The monotonic time the first poll that sees one of the job's tasks `succeeded` got its
    answer (when a reader of the read model would know)."""
    query = read_model_query("any_succeeded")

    async def check() -> float | None:
        found = await pool.fetchval(query, job_id)
        return time.monotonic() if found is not None else None

    return await poll_until(
        check,
        timeout_s=timeout_s,
        interval_s=POLL_S,
        what="the big job's first task succeeded in the read model",
        alive=alive,
    )


async def _wait_completed(
    pool: asyncpg.Pool, job_id: str, *, timeout_s: float, alive: Callable[[], None] | None
) -> None:
    query = read_model_query("job_status")

    async def check() -> bool | None:
        status = await pool.fetchval(query, job_id)
        if status in ("failed", "cancelled", "rejected"):
            raise JobstreamError(f"bench: the big job ended {status}")
        return True if status == "completed" else None

    await poll_until(
        check,
        timeout_s=timeout_s,
        interval_s=POLL_S,
        what="the big job completed in the read model",
        alive=alive,
    )


async def measure_one_big_job(
    bus: Bus,
    pool: asyncpg.Pool,
    meter: CpuMeter,
    *,
    tasks: int,
    jobs: int,
    queue: str,
    nats_url: str,
    work_dir: Path,
    alive: Callable[[], None] | None = None,
) -> OneBigJobResult:
    path = work_dir / "one-big-job.ndjson"
    file_bytes = await asyncio.to_thread(write_tasks_file, path, tasks)
    timeout_s = max(MIN_TIMEOUT_S, tasks * TIMEOUT_S_PER_TASK)
    rss = RssSampler(
        {name: pid for name, pid in meter.pids.items() if name != "postgres"},
        interval_s=RSS_INTERVAL_S,
    )
    rss.start()
    sampling = asyncio.create_task(rss.sample_until_cancelled())
    try:
        meter.start()
        submitted = await _submit_file(
            path, nats_url=nats_url, queue=queue, log_dir=work_dir / "logs", timeout_s=timeout_s
        )
        first_visible = await _first_visible(
            pool, submitted.job_id, timeout_s=timeout_s, alive=alive
        )
        await _wait_completed(pool, submitted.job_id, timeout_s=timeout_s, alive=alive)
        elapsed_s = time.monotonic() - submitted.started
        visible_wall = time.time()
        cpu = meter.stop(exited={"submit": submitted.cpu_s})
    finally:
        sampling.cancel()
        await asyncio.to_thread(path.unlink, missing_ok=True)
    memory = rss.stop()
    succeeded = await pool.fetch(read_model_query("succeeded_by_job"), [submitted.job_id])
    if sum(row["n"] for row in succeeded) != tasks:
        raise JobstreamError("bench: the big job is completed but not every task succeeded")
    span = await pool.fetchrow(read_model_query("finish_span"), [submitted.job_id])
    first_at, last_at = span["first_at"].timestamp(), span["last_at"].timestamp()
    small = await measure_throughput(
        bus, pool, meter, tasks=tasks, jobs=jobs, queue=queue, alive=alive
    )
    tasks_per_s = rate(tasks, elapsed_s)
    return OneBigJobResult(
        tasks=tasks,
        file_mib=round(file_bytes / MIB, 1),
        submit_s=round(submitted.returned - submitted.started, 3),
        first_task_visible_s=round(first_visible - submitted.returned, 6),
        elapsed_s=round(elapsed_s, 3),
        tasks_per_s=tasks_per_s,
        log_tasks_per_s=rate(tasks, last_at - submitted.started_wall),
        worker_tasks_per_s=rate(tasks, last_at - first_at),
        projector_lag_s=round(max(0.0, visible_wall - last_at), 3),
        small_jobs=small,
        ratio=round(tasks_per_s / small.tasks_per_s, 3) if small.tasks_per_s else 0.0,
        submit_peak_rss_mib=submitted.peak_rss_mib,
        submit_cpu_s=round(submitted.cpu_s, 2),
        rss=memory,
        cpu=cpu,
        cpu_us_per_task=round(sum(cpu.per_process.values()) / 100 * elapsed_s / tasks * 1e6, 1),
    )
