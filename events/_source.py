"""Read the event log in batches through an ephemeral pull consumer that is recreated at need.

The consumer has no acks (`ack_policy=none`): the reader's position is the last sequence it
read, kept here and, durably, by the projector's checkpoint. When anything goes wrong (a
server restart, a deleted or idle-expired consumer, a delivery lost in a reconnect, a
JetStream leader change) the consumer is thrown away and a new one starts at the last
sequence read + 1, so the batches never skip or repeat an event.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import NamedTuple

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, StreamInfo

from jobstream.events._bus import Bus, backoff_s, is_transient
from jobstream.events._catalogue import Event
from jobstream.events._codec import DecodeError, decode_event
from jobstream.events._ids import new_id
from jobstream.events._pull import Delivery, PullFeed
from jobstream.events._subjects import EVENT_SUBJECTS, EVENTS_STREAM

log = logging.getLogger(__name__)

DEFAULT_BATCH_MAX = 1000
# Batches read ahead while the caller applies one: fetching overlaps the caller's I/O.
DEFAULT_PREFETCH = 1
FETCH_TIMEOUT_S = 0.1
INACTIVE_THRESHOLD_S = 30.0
# After this long without a message, ask the server whether the consumer still exists.
IDLE_CHECK_S = 5.0
API_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 1.0
HALT_WAIT_S = 0.5
CONSUMER_PREFIX = "reader-"
# While a filtered reader is idle, how often it asks how far the log it has read reaches.
WATERMARK_INTERVAL_S = 0.5
# Messages asked for ahead of the caller, in batches of `batch_max`, and the bytes one
# request may bring: a log of big events (a streamed job's batches) stays a few MB ahead.
READ_AHEAD_BATCHES = 2
READ_MAX_BYTES = 4 * 1024 * 1024


class SourceItem(NamedTuple):
    """One message of the log: decoded to `event`, or carrying the `error` that prevented it;
    or `skipped`: a message the reader does not want (`event_batches(wants=...)`), neither
    kept nor decoded, there only to say how far the log was read."""

    seq: int
    subject: str
    data: bytes
    event: Event | None
    error: DecodeError | None
    skipped: bool = False


class ConsumerLost(Exception):
    """The consumer's deliveries can no longer be trusted to continue the log without a gap."""


def decode_item(seq: int, subject: str, data: bytes) -> SourceItem:
    try:
        return SourceItem(seq, subject, data, decode_event(data), None)
    except DecodeError as exc:
        return SourceItem(seq, subject, data, None, exc)


