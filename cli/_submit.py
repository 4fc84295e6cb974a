"""Building a job from the command line's words, checked before anything is published."""

import functools
import json
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from events import (
    LEVELS_HIGH_FIRST,
    MAX_MSG_SIZE,
    TASKS_STREAM,
    Bus,
    JobstreamError,
    JobSubmitted,
    TaskSpec,
    encode,
    new_id,
    with_retry,
    worker_consumer_name,
)
from services.worker import HandlerRegistry

WORKER_LOOKUP_BUDGET_S = 5.0


class _TaskLine(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


_task_line_decoder = msgspec.json.Decoder(_TaskLine)


def parse_args_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise JobstreamError(f"--args is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise JobstreamError(f"--args must be a JSON object, got {type(value).__name__}: {text!r}")
    return value


def read_tasks_file(path: Path) -> list[TaskSpec]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise JobstreamError(f"cannot read tasks file {path}: {exc.strerror or exc}") from None
    specs: list[TaskSpec] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            task = _task_line_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise JobstreamError(
                f'{path}:{number}: expected {{"kind": ..., "args": {{...}}}}: {exc}'
            ) from None
        specs.append(TaskSpec(kind=task.kind, args=task.args))
    if not specs:
        raise JobstreamError(f"tasks file {path} holds no tasks")
    return specs


def check_kinds(specs: list[TaskSpec], registry: HandlerRegistry) -> None:
    for spec in specs:
        if spec.kind not in registry:
            raise JobstreamError(
                f"unknown task kind {spec.kind!r}; known kinds: {', '.join(registry.kinds())} "
                "(add your own with --handler name=module:function)"
            )


def with_kind_defaults(specs: list[TaskSpec], registry: HandlerRegistry) -> list[TaskSpec]:
    """Give each task its kind's own attempt limit, where the kind has one."""
    return [
        msgspec.structs.replace(spec, max_attempts=registry.default_max_attempts(spec.kind))
        for spec in specs
    ]


def build_job(
    specs: list[TaskSpec],
    *,
    name: str,
    queue: str,
    max_attempts: int,
    timeout_s: float | None,
    priority: int = 0,
    labels: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    submitted_by: str = "cli",
    chunk_size: int | None = None,
) -> JobSubmitted:
    job = JobSubmitted(
        job_id=new_id(),
        name=name,
        queue=queue,
        priority=priority,
        tasks=specs,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        idempotency_key=idempotency_key,
        submitted_by=submitted_by,
        labels=labels or {},
        chunk_size=chunk_size if chunk_size and chunk_size > 1 else None,
    )
    if job.chunk_size:
        _check_chunk_size(specs, job.chunk_size)
    size = len(encode(job))
    if size > MAX_MSG_SIZE:
        raise JobstreamError(
            f"job is {size} bytes, over the {MAX_MSG_SIZE}-byte message limit: "
            "split it into several jobs or use --count for repeated tasks"
        )
    return job


async def submit(bus: Bus, job: JobSubmitted) -> int:
    return await bus.publish_event(job)


async def no_worker_seen(bus: Bus, queue: str) -> bool:
    """True when no worker is on `queue` now: its consumers are missing (no worker ever ran
    there), or have neither a pull request waiting (an idle worker always has one) nor a task
    being worked on, at any level."""
    for level in LEVELS_HIGH_FIRST:
        try:
            info = await with_retry(
                functools.partial(
                    bus.js.consumer_info, TASKS_STREAM, worker_consumer_name(queue, level)
                ),
                what=f"look up the {level} consumer of queue {queue}",
                budget_s=WORKER_LOOKUP_BUDGET_S,
            )
        except nats.js.errors.NotFoundError:
            continue
        except nats.errors.Error:
            # The job is already submitted: a failed look-up is no reason to report a failure.
            return False
        if info.num_waiting or info.num_ack_pending:
            return False
    return True


def no_worker_warning(queue: str) -> str:
    return (
        f"warning: no worker is running on queue {queue!r}; the job waits until one does "
        f"(jobstream worker --queue {queue})"
    )


# Bytes per task in a chunk message besides its args (task id, kind, field names).
_CHUNK_ITEM_OVERHEAD = 120


def _check_chunk_size(specs: list[TaskSpec], chunk_size: int) -> None:
    """A chunk message, and the event with its results, must fit in one NATS message: keep
    the message to half of it, leaving the other half for results."""
    widest = max(len(encode(spec.args)) + len(spec.kind) for spec in specs) + _CHUNK_ITEM_OVERHEAD
    if widest * chunk_size > MAX_MSG_SIZE // 2:
        fitting = max(1, (MAX_MSG_SIZE // 2) // widest)
        raise JobstreamError(
            f"--chunk-size {chunk_size}: a chunk of these tasks would be about "
            f"{widest * chunk_size} bytes; at most {fitting} fit in half a message"
        )
