"""Schedules on nats-server's own recurring messages (2.12+).

A schedule is one message on `sched.def.<name>` in the schedules stream, carrying the
`Nats-Schedule` pattern and `Nats-Schedule-Target: sched.tick.<name>`; its body is the job to
submit. Each period the server copies that body onto the tick subject, with
`Nats-Scheduler` naming the schedule. The server keeps the timing (across its restarts, and
in a cluster by the stream's leader), so one tick is written per period whatever number of
dispatchers run; the dispatchers share one durable consumer of the ticks and turn each into
a job whose id follows from the tick, fenced on the job's subject, so a tick is one job even
when it is delivered twice.
"""

from typing import Annotated

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from jobstream.events._catalogue import Attempts, AwareDatetime, Priority, TaskSpec, TimeoutS
from jobstream.events._codec import DecodeError
from jobstream.events._errors import JobstreamError
from jobstream.events._ids import derived_id
from jobstream.events._names import QueueName, ScheduleName
from jobstream.events._streams import DUPLICATE_WINDOW_S
from jobstream.events._subjects import (
    SCHEDULE_SUBJECTS,
    SCHEDULE_TICK_SUBJECTS,
    SCHEDULE_TICKS_CONSUMER,
    SCHEDULES_STREAM,
)
from jobstream.events._timing import MAX_INTERVAL_S, parse_cron

# Ticks kept per schedule: after an outage of every dispatcher, at most this many of the
# latest missed periods still fire; older ones are dropped by the stream.
TICKS_KEPT_PER_SCHEDULE = 10
# A tick handed to a dispatcher that dies comes back to another after this long.
TICK_ACK_WAIT_S = 10.0
MAX_LABELS = 64
MAX_LABEL_LENGTH = 256
Label = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_LENGTH)]
# The label that names a scheduled job's schedule.
SCHEDULE_LABEL = "schedule"


class Schedule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A schedule: when it fires (`every_s` or `cron`, exactly one) and the job it submits."""

    name: ScheduleName
    every_s: Annotated[int, msgspec.Meta(ge=1, le=MAX_INTERVAL_S)] | None = None
    cron: str | None = None
    job_name: str = ""
    queue: QueueName = "default"
    priority: Priority = 0
    tasks: list[TaskSpec]
    max_attempts: Attempts = 3
    timeout_s: TimeoutS | None = None
    labels: Annotated[dict[Label, Label], msgspec.Meta(max_length=MAX_LABELS)] = msgspec.field(
        default_factory=dict
    )
    created_at: AwareDatetime

    @property
    def server_pattern(self) -> str:
        """The `Nats-Schedule` header value."""
        if self.every_s is not None:
            return f"@every {self.every_s}s"
        assert self.cron is not None
        return parse_cron(self.cron).server_pattern


_schedule_decoder = msgspec.json.Decoder(Schedule)


def decode_schedule(data: bytes) -> Schedule:
    """A schedule message's (or a tick's) body; `DecodeError` for anything else, or for a
    schedule without exactly one of `every_s` and a valid `cron`."""
    try:
        schedule = _schedule_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(f"not a jobstream schedule: {exc}") from exc
    if (schedule.every_s is None) == (schedule.cron is None):
        raise DecodeError("not a jobstream schedule: give exactly one of every_s and cron")
    if schedule.cron is not None:
        try:
            parse_cron(schedule.cron)
        except ValueError as exc:
            raise DecodeError(f"not a jobstream schedule: {exc}") from exc
    if not schedule.tasks:
        raise DecodeError("not a jobstream schedule: no tasks")
    return schedule


def tick_job_id(schedule: Schedule, tick_seq: int) -> str:
    """The job a tick submits: the same id whoever handles the tick, however often. The
    schedule's creation time is part of it, so that a schedules stream made anew (its
    sequences starting over) never maps a tick onto an old job."""
    return derived_id("schedule", schedule.name, schedule.created_at.isoformat(), str(tick_seq))


class SchedulesUnsupportedError(JobstreamError):
    """The NATS server has no message schedules (before 2.12)."""


def schedules_stream_config(*, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=SCHEDULES_STREAM,
        subjects=[SCHEDULE_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msgs_per_subject=TICKS_KEPT_PER_SCHEDULE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
        allow_msg_schedules=True,
    )


def schedule_ticks_consumer_config(*, replicas: int = 1) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=SCHEDULE_TICKS_CONSUMER,
        filter_subject=SCHEDULE_TICK_SUBJECTS,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=TICK_ACK_WAIT_S,
        max_deliver=-1,
        num_replicas=replicas,
    )


async def ensure_schedules(js: JetStreamContext, *, replicas: int | None = None) -> None:
    """Create the schedules stream and the dispatchers' tick consumer, or bring them up to
    date (keeping the replica count unless `replicas` is given);
    `SchedulesUnsupportedError` on a server without message schedules."""
    config = schedules_stream_config(replicas=replicas or 1)
    try:
        info = await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        current = (await js.stream_info(SCHEDULES_STREAM)).config
        config = config.evolve(
            num_replicas=replicas or current.num_replicas or 1,
            # An operator may keep more (or fewer) missed ticks.
            max_msgs_per_subject=current.max_msgs_per_subject or TICKS_KEPT_PER_SCHEDULE,
        )
        info = await js.update_stream(config)
    # A server that does not know the field ignores it: the stream then never ticks.
    if not info.config.allow_msg_schedules:
        raise SchedulesUnsupportedError(
            "this NATS server has no message schedules (nats-server 2.12 or later is needed)"
        )
    consumer_replicas = replicas or info.config.num_replicas or 1
    await js.add_consumer(
        SCHEDULES_STREAM, schedule_ticks_consumer_config(replicas=consumer_replicas)
    )
