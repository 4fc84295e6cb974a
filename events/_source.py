"""Read the event log in order from a sequence, in batches, through any server restart."""

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events._bus import Bus, backoff_s, is_transient
from events._catalogue import Event
from events._codec import DecodeError, decode_event
from events._subjects import EVENT_SUBJECTS, EVENTS_STREAM

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 0.2
# An idle reader checks now and then that its consumer still exists (a restarted server may
# have dropped it, and a fetch on a missing consumer only times out).
IDLE_CHECK_S = 5.0
INACTIVE_THRESHOLD_S = 30.0


@dataclass(frozen=True, slots=True)
class LogEntry:
    seq: int
    subject: str
    data: bytes
    event: Event | None
    error: str | None


class EventSource:
    """Batches of log entries from `start_seq` on: large under load, small when idle.

    An ephemeral pull consumer with no acks: the reader keeps its own position, so after a
    server restart or a lost consumer it simply starts again after the last entry it gave out.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        start_seq: int = 1,
        subjects: str = EVENT_SUBJECTS,
        batch_max: int = 1000,
    ) -> None:
        self.bus = bus
        self.next_seq = max(1, start_seq)
        self.subjects = subjects
        self.batch_max = batch_max

    async def _subscribe(self) -> "nats.js.JetStreamContext.PullSubscription":
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            filter_subject=self.subjects,
            max_waiting=1,
        )
        return await self.bus.js.pull_subscribe(
            self.subjects, durable=None, stream=EVENTS_STREAM, config=config
        )

    async def batches(self, stop: asyncio.Event) -> AsyncIterator[list[LogEntry]]:
        failures = 0
        psub = None
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while not stop.is_set():
            try:
                if psub is None:
                    psub = await self._subscribe()
                    idle_since = loop.time()
                if loop.time() - idle_since > IDLE_CHECK_S:
                    idle_since = loop.time()
                    await psub.consumer_info()
                messages = await psub.fetch(self.batch_max, timeout=FETCH_TIMEOUT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                yield []
                continue
            except Exception as exc:
                if not is_transient(exc) and not isinstance(exc, nats.js.errors.NotFoundError):
                    raise
                failures += 1
                log.warning("reading %s: %s; resuming at %d", self.subjects, exc, self.next_seq)
                await _drop(psub)
                psub = None
                await asyncio.sleep(backoff_s(failures, base_s=0.1, cap_s=2.0))
                continue
            failures = 0
            idle_since = loop.time()
            batch = [_entry(msg) for msg in messages]
            batch = [entry for entry in batch if entry.seq >= self.next_seq]
            if batch:
                self.next_seq = batch[-1].seq + 1
            yield batch
        await _drop(psub)


async def _drop(psub: "nats.js.JetStreamContext.PullSubscription | None") -> None:
    if psub is not None:
        try:
            await psub.unsubscribe()
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("unsubscribe: %s", exc)


def _entry(msg: Msg) -> LogEntry:
    seq = msg.metadata.sequence.stream
    try:
        return LogEntry(seq, msg.subject, msg.data, decode_event(msg.data), None)
    except DecodeError as exc:
        return LogEntry(seq, msg.subject, msg.data, None, str(exc))
