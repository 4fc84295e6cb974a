"""`jobstream schedule add/list/rm`: schedules as messages of the schedules stream, which
nats-server fires itself (see `jobstream.events._schedules`)."""

import contextlib
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import nats.js.errors
from nats.js.api import RawStreamMsg, StreamInfo

from jobstream.cli._labels import parse_labels
from jobstream.cli._runtime import UsageError
from jobstream.cli._submit import plan_submission
from jobstream.events import (
    EVENTS_STREAM,
    SCHEDULE_DEFINITION_SUBJECTS,
    SCHEDULE_LABEL,
    SCHEDULES_STREAM,
    Bus,
    DecodeError,
    Header,
    JobstreamError,
    JobSubmitted,
    Schedule,
    TimingError,
    decode_schedule,
    derived_id,
    encode,
    ensure_schedules,
    interval_text,
    job_subject,
    parse_cron,
    parse_interval,
    schedule_of_subject,
    schedule_subject,
    schedule_tick_subject,
    tick_job_id,
    utc_now,
    with_retry,
)
from jobstream.services.worker import HandlerRegistry

WRONG_LAST_SEQUENCE = 10071
PUBLISH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class JobTemplate:
    """The submit options of the job a schedule submits."""

    kind: str
    args: str
    count: int
    queue: str
    priority: int
    max_attempts: int | None
    timeout_s: float | None
    job_name: str
    labels: list[str]


def plan_schedule(
    registry: HandlerRegistry,
    name: str,
    *,
    every: str | None,
    cron: str | None,
    job: JobTemplate,
) -> Schedule:
    """Everything checked before connecting; `UsageError` says what is wrong."""
    if (every is None) == (cron is None):
        raise UsageError("give either --every (e.g. 10m) or --cron (e.g. '*/10 * * * *')")
    if SCHEDULE_LABEL in (label.partition("=")[0] for label in job.labels):
        raise UsageError(f"the label {SCHEDULE_LABEL!r} is the schedule's name; choose another")
    try:
        every_s = parse_interval(every) if every is not None else None
        cron_text = parse_cron(cron).text if cron is not None else None
        plan = plan_submission(
            registry,
            kind=job.kind,
            args=job.args,
            count=job.count,
            tasks_file=None,
            name=job.job_name,
            queue=job.queue,
            max_attempts=job.max_attempts,
            timeout_s=job.timeout_s,
            chunk_size=1,
            idempotency_key=None,
            priority=job.priority,
        )
    except TimingError as exc:
        raise UsageError(f"--every/--cron: {exc}") from None
    except JobstreamError as exc:
        raise UsageError(str(exc)) from None
    settings = plan.settings
    return Schedule(
        name=name,
        every_s=every_s,
        cron=cron_text,
        job_name=job.job_name,
        queue=settings.queue,
        priority=settings.priority,
        tasks=plan.specs or [],
        max_attempts=settings.max_attempts,
        timeout_s=settings.timeout_s,
        labels=parse_labels(job.labels),
        created_at=utc_now(),
    )


def describe_timing(schedule: Schedule) -> str:
    if schedule.every_s is not None:
        return f"every {interval_text(schedule.every_s)}"
    return f"cron {schedule.cron}"


async def add_schedule(bus: Bus, schedule: Schedule) -> None:
    """Publish the schedule message, only if the name is free (fenced on an empty subject);
    from then on the server fires it. `UsageError` (exit 2) for a name in use."""
    await with_retry(lambda: ensure_schedules(bus.js), what="create the schedules stream")
    payload = encode(schedule)
    if len(payload) > bus.nc.max_payload:
        raise UsageError(
            f"the schedule is {len(payload):,} bytes, over the server's max_payload of "
            f"{bus.nc.max_payload:,}: make --args smaller"
        )
    headers = {
        Header.SCHEDULE.value: schedule.server_pattern,
        Header.SCHEDULE_TARGET.value: schedule_tick_subject(schedule.name),
        Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: "0",
        # A retry after a lost ack is answered as a duplicate, not as "the name is taken".
        Header.MSG_ID.value: derived_id("schedule", schedule.name, schedule.created_at.isoformat()),
    }
    subject = schedule_subject(schedule.name)
    try:
        await with_retry(
            lambda: bus.js.publish(subject, payload, headers=headers, timeout=PUBLISH_TIMEOUT_S),
            what=f"publish {subject}",
        )
    except nats.js.errors.APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            raise UsageError(
                f"a schedule named {schedule.name!r} exists already "
                f"(jobstream schedule rm {schedule.name} removes it)"
            ) from None
        raise JobstreamError(f"the server refused the schedule: {exc.description}") from None


