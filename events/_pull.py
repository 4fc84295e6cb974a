"""A continuous pull on a JetStream consumer: messages stream in and are handed out in batches.

nats-py's `fetch(n)` sends one request, then waits for each message with its own timeout and
returns only when the batch is full or the timeout passes. That costs a timer per message and
holds the first message back. `PullFeed` instead keeps pull requests outstanding on the
consumer (at most `window` messages asked for and not yet delivered), lets a subscription
callback buffer what arrives, and returns a batch as soon as one message is there.

The server's idle heartbeats prove an outstanding request is alive; when none arrives for a
few heartbeat intervals, or the server reports the consumer deleted or moved, the feed is
`lost` and its owner starts a new consumer.
"""

import asyncio
import collections
import json
import time
from typing import NamedTuple

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS_HEADER = "Status"
DESCRIPTION_HEADER = "Description"
PENDING_MESSAGES_HEADER = "Nats-Pending-Messages"
_HEARTBEAT = "100"
_NO_MESSAGES = "404"
_REQUEST_EXPIRED = "408"
_REQUEST_FULL = "409"
# A 409 with one of these descriptions ends a request that has max_bytes: it reached them, or
# its batch was filled first. Not a lost feed.
_REQUEST_DONE = frozenset({"Message Size Exceeds MaxBytes", "Batch Completed"})
_ACK_V1_TOKENS = 9

DEFAULT_EXPIRES_S = 10.0
DEFAULT_HEARTBEAT_S = 1.0
# Heartbeats that may go missing before the feed counts as lost.
MISSED_HEARTBEATS = 3


class Delivery(NamedTuple):
    """One delivered message with the sequences its reply subject carries."""

    stream_seq: int
    consumer_seq: int
    num_delivered: int
    subject: str
    data: bytes
    msg: Msg
    # Messages the consumer had left to deliver after this one.
    pending: int


def delivery_of(msg: Msg) -> Delivery | None:
    """The sequences of a JetStream delivery (`$JS.ACK.…`), None for anything else."""
    reply = msg.reply
    if not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    try:
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or with
        # <domain>.<account> before <stream> (and more tokens after <pending>).
        first = 4 if len(tokens) == _ACK_V1_TOKENS else 6
        delivered, stream_seq, consumer_seq = (int(token) for token in tokens[first : first + 3])
        pending = int(tokens[first + 4])
    except (IndexError, ValueError):
        return None
    return Delivery(stream_seq, consumer_seq, delivered, msg.subject, msg.data, msg, pending)


class PullFeed:
    """Outstanding pull requests on consumer `consumer` of `stream`, and a buffer they fill.

    At most `window` messages are asked for or buffered at once. A reader keeps it fixed. A
    worker passes `holds_taken`: what it takes shrinks the window until it `resize`s it to
    its free slots again, so it never holds a lease it cannot start. Feeds read together
    share one `arrived` event, set when any of them gets a message.
    """

    def __init__(
        self,
        nc: NatsClient,
        *,
        stream: str,
        consumer: str,
        window: int,
        holds_taken: bool = False,
        expires_s: float = DEFAULT_EXPIRES_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        arrived: asyncio.Event | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.nc = nc
        self.window = window
        # Bytes one request may bring (it must exceed the largest message): with big messages
        # the window in messages alone would let a reader buffer gigabytes.
        self.max_bytes = max_bytes
        self._buffered_bytes = 0
        self.holds_taken = holds_taken
        self.expires_s = expires_s
        self.heartbeat_s = heartbeat_s
        self.lost = ""
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._arrived = arrived or asyncio.Event()
        self._requested = 0  # asked for, neither delivered nor expired
        # What the consumer had left to deliver, as its last delivery said; 0 once a request
        # ended unfilled.
        self.backlog = 0
        self._last_sign = time.monotonic()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        self._last_sign = time.monotonic()
        await self._top_up()

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    async def restart(self) -> None:
        """Start over on a new inbox, dropping what was buffered (a lost feed)."""
        await self.stop()
        self.lost = ""
        self._requested = 0
        self._buffer.clear()
        self._buffered_bytes = 0
        self._inbox = self.nc.new_inbox()
        await self.start()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def requested(self) -> int:
        return self._requested

    async def resize(self, window: int) -> None:
        """Change how many messages may be requested or buffered at once."""
        self.window = window
        await self._top_up()

    async def take(self, max_items: int, timeout_s: float) -> list[Delivery]:
        """Up to `max_items` buffered deliveries, waiting up to `timeout_s` for the first;
        [] if none came. Sets `lost` when the server has gone quiet for too long."""
        if not self._buffer and not self.lost:
            self._arrived.clear()
            await self._top_up()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
            except TimeoutError:
                self.check_alive()
                return []
        taken = self.take_buffered(max_items)
        await self._top_up()
        return taken

    def take_buffered(self, max_items: int) -> list[Delivery]:
        """Up to `max_items` of what is buffered, without waiting or asking for more."""
        count = min(max_items, len(self._buffer))
        taken = [self._buffer.popleft() for _ in range(count)]
        self._buffered_bytes -= sum(len(delivery.data) for delivery in taken)
        if self.holds_taken:
            self.window -= count
        return taken

    def check_alive(self) -> None:
        silent = time.monotonic() - self._last_sign
        if self._requested > 0 and silent > self.heartbeat_s * MISSED_HEARTBEATS:
            self.lost = self.lost or f"no message or heartbeat for {silent:.1f}s"

    async def _top_up(self) -> None:
        """Ask for more once half the window is free (or all of it, when it is small)."""
        if self._sub is None or self.lost:
            return
        room = self.window - self._requested - len(self._buffer)
        if room <= 0 or (room < self.window // 2 and self._requested > 0):
            return
        if self.max_bytes is not None and (
            self._requested > 0 or self._buffered_bytes >= self.max_bytes // 2
        ):
            return  # one request at a time, and only while little is buffered
        request = {
            "batch": room,
            "expires": int(self.expires_s * 1e9),
            "idle_heartbeat": int(self.heartbeat_s * 1e9),
        }
        if self.max_bytes is not None:
            request["max_bytes"] = self.max_bytes
        if self._requested == 0:
            self._last_sign = time.monotonic()
        self._requested += room
        await self.nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    async def _on_message(self, msg: Msg) -> None:
        self._last_sign = time.monotonic()
        delivery = delivery_of(msg)
        if delivery is not None:
            self._requested = max(0, self._requested - 1)
            self.backlog = delivery.pending
            self._buffer.append(delivery)
            self._buffered_bytes += len(delivery.data)
            self._arrived.set()
            return
        headers = msg.headers or {}
        status = headers.get(STATUS_HEADER, "")
        if status == _HEARTBEAT:
            return
        description = headers.get(DESCRIPTION_HEADER, "")
        ended = status in (_REQUEST_EXPIRED, _NO_MESSAGES)
        if ended or (status == _REQUEST_FULL and description in _REQUEST_DONE):
            pending = headers.get(PENDING_MESSAGES_HEADER, "")
            expired = int(pending) if pending.isdigit() else self._requested
            self._requested = max(0, self._requested - expired)
            self.backlog = 0
            await self._top_up()
            return
        # 409: the consumer was deleted, its leader moved, the server is shutting down.
        self.lost = self.lost or f"server status {status} {description}".strip()
        self._arrived.set()
