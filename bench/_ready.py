"""Before a measurement: every jobstream process up, and the whole path warmed by one job."""

import asyncpg

from jobstream.bench._common import job_of, poll_until
from jobstream.bench._sql import read_model_query
from jobstream.bench._stack import ProductProcesses
from jobstream.events import Bus

READY_TIMEOUT_S = 60.0
POLL_S = 0.05


async def wait_until_ready(
    bus: Bus, pool: asyncpg.Pool, processes: ProductProcesses, *, queue: str, tasks: int
) -> None:
    """The projector has made the tables and seen every worker start; then one warm-up job
    runs end to end (dispatcher, workers, projector), so no start-up cost is measured."""

    async def workers_active() -> bool | None:
        try:
            active = await pool.fetchval(read_model_query("active_workers"), processes.worker_ids)
        except asyncpg.UndefinedTableError:
            return None
        return True if active == len(processes.worker_ids) else None

    await poll_until(
        workers_active,
        timeout_s=READY_TIMEOUT_S,
        interval_s=POLL_S,
        what="the workers' start in the read model",
        alive=processes.check_alive,
    )
    job = job_of("noop", tasks, queue=queue, name="bench-warm-up")
    await bus.publish_event(job)

    async def warm_job_done() -> bool | None:
        rows = await pool.fetch(read_model_query("succeeded_by_job"), [job.job_id])
        return True if rows and rows[0]["n"] == tasks else None

    await poll_until(
        warm_job_done,
        timeout_s=READY_TIMEOUT_S,
        interval_s=POLL_S,
        what="the warm-up job",
        alive=processes.check_alive,
    )
