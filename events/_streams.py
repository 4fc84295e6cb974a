"""Stream, consumer and bucket definitions, created idempotently at start-up."""

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from jobstream.events._names import LEVELS_HIGH_FIRST, PriorityLevel
from jobstream.events._subjects import (
    DISPATCHER_BUCKET,
    DOMAINS_BUCKET,
    EVENT_SUBJECTS,
    EVENTS_STREAM,
    IDEMPOTENCY_BUCKET,
    LIVENESS_BUCKET,
    TASK_QUEUE_SUBJECTS,
    TASK_SUBJECT_TRANSFORM_DESTINATION,
    TASK_SUBJECT_TRANSFORM_SOURCE,
    TASKS_STREAM,
    due_consumer_name,
    due_filter_subject,
    level_filter_subjects,
    worker_consumer_name,
)
from jobstream.events._timing import DEFAULT_LEASE_S

DUPLICATE_WINDOW_S = 120.0
DEFAULT_MAX_ACK_PENDING = 20_000
# Liveness keys carry their own timestamp; the bucket's TTL only clears out old workers.
LIVENESS_TTL_S = 3600.0
# A domain's politeness state is soft: one not crawled for a day starts afresh.
DOMAINS_TTL_S = 86_400.0


def events_stream_config(
    *, replicas: int = 1, max_age_s: float = 0.0, max_bytes: int = -1
) -> StreamConfig:
    return StreamConfig(
        name=EVENTS_STREAM,
        subjects=[EVENT_SUBJECTS],
        subject_transform=SubjectTransform(
            src=TASK_SUBJECT_TRANSFORM_SOURCE, dest=TASK_SUBJECT_TRANSFORM_DESTINATION
        ),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=max_age_s,
        max_bytes=max_bytes,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    )


def tasks_stream_config(*, replicas: int = 1) -> StreamConfig:
    """The work queue. A task that waits (deferred, or for its retry) waits in it as a message
    schedule (nats-server 2.12+), which holds no slot of the queue's consumer; the server
    needs roll-ups allowed for schedules."""
    return StreamConfig(
        name=TASKS_STREAM,
        subjects=[TASK_QUEUE_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
        allow_msg_schedules=True,
        allow_rollup_hdrs=True,
    )


def worker_consumer_config(
    queue: str,
    level: PriorityLevel = PriorityLevel.NORMAL,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
    replicas: int = 1,
) -> ConsumerConfig:
    """The durable pull consumer of one level of a queue, shared by every worker of the queue.

    `ack_wait` is the lease: a task whose worker stops extending it comes back.
    Attempts are counted by the worker from the delivery count, so `max_deliver` is unbounded.
    `filter_subjects` (several filters) needs nats-server 2.10 or later.
    """
    return ConsumerConfig(
        durable_name=worker_consumer_name(queue, level),
        filter_subjects=level_filter_subjects(queue, level),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=lease_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        num_replicas=replicas,
    )


def due_consumer_config(
    queue: str,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
    replicas: int = 1,
) -> ConsumerConfig:
    """The durable pull consumer of a queue's due tasks (`task_due_subject`), as a level's."""
    return ConsumerConfig(
        durable_name=due_consumer_name(queue),
        filter_subject=due_filter_subject(queue),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=lease_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        num_replicas=replicas,
    )


# `replicas=None` below means "keep what exists, 1 if new": every process runs these
# definitions at start-up, and one that starts against an R3 cluster must not scale its
# streams, consumer or buckets down. Only an explicit count (`jobstream init --replicas`)
# changes it.


async def ensure_streams(js: JetStreamContext, *, replicas: int | None = None) -> None:
    """Create both streams, or bring existing ones up to date with these definitions.

    What an operator sets on a running stream stays: its replica count (unless `replicas` is
    given) and its retention limits (age, bytes, messages). So does the events stream's
    subject transform, or its lack: a stream made before task events were stored with their
    job's bucket keeps storing them without it (adding the transform to a running stream
    would put a task's later events on another subject than its earlier ones, which its
    fences compare with; docs/deployment.md says how to add it).
    """
    for make_config in (events_stream_config, tasks_stream_config):
        config = make_config(replicas=replicas or 1)
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            current = (await js.stream_info(str(config.name))).config
            config = config.evolve(
                num_replicas=replicas or current.num_replicas or 1,
                max_age=current.max_age,
                max_bytes=current.max_bytes,
                max_msgs=current.max_msgs,
                subject_transform=current.subject_transform,
            )
            await js.update_stream(config)


async def ensure_worker_consumer(
    js: JetStreamContext, queue: str, *, lease_s: float, replicas: int | None = None
) -> None:
    """Create the queue's consumers, one per level and one of its due tasks, or update them:
    `pull_subscribe` ignores config once a consumer exists.

    The normal level's comes first: before levels it was the queue's one consumer, filtering
    all of `task.<queue>.>`, and a WorkQueue stream refuses a consumer whose filter overlaps
    another's, so it must be narrowed before the others are added. An existing consumer keeps
    the `max_ack_pending` an operator gave it.
    """
    normal_first = sorted(LEVELS_HIGH_FIRST, key=lambda level: level is not PriorityLevel.NORMAL)
    for level in [*normal_first, None]:
        name = due_consumer_name(queue) if level is None else worker_consumer_name(queue, level)
        current = await _consumer_config(js, name)
        if replicas is None:  # the normal level's count, for every consumer
            replicas = (current.num_replicas if current is not None else None) or 1
        max_ack_pending = DEFAULT_MAX_ACK_PENDING
        if current is not None and current.max_ack_pending:
            max_ack_pending = current.max_ack_pending
        config = (
            due_consumer_config(
                queue, lease_s=lease_s, max_ack_pending=max_ack_pending, replicas=replicas
            )
            if level is None
            else worker_consumer_config(
                queue, level, lease_s=lease_s, max_ack_pending=max_ack_pending, replicas=replicas
            )
        )
        await js.add_consumer(TASKS_STREAM, config)


async def _consumer_config(js: JetStreamContext, name: str) -> ConsumerConfig | None:
    try:
        info = await js.consumer_info(TASKS_STREAM, name)
    except nats.js.errors.NotFoundError:
        return None
    config: ConsumerConfig = info.config
    return config


async def ensure_buckets(js: JetStreamContext, *, replicas: int | None = None) -> None:
    count = replicas or 1
    for config in (
        KeyValueConfig(bucket=LIVENESS_BUCKET, ttl=LIVENESS_TTL_S, replicas=count, history=1),
        KeyValueConfig(bucket=DISPATCHER_BUCKET, replicas=count, history=1),
        KeyValueConfig(bucket=IDEMPOTENCY_BUCKET, replicas=count, history=1),
        KeyValueConfig(bucket=DOMAINS_BUCKET, ttl=DOMAINS_TTL_S, replicas=count, history=1),
    ):
        try:
            await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            # It exists with another configuration: keep it, or set the count asked for.
            if replicas is None:
                continue
            stream = await js.stream_info(f"KV_{config.bucket}")
            await js.update_stream(stream.config.evolve(num_replicas=replicas))
