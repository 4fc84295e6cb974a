"""Building a job from the command line's words, checked before anything is published."""

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from jobstream.cli._idempotency import check_idempotency_key
from jobstream.cli._runtime import UsageError
from jobstream.cli._settings import STDIN
from jobstream.cli._stream import (
    AlreadySubmitted,
    FileSummary,
    Position,
    batch_bytes,
    check_task_fits,
    claim_job_id,
    last_on_job,
    open_tasks,
    read_specs,
    resume_point,
    stream_job,
    summarize,
)
from jobstream.events import (
    LEVELS_HIGH_FIRST,
    TASKS_STREAM,
    Bus,
    ConflictError,
    JobstreamError,
    JobSubmitted,
    TaskSpec,
    encode,
    ensure_buckets,
    ensure_streams,
    new_id,
    with_retry,
    worker_consumer_name,
)
from jobstream.services.worker import HandlerRegistry

DEFAULT_MAX_ATTEMPTS = 3

WORKER_LOOKUP_BUDGET_S = 5.0


def parse_args_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise JobstreamError(f"--args is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise JobstreamError(f"--args must be a JSON object, got {type(value).__name__}: {text!r}")
    return value


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


def check_chunk_size(widest_spec: int, chunk_size: int, max_payload: int) -> None:
    """A chunk message, and the event with its results, must fit in one NATS message: keep
    the message to half the server's max_payload, leaving the other half for results."""
    widest = widest_spec + _CHUNK_ITEM_OVERHEAD
    if widest * chunk_size > max_payload // 2:
        fitting = max(1, (max_payload // 2) // widest)
        raise JobstreamError(
            f"--chunk-size {chunk_size}: a chunk of these tasks would be about "
            f"{widest * chunk_size:,} bytes; at most {fitting} fit in half of the server's "
            f"max_payload ({max_payload:,} bytes)"
        )


@dataclass(frozen=True)
class SubmitPlan:
    """A submit checked before connecting: the job's settings, and its tasks given on the
    command line, or the tasks file (checked whole, unless it is stdin)."""

    settings: JobSubmitted
    specs: list[TaskSpec] | None
    tasks_file: Path | None
    summary: FileSummary | None
    registry: HandlerRegistry
    kind_defaults: bool
    # Tasks found while the job is sent (a crawl's discovery), when neither of the above.
    source: AsyncIterator[TaskSpec] | None = None

    @property
    def queue(self) -> str:
        return self.settings.queue


@dataclass(frozen=True)
class SubmitOutcome:
    job_id: str
    duplicate: bool
    no_worker: bool
    # Tasks sent from a `source` (None for the other plans, and for a duplicate).
    tasks: int | None = None


def plan_submission(
    registry: HandlerRegistry,
    *,
    kind: str | None,
    args: str,
    count: int,
    tasks_file: Path | None,
    name: str,
    queue: str,
    max_attempts: int | None,
    timeout_s: float | None,
    chunk_size: int,
    idempotency_key: str | None,
    priority: int = 0,
    labels: dict[str, str] | None = None,
) -> SubmitPlan:
    """Everything that can be checked before connecting; `JobstreamError` says what is wrong
    (a bad line of a tasks file with its number)."""
    specs: list[TaskSpec] | None = None
    summary: FileSummary | None = None
    if tasks_file is None:
        assert kind is not None
        specs = [TaskSpec(kind=kind, args=parse_args_json(args), count=count)]
        check_kinds(specs, registry)
        if max_attempts is None:
            specs = with_kind_defaults(specs, registry)
    elif str(tasks_file) != STDIN:
        summary = summarize(tasks_file, kinds=registry.__contains__)
    settings = build_job(
        [],
        name=name,
        queue=queue,
        max_attempts=max_attempts or DEFAULT_MAX_ATTEMPTS,
        timeout_s=timeout_s,
        chunk_size=chunk_size,
        priority=priority,
        labels=labels,
        idempotency_key=check_idempotency_key(idempotency_key) if idempotency_key else None,
    )
    return SubmitPlan(
        settings=settings,
        specs=specs,
        tasks_file=tasks_file,
        summary=summary,
        registry=registry,
        kind_defaults=max_attempts is None,
    )


async def submit_planned(bus: Bus, plan: SubmitPlan, *, show_progress: bool) -> SubmitOutcome:
    """Publish the job: whole in one `job.submitted` when it fits in a batch, else streamed
    (resumed where it stopped, for an idempotency key already used)."""
    await prepare_bus(bus)
    published = await publish_planned(bus, plan, show_progress=show_progress)
    return SubmitOutcome(
        job_id=published.job_id,
        duplicate=published.duplicate,
        no_worker=await no_worker_seen(bus, plan.queue),
        tasks=published.tasks,
    )


async def prepare_bus(bus: Bus) -> None:
    """The streams and buckets a submission writes to, once per connection."""
    await ensure_streams(bus.js)
    await ensure_buckets(bus.js)


@dataclass(frozen=True)
class Published:
    job_id: str
    duplicate: bool
    # Tasks sent from a `source` (None for the other plans, and for a duplicate).
    tasks: int | None = None


async def publish_planned(bus: Bus, plan: SubmitPlan, *, show_progress: bool) -> Published:
    """`submit_planned` on a prepared bus, without its look for a worker (`populate` sends
    many jobs on one bus)."""
    job_id = plan.settings.job_id
    key = plan.settings.idempotency_key
    if key is not None:
        job_id = await claim_job_id(bus, key, job_id)
    settings = msgspec.structs.replace(plan.settings, job_id=job_id)
    try:
        start = resume_point(await last_on_job(bus, job_id), job_id) if key else None
        if plan.source is not None:
            sent = await _send_found(bus, plan.source, settings, start, show_progress)
            return Published(job_id=job_id, duplicate=False, tasks=sent)
        _check_sizes(plan, bus.nc.max_payload)
        whole = _whole_job(plan, batch_bytes(bus.nc.max_payload)) if start is None else None
        if whole is not None:
            await bus.publish_event(
                msgspec.structs.replace(settings, tasks=whole), expected_last_subject_seq=0
            )
        else:
            await _stream(bus, plan, settings, start, show_progress=show_progress)
    except AlreadySubmitted:
        return Published(job_id=job_id, duplicate=True)
    except ConflictError:  # a concurrent submit with the same key published it first
        return Published(job_id=job_id, duplicate=True)
    return Published(job_id=job_id, duplicate=False)


async def _send_found(
    bus: Bus,
    source: AsyncIterator[TaskSpec],
    settings: JobSubmitted,
    start: Position | None,
    show_progress: bool,
) -> int:
    """Send tasks as the source finds them. Up to a batch's worth is read before anything is
    published: a source that fails that early leaves nothing in the log, and one that ends
    there is sent whole in one `job.submitted`. The number of tasks sent."""
    head: list[TaskSpec] = []
    if start is None:
        head, ended = await _read_ahead(source, bus.nc.max_payload)
        if ended:
            if not head:
                raise UsageError("no tasks to submit")
            await bus.publish_event(
                msgspec.structs.replace(settings, tasks=head), expected_last_subject_seq=0
            )
            return sum(spec.count for spec in head)
    header = msgspec.structs.replace(settings, tasks=[], sealed=False)
    with _progress(show_progress, None, start.tasks if start else 0) as advance:
        return await stream_job(bus, header, _chained(head, source), start=start, on_sent=advance)


async def _read_ahead(
    source: AsyncIterator[TaskSpec], max_payload: int
) -> tuple[list[TaskSpec], bool]:
    """The source's first tasks, up to a batch's bytes, and whether that is all of them."""
    budget = batch_bytes(max_payload)
    head: list[TaskSpec] = []
    size = 0
    async for spec in source:
        spec_size = len(encode(spec)) + 1
        check_task_fits(spec_size, max_payload)
        head.append(spec)
        size += spec_size
        if size > budget:
            return head, False
    return head, True


async def _chained(head: list[TaskSpec], rest: AsyncIterator[TaskSpec]) -> AsyncIterator[TaskSpec]:
    for spec in head:
        yield spec
    async for spec in rest:
        yield spec


def _whole_job(plan: SubmitPlan, budget: int) -> list[TaskSpec] | None:
    """The job's tasks if they fit in one `job.submitted` (then no stream is needed)."""
    if plan.specs is not None:
        return plan.specs if len(encode(plan.specs)) <= budget else None
    if plan.summary is None or plan.tasks_file is None or plan.summary.spec_bytes > budget:
        return None  # stdin, or too big
    with open_tasks(plan.tasks_file) as lines:
        specs = list(
            read_specs(lines, where=str(plan.tasks_file), kinds=plan.registry.__contains__)
        )
    return with_kind_defaults(specs, plan.registry) if plan.kind_defaults else specs


def _check_sizes(plan: SubmitPlan, max_payload: int) -> None:
    widest = (
        plan.summary.widest
        if plan.summary is not None
        else max((len(encode(spec)) for spec in plan.specs or []), default=0)
    )
    check_task_fits(widest, max_payload)
    if plan.settings.chunk_size:
        check_chunk_size(widest, plan.settings.chunk_size, max_payload)


async def _stream(
    bus: Bus,
    plan: SubmitPlan,
    settings: JobSubmitted,
    start: Position | None,
    *,
    show_progress: bool,
) -> None:
    header = msgspec.structs.replace(settings, tasks=[], sealed=False)
    total = plan.summary.tasks if plan.summary is not None else None
    with _progress(show_progress, total, start.tasks if start else 0) as advance:
        if plan.specs is not None:
            await stream_job(bus, header, plan.specs, start=start, on_sent=advance)
            return
        assert plan.tasks_file is not None
        with open_tasks(plan.tasks_file) as lines:
            specs = read_specs(lines, where=str(plan.tasks_file), kinds=plan.registry.__contains__)
            if plan.kind_defaults:
                specs = (with_kind_defaults([spec], plan.registry)[0] for spec in specs)
            await stream_job(bus, header, specs, start=start, on_sent=advance)


@contextlib.contextmanager
def _progress(shown: bool, total: int | None, done: int) -> Iterator[Callable[[int], None]]:
    """A progress bar of tasks sent, on a terminal only (rich is imported only then)."""
    if not shown:
        yield lambda sent: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("submitting"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("submit", total=total, completed=done)
        yield lambda sent: progress.advance(task, sent)
