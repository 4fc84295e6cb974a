"""`jobstream workers prune`: a `worker.forgotten` for each worker, fenced on the worker's
own subject so that a worker that started again meanwhile is not forgotten."""

from jobstream.cli._runtime import bus_session
from jobstream.events import (
    ConflictError,
    NatsSecurity,
    WorkerForgotten,
    WorkerStarted,
    worker_subject,
)


async def prune_workers(
    nats_urls: list[str], security: NatsSecurity, worker_ids: list[str]
) -> list[str]:
    """Forget `worker_ids` unless their last event says they run; return those forgotten."""
    forgotten: list[str] = []
    async with bus_session(nats_urls, name="jobstream-prune", security=security) as bus:
        for worker_id in worker_ids:
            last = await bus.last_on_subject(worker_subject(worker_id))
            if last is not None and isinstance(last[1], WorkerStarted):
                continue
            event = WorkerForgotten(worker_id=worker_id, reason="pruned")
            try:
                await bus.publish_event(event, expected_last_subject_seq=last[0] if last else 0)
            except ConflictError:  # an event of the worker's came meanwhile
                continue
            forgotten.append(worker_id)
    return forgotten
