"""Schedule ticks into jobs: the dispatchers share one durable consumer of the ticks that
nats-server publishes for each schedule, and each tick becomes one `job.submitted`.

Exactly one job per tick, whoever handles it and however often: the job id follows from the
schedule and the tick's stream sequence, and the submission is fenced on the job's subject
being empty (and carries a `Nats-Msg-Id` derived from the job id). A dispatcher that dies
before acking leaves the tick to be redelivered; the redelivery finds the job already there
and only acks. A tick that is not one of ours is set aside and terminated, never retried.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jobstream.events import (
    SCHEDULE_LABEL,
    SCHEDULE_TICKS_CONSUMER,
    SCHEDULES_STREAM,
    Bus,
    ConflictError,
    DecodeError,
    Header,
    JobSubmitted,
    PublishError,
    Schedule,
    SchedulesUnsupportedError,
    backoff_s,
    decode_schedule,
    derived_id,
    ensure_schedules,
    is_transient,
    job_subject,
    quote,
    schedule_of_subject,
    schedule_subject,
    sleep_unless_stopped,
    tick_job_id,
    with_retry,
)

log = logging.getLogger(__name__)

# Ticks are rare: one pull at a time, answered as soon as a tick is there.
FETCH_WAIT_S = 1.0
TRANSIENT_RETRY_S = 1.0


class UnusableTickError(ValueError):
    """A message on a tick subject that cannot become a job, and never will."""


@dataclass(frozen=True)
class Tick:
    seq: int
    fired_at: datetime
    schedule: Schedule


def read_tick(
    subject: str, data: bytes, headers: Mapping[str, str], *, seq: int, fired_at: datetime
) -> Tick:
    """The tick on `subject`; `UnusableTickError` for anything the server did not write for
    one of our schedules (a foreign client's message, a malformed schedule body)."""
    try:
        name = schedule_of_subject(subject)
        schedule = decode_schedule(data)
    except (ValueError, DecodeError) as exc:
        raise UnusableTickError(str(exc)) from None
    scheduler = headers.get(Header.SCHEDULER.value)
    if scheduler is None:
        raise UnusableTickError(
            f"no {Header.SCHEDULER.value} header: not published by the server for a schedule"
        )
    if scheduler != schedule_subject(name):
        raise UnusableTickError(
            f"not a tick of schedule {name}: {Header.SCHEDULER.value} is {quote(scheduler)}"
        )
    if schedule.name != name:
        raise UnusableTickError(f"the tick of schedule {name} carries schedule {schedule.name}")
    return Tick(seq=seq, fired_at=fired_at, schedule=schedule)


def job_for_tick(tick: Tick) -> JobSubmitted:
    """The job a tick submits: the schedule's job, labelled with the schedule's name."""
    schedule = tick.schedule
    job_id = tick_job_id(schedule, tick.seq)
    return JobSubmitted(
        id=derived_id(job_id, "submitted"),
        at=tick.fired_at,
        job_id=job_id,
        name=schedule.job_name or schedule.name,
        queue=schedule.queue,
        priority=schedule.priority,
        tasks=schedule.tasks,
        max_attempts=schedule.max_attempts,
        timeout_s=schedule.timeout_s,
        submitted_by=f"schedule {schedule.name} tick {tick.seq}",
        labels={**schedule.labels, SCHEDULE_LABEL: schedule.name},
    )


class ScheduleFirer:
    """One dispatcher's share of the ticks. `on_set_aside` counts a tick set aside."""

    def __init__(self, bus: Bus, *, on_set_aside: Callable[[], None] = lambda: None) -> None:
        self.bus = bus
        self.on_set_aside = on_set_aside

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await ensure_schedules(self.bus.js)
                ticks = await self.bus.js.pull_subscribe_bind(
                    SCHEDULE_TICKS_CONSUMER, SCHEDULES_STREAM
                )
                failures = 0
                try:
                    await self._fire_ticks(ticks, stop)
                finally:
                    # Else a reply to the last fetch waits in the subscription, and closing
                    # the connection waits out its drain timeout (5 s) for it to be read.
                    with contextlib.suppress(nats.errors.Error):
                        await ticks.unsubscribe()
            except SchedulesUnsupportedError as exc:
                log.warning("schedules are off: %s", exc)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                if isinstance(exc, nats.errors.ConnectionClosedError):
                    raise
                failures += 1
                log.warning("schedule ticks: %s; reading them again", exc or type(exc).__name__)
                await sleep_unless_stopped(stop, backoff_s(failures, cap_s=5.0))

    async def _fire_ticks(
        self, ticks: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            try:
                messages = await ticks.fetch(1, timeout=FETCH_WAIT_S)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                await self.fire(message)

    async def fire(self, message: Msg) -> None:
        """Submit the tick's job (unless an earlier delivery did) and ack the tick."""
        metadata = message.metadata
        try:
            tick = read_tick(
                message.subject,
                message.data,
                message.headers or {},
                seq=metadata.sequence.stream,
                fired_at=metadata.timestamp,
            )
            await self._submit(job_for_tick(tick))
        except (UnusableTickError, PublishError, nats.errors.MaxPayloadError) as exc:
            await self._set_aside(message, str(exc) or type(exc).__name__)
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("tick %d: %s; trying again", metadata.sequence.stream, type(exc).__name__)
            await message.nak(delay=TRANSIENT_RETRY_S)
            return
        await message.ack()

    async def _submit(self, job: JobSubmitted) -> None:
        try:
            await self.bus.publish_event(job, expected_last_subject_seq=0)
        except ConflictError:
            first = await self.bus.first_on_subject(job_subject(job.job_id))
            if first is None or not isinstance(first[1], JobSubmitted) or first[1].id != job.id:
                raise UnusableTickError(
                    f"job {job.job_id}'s subject already holds a message that is not this"
                    " tick's job"
                ) from None
            log.info("tick already fired: job %s", job.job_id)
            return
        log.info("schedule %s fired: job %s", job.labels[SCHEDULE_LABEL], job.job_id)

    async def _set_aside(self, message: Msg, reason: str) -> None:
        self.on_set_aside()
        log.warning(
            "set aside tick %d on %s: %s",
            message.metadata.sequence.stream,
            quote(message.subject),
            reason,
        )
        await with_retry(message.term, what="terminate a tick")
