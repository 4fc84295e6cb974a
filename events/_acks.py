"""Pipelined JetStream publishes whose futures always resolve.

nats-py's `publish_async` future never resolves when the server rejects the message (its
reply handler raises instead of failing the future) or when the ack is lost. `PipelinedPublisher`
sends with a reply subject of its own, turns every reply into a `PubAck` or an `APIError` on
the future, and fails with `TimeoutError` any future still open after `timeout_s`. Awaiting
one costs no timer of its own: a single reaper task watches them all.
"""

import asyncio
import collections
import itertools

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

NO_RESPONDERS_STATUS = "503"
# Acks outstanding before a publish waits, and how few it waits for: waiting for a
# thousand acks at once, not for the oldest one each time, keeps a long run of publishes (a
# big job's tasks) from paying a wait per publish.
MAX_OUTSTANDING = 4000
RESUME_OUTSTANDING = 3000
REAPER_TICK_S = 0.5


class _ApiError(msgspec.Struct):
    code: int | None = None
    err_code: int | None = None
    description: str | None = None


class _Reply(msgspec.Struct):
    """A publish's reply: an ack (`stream`, `seq`) or an `error`; other fields are ignored.
    Decoded by msgspec: nats-py's `json.loads` and `PubAck.from_response`, which looks up the
    dataclass's fields on each call, cost the dispatcher ~4 % of its CPU."""

    stream: str | None = None
    seq: int | None = None
    domain: str | None = None
    duplicate: bool | None = None
    error: _ApiError | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)


class PipelinedPublisher:
    def __init__(self, nc: NatsClient, *, timeout_s: float) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self._prefix = ""
        self._sub: Subscription | None = None
        self._tokens = itertools.count()
        self._futures: dict[str, asyncio.Future[PubAck]] = {}
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._reaper: asyncio.Task[None] | None = None
        self._room = asyncio.Event()  # clear while a publish waits for acks
        self._room.set()

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> "asyncio.Future[PubAck]":
        """Send now; return the future of its ack."""
        if self._sub is None:
            self._prefix = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)
        while len(self._futures) >= MAX_OUTSTANDING:
            self._room.clear()
            await self._room.wait()
        loop = asyncio.get_running_loop()
        token = str(next(self._tokens))
        future: asyncio.Future[PubAck] = loop.create_future()
        self._futures[token] = future
        self._deadlines.append((loop.time() + self.timeout_s, token))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())
        try:
            await self.nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
        except BaseException:
            self._settled(token)
            raise
        return future

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        sub, self._sub = self._sub, None
        if sub is not None and not self.nc.is_closed:
            await sub.unsubscribe()

    def _settled(self, token: str) -> "asyncio.Future[PubAck] | None":
        """Stop waiting for the ack of `token`; its future, unless already settled."""
        future = self._futures.pop(token, None)
        if len(self._futures) <= RESUME_OUTSTANDING:
            self._room.set()
        return future

    async def _on_reply(self, msg: Msg) -> None:
        future = self._settled(msg.subject.rsplit(".", 1)[-1])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            reply = _reply_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(nats.errors.Error(f"unreadable publish ack: {exc}"))
            return
        if reply.error is not None:
            future.set_exception(
                nats.js.errors.APIError(
                    code=reply.error.code,
                    err_code=reply.error.err_code,
                    description=reply.error.description,
                )
            )
        elif reply.stream is None or reply.seq is None:
            future.set_exception(nats.errors.Error("unreadable publish ack: no stream or seq"))
        else:
            future.set_result(
                PubAck(
                    stream=reply.stream,
                    seq=reply.seq,
                    domain=reply.domain,
                    duplicate=reply.duplicate,
                )
            )

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        while deadlines:
            deadline, token = deadlines[0]
            future = self._futures.get(token)
            if future is None or future.done():
                deadlines.popleft()
                continue
            now = loop.time()
            if now < deadline:
                await asyncio.sleep(min(deadline - now, REAPER_TICK_S))
                continue
            deadlines.popleft()
            self._settled(token)
            future.set_exception(nats.errors.TimeoutError())
