"""Replay: rebuild the Postgres read models from the whole log (`jobstream replay`'s
`replay_postgres`, run in the bench's process, into a fresh schema that is then dropped,
not swapped in) → events/s.

The log must hold at least `min_events`: what the run's sections wrote, topped up with
synthetic but valid history (jobs of no-op tasks, each task succeeded once, each job
completed), published only after jobstream's processes have stopped, so nothing acts on it.
"""

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import asyncpg
from nats.js.api import PubAck

from jobstream.bench._common import rate
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.events import (
    Bus,
    Event,
    JobCompleted,
    JobSubmitted,
    TaskSpec,
    TaskSucceeded,
    encode,
    new_id,
    subject_for,
    task_id_for,
)
from jobstream.projections import Connections, quote_ident, replay_postgres

TASKS_PER_JOB = 1_000
PUBLISH_WINDOW = 1_000
FILL_DEADLINE_S = 300.0


@dataclass(frozen=True, kw_only=True)
class ReplayResult:
    processes: int
    events: int
    synthetic_events: int
    seconds: float
    events_per_s: float
    cpu: CpuReport


def _synthetic_job() -> list[Event]:
    """One job's history, as the live system writes it: submitted, each task, completed."""
    job_id = new_id()
    events: list[Event] = [
        JobSubmitted(
            job_id=job_id,
            name="bench-replay",
            queue="bench",
            tasks=[TaskSpec(kind="noop", count=TASKS_PER_JOB)],
            submitted_by="bench",
        )
    ]
    events += [
        TaskSucceeded(
            job_id=job_id,
            task_id=task_id_for(job_id, index),
            kind="noop",
            worker_id="bench-replay",
            attempt=1,
            duration_s=0.0001,
        )
        for index in range(TASKS_PER_JOB)
    ]
    events.append(JobCompleted(job_id=job_id, succeeded=TASKS_PER_JOB, duration_s=1.0))
    return events


async def fill_log(bus: Bus, missing: int) -> int:
    """Publish whole synthetic jobs, pipelined, until `missing` events are added."""
    window: deque[asyncio.Future[PubAck]] = deque()
    added = 0
    async with asyncio.timeout(FILL_DEADLINE_S):
        while added < missing:
            for event in _synthetic_job():
                if len(window) >= PUBLISH_WINDOW:
                    await window.popleft()
                window.append(await bus.js.publish_async(subject_for(event), encode(event)))
                added += 1
        while window:
            await window.popleft()
    return added


async def measure_replay(
    bus: Bus,
    database_url: str,
    meter: CpuMeter,
    *,
    min_events: int,
    partitions: int = 1,
    connections: Connections | None = None,
) -> ReplayResult:
    """`partitions` > 1: the replay into that many partitions, folded in as many processes
    (their CPU shows as the machine's "others": they are not known beforehand)."""
    missing = min_events - await bus.stream_last_seq()
    synthetic = await fill_log(bus, missing) if missing > 0 else 0
    pool: asyncpg.Pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    try:
        meter.start()
        started = time.monotonic()
        report = await replay_postgres(
            bus,
            pool,
            schema="jobstream_bench_replay",
            swap=False,
            partitions=partitions,
            connections=connections,
        )
        seconds = time.monotonic() - started
        cpu = meter.stop()
        await pool.execute(f"DROP SCHEMA IF EXISTS {quote_ident(report.schema)} CASCADE")
    finally:
        await pool.close()
    return ReplayResult(
        processes=partitions,
        events=report.events,
        synthetic_events=synthetic,
        seconds=round(seconds, 3),
        events_per_s=rate(report.events, seconds),
        cpu=cpu,
    )
