"""Submitting a job of any size: its tasks read from an NDJSON file or stdin as a stream, sent
as `job.tasks_added` batches sized from the server's own max_payload, then sealed; resumed,
not repeated, under an idempotency key.

Every event of a submission is fenced on the one before it on the job's subject, so the log
holds each batch once and in order whoever writes it (a retried submit, a second submitter
with the same key, the dispatcher aborting a stale submission): the loser of a fence stops.
"""

import contextlib
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
import nats.js.errors

from jobstream.cli._idempotency import idempotency_bucket_key
from jobstream.cli._runtime import SourceFailed, UsageError
from jobstream.cli._settings import STDIN
from jobstream.events import (
    IDEMPOTENCY_BUCKET,
    MAX_REASON_LENGTH,
    Bus,
    ConflictError,
    Event,
    JobRejected,
    JobSealed,
    JobstreamError,
    JobSubmitted,
    JobTasksAdded,
    TaskSpec,
    encode,
    job_subject,
    quote,
    with_retry,
)

# A batch's tasks take at most this share of the server's max_payload: the rest is the
# event's own fields and the headers.
BATCH_SHARE = 0.5


class _TaskLine(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


_task_line_decoder = msgspec.json.Decoder(_TaskLine)


class TaskLineError(UsageError, SourceFailed):
    """A line of a tasks file that is not a task."""


@dataclass(frozen=True)
class FileSummary:
    """What a first pass over a tasks file found: every line is a task of a known kind."""

    tasks: int
    # Encoded bytes of its tasks (repeated lines merged), and of the widest one.
    spec_bytes: int
    widest: int


def open_tasks(path: Path) -> IO[bytes]:
    if str(path) == STDIN:
        return sys.stdin.buffer
    try:
        return path.open("rb")
    except OSError as exc:
        raise JobstreamError(f"cannot read tasks file {path}: {exc.strerror or exc}") from None


def read_specs(
    lines: Iterable[bytes], *, where: str, kinds: Callable[[str], bool]
) -> Iterator[TaskSpec]:
    """The tasks of NDJSON `lines`, one by one, consecutive identical lines merged into one
    spec with a `count`; `TaskLineError` naming the line for one that is not a task."""
    previous: bytes | None = None
    spec: TaskSpec | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line == previous and spec is not None:
            spec = msgspec.structs.replace(spec, count=spec.count + 1)
            continue
        if spec is not None:
            yield spec
        spec, previous = _spec_of(line, number, where, kinds), line
    if spec is not None:
        yield spec


def _spec_of(line: bytes, number: int, where: str, kinds: Callable[[str], bool]) -> TaskSpec:
    try:
        task = _task_line_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TaskLineError(
            f'{where}:{number}: expected {{"kind": ..., "args": {{...}}}}: {exc}'
        ) from None
    if not kinds(task.kind):
        raise TaskLineError(f"{where}:{number}: unknown task kind {quote(task.kind)}")
    return TaskSpec(kind=task.kind, args=task.args)


def summarize(path: Path, *, kinds: Callable[[str], bool]) -> FileSummary:
    """Check every line of a tasks file before anything is published (memory stays flat)."""
    tasks = spec_bytes = widest = 0
    with open_tasks(path) as lines:
        for spec in read_specs(lines, where=str(path), kinds=kinds):
            size = len(encode(spec))
            tasks += spec.count
            spec_bytes += size
            widest = max(widest, size)
    if tasks == 0:
        raise JobstreamError(f"tasks file {path} holds no tasks")
    return FileSummary(tasks=tasks, spec_bytes=spec_bytes, widest=widest)


def batch_bytes(max_payload: int) -> int:
    return int(max_payload * BATCH_SHARE)


def check_task_fits(task_bytes: int, max_payload: int) -> None:
    """`JobstreamError` for a task too big for any batch."""
    budget = batch_bytes(max_payload)
    if task_bytes > budget:
        raise JobstreamError(
            f"a task of {task_bytes:,} bytes is over the {budget:,} bytes a batch may hold"
            f" (half the server's max_payload of {max_payload:,})"
        )


async def claim_job_id(bus: Bus, key: str, job_id: str) -> str:
    """The job id that `key` stands for: `job_id`, if this submit is the first with the key
    (an atomic create in the server), else the first submit's."""
    kv = await bus.js.key_value(IDEMPOTENCY_BUCKET)
    bucket_key = idempotency_bucket_key(key)
    try:
        await with_retry(lambda: kv.create(bucket_key, job_id.encode()), what="claim the key")
        return job_id
    except nats.js.errors.KeyWrongLastSequenceError:
        entry = await with_retry(lambda: kv.get(bucket_key), what="read the key")
        return (entry.value or b"").decode()


@dataclass
class Position:
    """Where a streamed submission stands on its job's subject."""

    last_seq: int = 0
    batches: int = 0
    tasks: int = 0


class AlreadySubmitted(JobstreamError):
    """The job of this idempotency key is whole (or ended) already."""


def resume_point(last: tuple[int, Event | None] | None, job_id: str) -> Position | None:
    """Where to go on from, given the last message on the job's subject: None for a fresh
    start; `AlreadySubmitted` for a job that is whole."""
    if last is None:
        return None
    seq, event = last
    match event:
        case JobSubmitted(sealed=False):
            return Position(last_seq=seq, batches=0, tasks=event.task_count)
        case JobTasksAdded():
            return Position(
                last_seq=seq, batches=event.batch + 1, tasks=event.first_index + event.task_count
            )
        case JobRejected():
            raise JobstreamError(f"job {job_id} was rejected: {event.reason}")
        case None:
            raise JobstreamError(f"job {job_id}: its subject holds a message that is not ours")
        case _:
            raise AlreadySubmitted(f"job {job_id} was already submitted with this key")


async def skip_tasks(
    specs: Iterable[TaskSpec] | AsyncIterable[TaskSpec], count: int
) -> AsyncIterator[TaskSpec]:
    """`specs` without their first `count` tasks (a spec straddling the cut is shortened)."""
    async for spec in _as_async(specs):
        if count >= spec.count:
            count -= spec.count
            continue
        yield msgspec.structs.replace(spec, count=spec.count - count) if count else spec
        count = 0


async def _as_async(
    specs: Iterable[TaskSpec] | AsyncIterable[TaskSpec],
) -> AsyncIterator[TaskSpec]:
    """Tasks read from a file and tasks found as they are sent (a crawl's discovery) alike."""
    if isinstance(specs, AsyncIterable):
        async for spec in specs:
            yield spec
    else:
        for spec in specs:
            yield spec


async def stream_job(
    bus: Bus,
    header: JobSubmitted,
    specs: Iterable[TaskSpec] | AsyncIterable[TaskSpec],
    *,
    start: Position | None,
    on_sent: Callable[[int], None],
) -> int:
    """Publish a streamed job: its header (unless `start` says it is there), its tasks in
    batches of at most `batch_bytes(max_payload)`, then the seal. The number of tasks."""
    budget = batch_bytes(bus.nc.max_payload)
    position = start or Position(last_seq=await _fenced(bus, header, 0))
    try:
        await _send_batches(
            bus, header.job_id, skip_tasks(specs, position.tasks), position, budget, on_sent
        )
    except SourceFailed as exc:  # a source read once (stdin, a site) fails only now
        await _abort(bus, header.job_id, position, str(exc))
        raise
    seal = JobSealed(job_id=header.job_id, batches=position.batches, task_count=position.tasks)
    await _fenced(bus, seal, position.last_seq)
    return position.tasks


async def _send_batches(
    bus: Bus,
    job_id: str,
    specs: AsyncIterable[TaskSpec],
    position: Position,
    budget: int,
    on_sent: Callable[[int], None],
) -> None:
    batch: list[TaskSpec] = []
    size = 0
    async for spec in specs:
        spec_size = len(encode(spec)) + 1
        check_task_fits(spec_size, bus.nc.max_payload)
        if batch and size + spec_size > budget:
            on_sent(await _send_batch(bus, job_id, batch, position))
            batch, size = [], 0
        batch.append(spec)
        size += spec_size
    if batch:
        on_sent(await _send_batch(bus, job_id, batch, position))


async def _send_batch(bus: Bus, job_id: str, specs: list[TaskSpec], position: Position) -> int:
    """Publish one batch after the last; the number of its tasks."""
    added = JobTasksAdded(
        job_id=job_id, batch=position.batches, first_index=position.tasks, tasks=specs
    )
    position.last_seq = await _fenced(bus, added, position.last_seq)
    position.batches += 1
    position.tasks += added.task_count
    return added.task_count


async def _fenced(bus: Bus, event: JobSubmitted | JobTasksAdded | JobSealed, after: int) -> int:
    """Publish right after `after` on the job's subject. Losing the fence means another
    submit with the same idempotency key is ahead (`AlreadySubmitted`: it goes on), or the
    dispatcher aborted the job."""
    try:
        return await bus.publish_event(event, expected_last_subject_seq=after)
    except ConflictError:
        last = await last_on_job(bus, event.job_id)
    if last is not None and isinstance(last[1], JobRejected):
        raise JobstreamError(f"job {event.job_id} was rejected: {last[1].reason}")
    raise AlreadySubmitted(f"job {event.job_id} is being submitted by another submit")


async def _abort(bus: Bus, job_id: str, position: Position, reason: str) -> None:
    """End a half-submitted job whose input turned out bad: nothing of it ever runs."""
    rejected = JobRejected(
        job_id=job_id, reason=reason[:MAX_REASON_LENGTH], rejected_seq=max(1, position.last_seq)
    )
    with contextlib.suppress(ConflictError):  # someone else moved it on: theirs stands
        await bus.publish_event(rejected, expected_last_subject_seq=position.last_seq)


async def last_on_job(bus: Bus, job_id: str) -> tuple[int, Event | None] | None:
    return await bus.last_on_subject(job_subject(job_id))
