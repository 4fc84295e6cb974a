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
)

from events._subjects import (
    DISPATCHER_BUCKET,
    EVENT_SUBJECTS,
    EVENTS_STREAM,
    LIVENESS_BUCKET,
    TASK_QUEUE_SUBJECTS,
    TASKS_STREAM,
    queue_subjects,
    worker_consumer_name,
)

DUPLICATE_WINDOW_S = 120.0
DEFAULT_LEASE_S = 30.0
DEFAULT_MAX_ACK_PENDING = 20_000
MAX_MSG_SIZE = 8 * 1024 * 1024
# Liveness keys carry their own timestamp; the bucket's TTL only clears out old workers.
LIVENESS_TTL_S = 3600.0


def events_stream_config(
    *, replicas: int = 1, max_age_s: float = 0.0, max_bytes: int = -1
) -> StreamConfig:
    return StreamConfig(
        name=EVENTS_STREAM,
        subjects=[EVENT_SUBJECTS],
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
    return StreamConfig(
        name=TASKS_STREAM,
        subjects=[TASK_QUEUE_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
    )


def worker_consumer_config(
    queue: str,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
    replicas: int = 1,
) -> ConsumerConfig:
    """The queue's one durable pull consumer, shared by every worker of the queue.

    `ack_wait` is the lease: a task whose worker stops extending it comes back.
    Attempts are counted by the worker from the delivery count, so `max_deliver` is unbounded.
    """
    return ConsumerConfig(
        durable_name=worker_consumer_name(queue),
        filter_subject=queue_subjects(queue),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=lease_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        num_replicas=replicas,
    )


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create both streams, or bring existing ones up to date with these definitions."""
    for config in (events_stream_config(replicas=replicas), tasks_stream_config(replicas=replicas)):
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)


async def ensure_worker_consumer(
    js: JetStreamContext, queue: str, *, lease_s: float, replicas: int = 1
) -> None:
    """Create the queue's consumer, or update it: `pull_subscribe` ignores config once it exists."""
    config = worker_consumer_config(queue, lease_s=lease_s, replicas=replicas)
    await js.add_consumer(TASKS_STREAM, config)


async def ensure_buckets(js: JetStreamContext, *, replicas: int = 1) -> None:
    for config in (
        KeyValueConfig(bucket=LIVENESS_BUCKET, ttl=LIVENESS_TTL_S, replicas=replicas, history=1),
        KeyValueConfig(bucket=DISPATCHER_BUCKET, replicas=replicas, history=1),
    ):
        await js.create_key_value(config)
