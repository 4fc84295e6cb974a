"""`jobstream dlq`: list dead-lettered tasks and give them another round of attempts."""

from dataclasses import dataclass

import asyncpg

from jobstream.events import (
    Bus,
    ConflictError,
    JobstreamError,
    JobSubmitted,
    TaskDeadLettered,
    TaskRequeued,
    event_type,
    job_subject,
    task_event_subject,
)
from jobstream.services.api import dead_letters

MAX_RETRY_BATCH = 100_000


@dataclass
class RetryOutcome:
    requeued: list[str]
    skipped: dict[str, str]


async def list_dead_letters(
    conn: asyncpg.Connection, *, job_id: str | None, limit: int
) -> list[dict[str, object]]:
    return await dead_letters(conn, job_id=job_id, limit=limit)


async def retry_dead_letters(
    bus: Bus, conn: asyncpg.Connection, *, target: str | None, retry_all: bool
) -> RetryOutcome:
    """Requeue the dead-lettered tasks named by `target` (a job id or a task id) or all.

    The read model says which tasks to look at; the log decides: each `task.requeued` is
    fenced on the task's `task.dead_lettered`, so a task is requeued once however often the
    command runs, and never after it ended some other way.
    """
    if (target is None) == (not retry_all):
        raise JobstreamError("name a job id or a task id, or give --all")
    rows = await dead_letters(conn, job_id=None, limit=MAX_RETRY_BATCH)
    chosen = [
        (str(row["job_id"]), str(row["task_id"]))
        for row in rows
        if retry_all or target in (row["job_id"], row["task_id"])
    ]
    if not chosen:
        raise JobstreamError(f"no dead-lettered task matches {target or 'anything'}")
    outcome = RetryOutcome(requeued=[], skipped={})
    jobs: dict[str, JobSubmitted | None] = {}
    for job_id, task_id in chosen:
        if job_id not in jobs:
            jobs[job_id] = await _submitted(bus, job_id)
        reason = await _requeue(bus, jobs[job_id], job_id, task_id)
        if reason is None:
            outcome.requeued.append(task_id)
        else:
            outcome.skipped[task_id] = reason
    return outcome


async def _submitted(bus: Bus, job_id: str) -> JobSubmitted | None:
    first = await bus.first_on_subject(job_subject(job_id))
    if first is None or not isinstance(first[1], JobSubmitted):
        return None
    return first[1]


async def _requeue(bus: Bus, job: JobSubmitted | None, job_id: str, task_id: str) -> str | None:
    """Requeue one task; return why not, or None when it was requeued."""
    if job is None:
        return "its job.submitted is not in the log"
    last = await bus.last_on_subject(task_event_subject(job_id, task_id))
    if last is None:
        return "no events in the log"
    seq, dead = last
    if not isinstance(dead, TaskDeadLettered):
        last_type = event_type(dead) if dead is not None else "not a jobstream event"
        return f"not dead-lettered in the log (last event: {last_type})"
    requeued = TaskRequeued(
        job_id=job_id,
        task_id=task_id,
        kind=dead.kind,
        args=dead.args,
        queue=job.queue,
        max_attempts=job.max_attempts,
        timeout_s=job.timeout_s,
        attempts_before=dead.attempts,
        requeued_by="cli",
        priority=job.priority,
    )
    try:
        await bus.publish_event(requeued, expected_last_subject_seq=seq)
    except ConflictError:
        return "it changed while requeueing"
    return None
