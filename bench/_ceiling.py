"""The ceiling: what JetStream itself moves through nats-py in one Python process on this
machine — pipelined publishes into a scratch stream (a bounded window of `publish_async`
futures, each awaited with a timeout) and pull + ack out of it — so jobstream's figures can
be read against it. The scratch stream is deleted afterwards."""

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, PubAck, StorageType, StreamConfig

from jobstream.bench._common import rate
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.events import JobstreamError, TaskMessage, encode

STREAM = "JOBSTREAM_BENCH_CEILING"
SUBJECT = "bench.ceiling.jobs"
CONSUMER = "bench-ceiling"
PUBLISH_WINDOW = 1_000
FETCH_BATCH = 500
API_TIMEOUT_S = 10.0
FETCH_TIMEOUT_S = 1.0
DEADLINE_S = 120.0


@dataclass(frozen=True, kw_only=True)
class CeilingResult:
    messages: int
    payload_bytes: int
    publish_window: int
    fetch_batch: int
    publish_per_s: float
    consume_per_s: float
    publish_cpu: CpuReport
    consume_cpu: CpuReport


def _payload() -> bytes:
    """A payload the size of a real task message."""
    return encode(
        TaskMessage(
            job_id="01J0000000000000000000000",
            task_id="01J0000000000000000000000-1234",
            kind="noop",
        )
    )


async def _publish(js: JetStreamContext, count: int, payload: bytes) -> float:
    """Publish `count` messages with at most PUBLISH_WINDOW unacknowledged; return seconds.

    The acks are awaited under one deadline for the whole batch (`asyncio.timeout`), not a
    `wait_for` each: on this machine a `wait_for` per ack costs two thirds of the rate.
    """
    window: deque[asyncio.Future[PubAck]] = deque()
    started = time.monotonic()
    async with asyncio.timeout(DEADLINE_S):
        for _ in range(count):
            if len(window) >= PUBLISH_WINDOW:
                await window.popleft()
            window.append(await js.publish_async(SUBJECT, payload))
        while window:
            await window.popleft()
    return time.monotonic() - started


async def _consume(nc: NatsClient, js: JetStreamContext, count: int) -> float:
    """Pull in batches and ack each message until `count` are in; return seconds."""
    psub = await js.pull_subscribe(
        SUBJECT,
        durable=CONSUMER,
        stream=STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
    )
    received = 0
    started = time.monotonic()
    deadline = started + DEADLINE_S
    while received < count:
        if time.monotonic() > deadline:
            raise JobstreamError(f"bench ceiling: {received} of {count} messages consumed")
        with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
            for msg in await psub.fetch(min(FETCH_BATCH, count - received), FETCH_TIMEOUT_S):
                await msg.ack()
                received += 1
    await nc.flush()
    elapsed = time.monotonic() - started
    await psub.unsubscribe()
    return elapsed


async def measure_ceiling(nats_url: str, meter: CpuMeter, *, messages: int) -> CeilingResult:
    nc = await nats.connect([nats_url], name="jobstream-bench-ceiling", connect_timeout=5)
    js = nc.jetstream(timeout=API_TIMEOUT_S)
    payload = _payload()
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(STREAM)
        await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE))
        meter.start()
        published_s = await _publish(js, messages, payload)
        publish_cpu = meter.stop()
        meter.start()
        consumed_s = await _consume(nc, js, messages)
        consume_cpu = meter.stop()
        await js.delete_stream(STREAM)
    finally:
        await nc.close()
    return CeilingResult(
        messages=messages,
        payload_bytes=len(payload),
        publish_window=PUBLISH_WINDOW,
        fetch_batch=FETCH_BATCH,
        publish_per_s=rate(messages, published_s),
        consume_per_s=rate(messages, consumed_s),
        publish_cpu=publish_cpu,
        consume_cpu=consume_cpu,
    )
