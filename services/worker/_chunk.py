"""Chunked mode: one task message carries many tasks, run one after another; one
`task.chunk_finished` event carries their results. A task that fails in a chunk goes on
alone, as an ordinary task message with the attempts it has left."""

import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from jobstream.events import ChunkFailure, ChunkItem, ChunkResult, TaskMessage
from jobstream.services.worker._handlers import TaskContext, failure_text, is_permanent

CallHandler = Callable[[TaskMessage, TaskContext], Awaitable[Any]]


def item_message(
    chunk: TaskMessage,
    item: ChunkItem,
    *,
    attempts_before: int = 0,
    retry_at: datetime | None = None,
) -> TaskMessage:
    """The task message `item` would have had on its own."""
    return TaskMessage(
        job_id=chunk.job_id,
        task_id=item.task_id,
        kind=item.kind,
        args=item.args,
        max_attempts=max(1, item.max_attempts - attempts_before),
        timeout_s=chunk.timeout_s,
        attempts_before=attempts_before,
        retry_at=retry_at,
        level=chunk.level,
    )


async def run_items(
    chunk: TaskMessage, attempt: int, worker_id: str, call: CallHandler
) -> tuple[list[ChunkResult], list[ChunkFailure]]:
    """Run each task of the chunk in turn; a failure does not stop the others."""
    results: list[ChunkResult] = []
    failures: list[ChunkFailure] = []
    for item in chunk.items:
        ctx = TaskContext(
            job_id=chunk.job_id,
            task_id=item.task_id,
            attempt=attempt,
            max_attempts=item.max_attempts,
            worker_id=worker_id,
        )
        started = time.monotonic()
        try:
            result = await call(item_message(chunk, item), ctx)
        except Exception as exc:
            failures.append(
                ChunkFailure(
                    task_id=item.task_id,
                    kind=item.kind,
                    args=item.args,
                    error=failure_text(exc),
                    duration_s=time.monotonic() - started,
                    retryable=not is_permanent(exc),
                )
            )
            continue
        results.append(
            ChunkResult(
                task_id=item.task_id,
                kind=item.kind,
                args=item.args,
                result=result,
                duration_s=time.monotonic() - started,
            )
        )
    return results, failures


def failed_in_chunk(chunk: TaskMessage, error: str) -> list[ChunkFailure]:
    """Every task of the chunk, failed with `error` (a chunk whose leases all ran out)."""
    return [
        ChunkFailure(task_id=item.task_id, kind=item.kind, args=item.args, error=error)
        for item in chunk.items
    ]


def split(
    chunk: TaskMessage, failures: list[ChunkFailure], attempt: int, *, retry_at: datetime
) -> tuple[list[TaskMessage], list[ChunkFailure]]:
    """The failed tasks that go on alone, not before `retry_at` (attempt numbers continuing
    after `attempt`), and the failures that end here, dead-lettered: no attempt left, or a
    permanent error."""
    failed = {failure.task_id: failure for failure in failures}
    again: list[TaskMessage] = []
    ended: list[ChunkFailure] = []
    for item in chunk.items:
        failure = failed.get(item.task_id)
        if failure is None:
            continue
        if failure.retryable and item.max_attempts > attempt:
            again.append(item_message(chunk, item, attempts_before=attempt, retry_at=retry_at))
        else:
            ended.append(failure)
    return again, ended