async def remove_schedule(bus: Bus, name: str) -> None:
    """Delete the schedule message (the server stops firing it) and its ticks not yet made
    into jobs. `JobstreamError` (exit 1) for an unknown name."""
    subject = schedule_subject(name)
    if await _schedules_info(bus) is None or await _last(bus, subject) is None:
        raise JobstreamError(f"no schedule named {name!r} (jobstream schedule list shows them)")
    for purged in (subject, schedule_tick_subject(name)):
        await with_retry(
            functools.partial(bus.js.purge_stream, SCHEDULES_STREAM, subject=purged),
            what=f"purge {purged}",
        )


class ScheduleRow(msgspec.Struct, kw_only=True):
    """One line of `schedule list`."""

    name: str
    timing: str
    next_fire_at: datetime | None
    last_fired_at: datetime | None = None
    last_job_id: str | None = None
    # False while no dispatcher has turned the last tick into its job yet.
    last_job_submitted: bool = False
    kind: str = ""
    queue: str = ""
    problem: str | None = None


async def list_schedules(bus: Bus) -> list[ScheduleRow]:
    info = await _schedules_info(bus, subjects=SCHEDULE_DEFINITION_SUBJECTS)
    if info is None:
        return []
    # Without a log (never initialised) no job was submitted, and a direct get would wait.
    has_log = await _stream_exists(bus, EVENTS_STREAM)
    subjects = sorted(info.state.subjects or {})
    rows = [await _row(bus, subject, has_log=has_log) for subject in subjects]
    return [row for row in rows if row is not None]


async def _row(bus: Bus, subject: str, *, has_log: bool) -> ScheduleRow | None:
    try:
        name = schedule_of_subject(subject)
    except ValueError as exc:
        return ScheduleRow(name=subject, timing="", next_fire_at=None, problem=str(exc))
    definition = await _last(bus, subject)
    if definition is None:  # removed meanwhile
        return None
    try:
        schedule = decode_schedule(definition.data or b"")
    except DecodeError as exc:
        return ScheduleRow(name=name, timing="", next_fire_at=None, problem=str(exc))
    row = ScheduleRow(
        name=name,
        timing=describe_timing(schedule),
        next_fire_at=None,
        kind=",".join(sorted({task.kind for task in schedule.tasks})),
        queue=schedule.queue,
    )
    tick = await _last(bus, schedule_tick_subject(name))
    if tick is not None and tick.seq is not None and tick.seq > (definition.seq or 0):
        row.last_fired_at = tick.time
        row.last_job_id = tick_job_id(schedule, tick.seq)
        if has_log:
            first = await bus.first_on_subject(job_subject(row.last_job_id))
            row.last_job_submitted = first is not None and isinstance(first[1], JobSubmitted)
        row.next_fire_at = _header_time(tick.headers, Header.SCHEDULE_NEXT.value)
    if row.next_fire_at is None:
        row.next_fire_at = next_fire(schedule, definition.time or utc_now())
    return row


def next_fire(schedule: Schedule, since: datetime) -> datetime:
    """The fire time after `since` as the server computes it (an interval counts from the
    whole second), or after now if that has passed."""
    now = utc_now()
    if schedule.every_s is not None:
        period = timedelta(seconds=schedule.every_s)
        start = since.astimezone(UTC).replace(microsecond=0)
        return start + period if start + period > now else now.replace(microsecond=0) + period
    assert schedule.cron is not None
    return parse_cron(schedule.cron).next_after(max(since, now))


def _header_time(headers: dict[str, str] | None, name: str) -> datetime | None:
    value = (headers or {}).get(name)
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value)
    return None


async def _stream_exists(bus: Bus, stream: str) -> bool:
    try:
        await with_retry(functools.partial(bus.js.stream_info, stream), what=f"info {stream}")
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _schedules_info(bus: Bus, *, subjects: str | None = None) -> StreamInfo | None:
    """The schedules stream, with the message count of each of `subjects`; None if there is
    no such stream yet (no schedule was ever added)."""
    try:
        return await with_retry(
            functools.partial(bus.js.stream_info, SCHEDULES_STREAM, subjects_filter=subjects),
            what="read the schedules stream",
        )
    except nats.js.errors.NotFoundError:
        return None


async def _last(bus: Bus, subject: str) -> RawStreamMsg | None:
    async def get() -> RawStreamMsg | None:
        try:
            return await bus.js.get_last_msg(SCHEDULES_STREAM, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None

    return await with_retry(get, what=f"read {subject}")