class _Reader:
    """One ephemeral consumer and its subscription, positioned at `next_seq`."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        *,
        stream: str,
        filter_subject: str | Sequence[str],
        wants: Callable[[str], bool] | None,
        watermarks: bool,
        next_seq: int,
        batch_max: int,
        fetch_timeout_s: float,
        inactive_threshold_s: float,
    ) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream
        self.filter_subject = filter_subject
        self.wants = wants
        self.watermarks = watermarks
        self.next_seq = next_seq
        self.batch_max = batch_max
        self.fetch_timeout_s = fetch_timeout_s
        self.inactive_threshold_s = inactive_threshold_s
        self.feed: PullFeed | None = None
        self.name = ""
        self.consumer_seq = 0
        self.last_fetch = 0.0
        self.last_message = 0.0
        self.last_watermark = 0.0
        self.watermark_candidate: int | None = None

    async def open(self) -> None:
        name = f"{CONSUMER_PREFIX}{new_id()}"
        several = not isinstance(self.filter_subject, str)
        config = ConsumerConfig(
            name=name,
            description="jobstream projection reader",
            filter_subject=None if several else str(self.filter_subject),
            filter_subjects=list(self.filter_subject) if several else None,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            inactive_threshold=self.inactive_threshold_s,
            mem_storage=True,
            num_replicas=1,
        )
        await self.js.add_consumer(self.stream, config, timeout=API_TIMEOUT_S)
        self.name = name
        self.feed = PullFeed(
            self.nc,
            stream=self.stream,
            consumer=name,
            window=self.batch_max * READ_AHEAD_BATCHES,
            max_bytes=max(READ_MAX_BYTES, 2 * self.nc.max_payload),
        )
        await self.feed.start()
        self.consumer_seq = 0
        self.last_fetch = self.last_message = time.monotonic()
        log.debug("reading %s from seq %d (consumer %s)", self.filter_subject, self.next_seq, name)

    async def close(self) -> None:
        """Unsubscribe and delete the consumer, best effort: the server drops it when idle."""
        feed, self.feed = self.feed, None
        if feed is None:
            return
        try:
            await feed.stop()
            await asyncio.wait_for(self.js.delete_consumer(self.stream, self.name), CLOSE_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("closing consumer %s: %s", self.name, exc or type(exc).__name__)

    async def fetch(self) -> list[SourceItem]:
        """The next messages, in log order; [] when none came within the fetch timeout."""
        assert self.feed is not None
        if self.feed.lost:
            raise ConsumerLost(self.feed.lost)
        now = time.monotonic()
        if now - self.last_fetch > self.inactive_threshold_s / 2:
            # We were away long enough for the server to drop an idle consumer.
            raise ConsumerLost(f"no fetch for {now - self.last_fetch:.1f}s")
        self.last_fetch = now
        deliveries = await self.feed.take(self.batch_max, self.fetch_timeout_s)
        if not deliveries:
            await self._check_idle()
            mark = await self._watermark() if self.watermarks else None
            return [] if mark is None else [SourceItem(mark, "", b"", None, None, True)]
        self.last_message = self.last_fetch = time.monotonic()
        return self._items(deliveries)

    async def _check_idle(self) -> None:
        assert self.feed is not None
        if self.feed.lost:
            raise ConsumerLost(self.feed.lost)
        if time.monotonic() - self.last_message < IDLE_CHECK_S:
            return
        self.last_message = time.monotonic()
        try:
            await self.js.consumer_info(self.stream, self.name, timeout=API_TIMEOUT_S)
        except nats.js.errors.NotFoundError as exc:
            raise ConsumerLost("the consumer is gone") from exc

    async def _watermark(self) -> int | None:
        """A sequence of the log up to which every message the filter takes was read: the
        log's end as the stream's leader gave it at the last check, if the consumer has
        nothing pending now, had nothing then, and all it delivered was read. (One check
        late: a consumer on a replica that lags its stream's leader counts pending messages
        only up to what the replica has; a check later it has them.) None if not yet, or if
        asked less than `WATERMARK_INTERVAL_S` ago."""
        now = time.monotonic()
        if now - self.last_watermark < WATERMARK_INTERVAL_S:
            return None
        self.last_watermark = now
        # The log's end first: a message the filter takes written after it is pending below.
        stream = await asyncio.wait_for(self.js.stream_info(self.stream), API_TIMEOUT_S)
        info = await self.js.consumer_info(self.stream, self.name, timeout=API_TIMEOUT_S)
        delivered = (info.delivered.stream_seq if info.delivered else 0) or 0
        quiet = not info.num_pending and delivered < self.next_seq and _same_server(stream, info)
        candidate, self.watermark_candidate = self.watermark_candidate, None
        if not quiet:
            return None
        self.watermark_candidate = stream.state.last_seq
        if candidate is None or candidate < self.next_seq:
            return None
        self.next_seq = candidate + 1
        return candidate

    def _items(self, deliveries: list[Delivery]) -> list[SourceItem]:
        items: list[SourceItem] = []
        for delivery in deliveries:
            stream_seq, consumer_seq = delivery.stream_seq, delivery.consumer_seq
            if consumer_seq != self.consumer_seq + 1:
                # A delivery was lost (reconnect, slow consumer): yield what came before it.
                assert self.feed is not None
                self.feed.lost = (
                    f"consumer sequence {consumer_seq} after {self.consumer_seq}"
                    f" (stream sequence {stream_seq}, expected at least {self.next_seq})"
                )
                break
            self.consumer_seq = consumer_seq
            if stream_seq < self.next_seq:
                continue
            self.next_seq = stream_seq + 1
            if self.wants is None or self.wants(delivery.subject):
                items.append(decode_item(stream_seq, delivery.subject, delivery.data))
            else:
                items.append(SourceItem(stream_seq, delivery.subject, b"", None, None, True))
        return items


def _same_server(stream: StreamInfo, consumer: ConsumerInfo) -> bool:
    """Whether the consumer is on the server that leads its stream (always, unclustered): a
    consumer elsewhere counts pending messages against a replica that may lag the leader's
    end, so no watermark is taken from it (its reader's position then moves with the
    messages it is given: its own, and every job's events)."""
    if stream.cluster is None or stream.cluster.name is None:
        return True  # one server: no cluster name, and the consumer says no placement
    return consumer.cluster is not None and consumer.cluster.leader == stream.cluster.leader


async def event_batches(
    bus: Bus,
    *,
    start_seq: int,
    stop: asyncio.Event,
    filter_subject: str | Sequence[str] = EVENT_SUBJECTS,
    wants: Callable[[str], bool] | None = None,
    watermarks: bool = False,
    batch_max: int = DEFAULT_BATCH_MAX,
    prefetch: int = DEFAULT_PREFETCH,
    fetch_timeout_s: float = FETCH_TIMEOUT_S,
    inactive_threshold_s: float = INACTIVE_THRESHOLD_S,
    stream: str = EVENTS_STREAM,
) -> AsyncGenerator[list[SourceItem], None]:
    """Yield non-empty batches of the log from stream sequence `start_seq` on, until `stop`.

    `filter_subject` may be several subjects (their messages in log order). `wants`, if
    given, picks the messages to decode by their subject; the others come as `skipped` items.
    `watermarks`: when a filtered reader has read all its filter takes, a `skipped` item (of
    no subject) says how far the log reaches, so its caller's position can move past the
    messages the filter leaves out.
    Batches hold up to `batch_max` items, as many as the server has ready: large under load,
    small when idle. Up to `prefetch` batches are read ahead while the caller works on one.
    Transient failures are retried forever with backoff; reading resumes at the sequence
    after the last one read. Close the generator (`contextlib.aclosing`) to delete its
    consumer at once.
    """
    reader = _Reader(
        bus.nc,
        bus.js,
        stream=stream,
        filter_subject=filter_subject,
        wants=wants,
        watermarks=watermarks,
        next_seq=max(1, start_seq),
        batch_max=batch_max,
        fetch_timeout_s=fetch_timeout_s,
        inactive_threshold_s=inactive_threshold_s,
    )
    halt = asyncio.Event()
    batches = _read(reader, stop, halt)
    if prefetch > 0:
        batches = _ahead(batches, prefetch, halt)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            yield batch


async def _read(
    reader: _Reader, stop: asyncio.Event, halt: asyncio.Event
) -> AsyncGenerator[list[SourceItem], None]:
    failures = 0
    try:
        while not (stop.is_set() or halt.is_set()):
            try:
                if reader.feed is None:
                    await reader.open()
                batch = await reader.fetch()
            except Exception as exc:
                failures += 1
                await _recover(reader, exc, failures, stop)
                continue
            failures = 0
            if batch:
                yield batch
    finally:
        await reader.close()


async def _ahead(
    batches: AsyncGenerator[list[SourceItem], None], depth: int, halt: asyncio.Event
) -> AsyncGenerator[list[SourceItem], None]:
    """Run `batches` in a task that stays up to `depth` batches ahead of the caller."""
    queue: asyncio.Queue[list[SourceItem]] = asyncio.Queue(depth)

    async def pump() -> None:
        async with contextlib.aclosing(batches):
            async for batch in batches:
                await queue.put(batch)

    pumping = asyncio.create_task(pump())
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            await asyncio.wait({getting, pumping}, return_when=asyncio.FIRST_COMPLETED)
            if getting.done():
                yield getting.result()
                continue
            getting.cancel()
            while not queue.empty():
                yield queue.get_nowait()
            pumping.result()  # the reader's error, if it failed
            return
    finally:
        await _halt(pumping, queue, halt)


async def _halt(
    pumping: asyncio.Task[None], queue: asyncio.Queue[list[SourceItem]], halt: asyncio.Event
) -> None:
    """End the pump for sure. A cancel alone is not enough: nats-py's `next_msg` may swallow
    one (Python 3.11's `wait_for` does when a message lands at the same moment), and the pump
    then blocks on the full queue."""
    halt.set()
    while not pumping.done():
        pumping.cancel()
        while not queue.empty():
            queue.get_nowait()
        await asyncio.wait({pumping}, timeout=HALT_WAIT_S)
    if not pumping.cancelled() and pumping.exception() is not None:
        log.debug("reader ended with %r", pumping.exception())


async def _recover(reader: _Reader, exc: Exception, failures: int, stop: asyncio.Event) -> None:
    """Log `exc`, drop the consumer and wait before the next one; re-raise programming errors."""
    if reader.nc.is_closed:
        raise ConnectionClosedError() from exc
    if isinstance(exc, ConsumerLost):
        log.info("recreating the consumer at seq %d: %s", reader.next_seq, exc)
    elif is_transient(exc):
        log.warning("reading the log: %s, retry %d", type(exc).__name__, failures)
    elif isinstance(exc, nats.errors.Error):
        log.error("reading the log: %s, retry %d", exc, failures)
    else:
        raise exc
    await reader.close()
    if failures > 1:
        await sleep_unless_stopped(stop, backoff_s(failures))


async def sleep_unless_stopped(stop: asyncio.Event, delay_s: float) -> None:
    """Wait `delay_s`, or less if `stop` gets set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
