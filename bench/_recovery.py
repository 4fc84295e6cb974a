"""Recovery: SIGKILL a worker while it holds tasks; how long until each of its tasks is
started again and finished by another worker, against the lease (the consumer's ack wait)."""

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from jobstream.bench._common import job_of, poll_until
from jobstream.bench._sql import read_model_query
from jobstream.bench._stack import ProductProcesses
from jobstream.events import Bus

POLL_S = 0.02
RECOVERY_TIMEOUT_S = 60.0
HOLD_TIMEOUT_S = 30.0


@dataclass(frozen=True, kw_only=True)
class RecoveryResult:
    lease_s: float
    task_s: float
    tasks_held: int
    # Tasks the killed worker had finished before the kill landed: not counted.
    finished_before_kill: int
    # Kill → the last of its tasks started again elsewhere (worst case).
    restart_s: float
    # Kill → the last of its tasks finished elsewhere (the restart plus one run of the task).
    recovery_s: float


async def _hold_tasks(pool: asyncpg.Pool, processes: ProductProcesses, job_id: str) -> int:
    """Wait until every task of the job has started (none still `queued` in the read model)
    and a worker is running some of them; return the index of the worker holding the most.

    Any worker will do: nats-py's fetch can hand one worker more than its share, and under
    load a worker's quick tasks may be seen only once they have ended."""

    async def holder() -> int | None:
        rows = await pool.fetch(read_model_query("task_states"), job_id)
        if not rows or any(row["state"] == "queued" for row in rows):
            return None
        held = {worker_id: 0 for worker_id in processes.worker_ids}
        for row in rows:
            if row["state"] == "running" and row["worker_id"] in held:
                held[row["worker_id"]] += row["n"]
        worker_id, count = max(held.items(), key=lambda item: item[1])
        return processes.worker_ids.index(worker_id) if count else None

    return await poll_until(
        holder,
        timeout_s=HOLD_TIMEOUT_S,
        interval_s=POLL_S,
        what="the worker to kill holding recovery tasks",
        alive=processes.check_alive,
    )


async def measure_recovery(
    bus: Bus,
    pool: asyncpg.Pool,
    processes: ProductProcesses,
    *,
    concurrency: int,
    task_s: float,
    queue: str,
    alive: Callable[[], None] | None = None,
) -> RecoveryResult:
    total = concurrency * len(processes.workers)
    job = job_of("sleep", total, queue=queue, name="bench-recovery", args={"seconds": task_s})
    await bus.publish_event(job)
    index = await _hold_tasks(pool, processes, job.job_id)
    victim, victim_id = processes.workers[index], processes.worker_ids[index]
    held = [
        row["task_id"]
        for row in await pool.fetch(read_model_query("running_tasks_of"), job.job_id, victim_id)
    ]
    killed_at = time.time()
    victim.kill()

    async def all_ended() -> list[asyncpg.Record] | None:
        rows: list[asyncpg.Record] = await pool.fetch(read_model_query("ended_tasks"), held)
        return rows if len(rows) >= len(held) else None

    ended = await poll_until(
        all_ended,
        timeout_s=processes.lease_s * 3 + task_s + RECOVERY_TIMEOUT_S,
        interval_s=POLL_S,
        what="the killed worker's tasks finished elsewhere",
        alive=alive,
    )
    elsewhere = [
        row for row in ended if row["worker_id"] != victim_id and row["state"] == "succeeded"
    ]
    finished = [row["finished_at"].timestamp() - killed_at for row in elsewhere]
    restarted = [
        row["finished_at"].timestamp() - row["duration_s"] - killed_at for row in elsewhere
    ]
    return RecoveryResult(
        lease_s=processes.lease_s,
        task_s=task_s,
        tasks_held=len(held),
        finished_before_kill=len(ended) - len(elsewhere),
        restart_s=round(max(restarted, default=0.0), 3),
        recovery_s=round(max(finished, default=0.0), 3),
    )
