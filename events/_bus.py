"""The bus client every process uses: connect with endless reconnects, publish with retry
and fencing, read the last event of a subject."""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck

from jobstream.events._acks import PipelinedPublisher
from jobstream.events._catalogue import Event, TaskMessage
from jobstream.events._codec import DecodeError, decode_event, encode
from jobstream.events._errors import (
    AuthenticationError,
    ConflictError,
    ConnectError,
    PublishError,
    TlsError,
)
from jobstream.events._security import NO_SECURITY, NatsSecurity, is_auth_refusal, tls_refusal
from jobstream.events._subjects import (
    EVENTS_STREAM,
    Header,
    stored_subject,
    subject_for,
    task_due_subject,
    task_queue_subject,
    task_schedule_subject,
)
from jobstream.events._timing import at_pattern

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_RETRY_BUDGET_S = 60.0
RETRY_BASE_S = 0.05
RETRY_CAP_S = 2.0
INITIAL_CONNECT_ATTEMPTS = 2
UNCONNECTED_CLOSE_TIMEOUT_S = 0.25

T = TypeVar("T")
# A message's place in the log and its event (None: not a jobstream event).
LogPosition = tuple[int, Event | None]

# Not `ConnectionClosedError`: nats-py closes a connection for good when the server sends an
# error (a subject over the control-line limit, a protocol violation). Retrying on it never
# succeeds; the process must end (its supervisor restarts it) or open a new connection.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    asyncio.TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    # Some APIError subclasses (KeyWrongLastSequenceError) are raised without a `code`.
    code = getattr(exc, "code", None)
    return isinstance(exc, nats.js.errors.APIError) and code in (408, 503)


def backoff_s(attempt: int, *, base_s: float = RETRY_BASE_S, cap_s: float = RETRY_CAP_S) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt, 30)))


async def with_retry(
    operation: Callable[[], Awaitable[T]], *, what: str, budget_s: float = PUBLISH_RETRY_BUDGET_S
) -> T:
    """Run `operation` until it succeeds, retrying transient NATS errors within `budget_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_transient(exc) or loop.time() >= deadline:
                raise
            attempt += 1
            log.warning("%s: %s, retry %d", what, type(exc).__name__, attempt)
            await asyncio.sleep(backoff_s(attempt))


class Bus:
    """A NATS connection with the JetStream context and jobstream's publish rules."""

    def __init__(self, nc: NatsClient, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js
        self._pipeline = PipelinedPublisher(nc, timeout_s=PUBLISH_TIMEOUT_S)

    @classmethod
    async def connect(
        cls,
        servers: Sequence[str],
        *,
        name: str,
        connect_timeout_s: float = 5.0,
        security: NatsSecurity = NO_SECURITY,
    ) -> "Bus":
        """Connect to NATS, then reconnect forever: a restart of the server is not an exit.

        A first connect that the server refuses (credentials, TLS) ends at once with
        `AuthenticationError` or `TlsError`: every retry would get the same answer."""
        url = ",".join(servers)
        connected = False

        async def on_error(exc: Exception) -> None:
            # Failed first attempts are reported once, by the errors below.
            log.log(logging.WARNING if connected else logging.DEBUG, "nats: %s", exc)
            if not connected:
                _raise_if_refused(url, exc)

        nc = NatsClient()
        try:
            await nc.connect(
                list(servers),
                name=name,
                connect_timeout=int(max(1, connect_timeout_s)),
                max_reconnect_attempts=INITIAL_CONNECT_ATTEMPTS,
                reconnect_time_wait=1,
                error_cb=on_error,
                drain_timeout=5,
                **security.connect_options(),
            )
        except ConnectError:
            await _close_unconnected(nc)
            raise
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            await _close_unconnected(nc)
            _raise_if_refused(url, exc)
            raise ConnectError("NATS", url, str(exc) or type(exc).__name__) from exc
        connected = True
        # Once connected, reconnect forever: a server restart or a leader change is not an exit.
        nc.options["max_reconnect_attempts"] = -1
        return cls(nc, nc.jetstream(timeout=PUBLISH_TIMEOUT_S))

    async def close(self) -> None:
        await self._pipeline.close()
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (TimeoutError, nats.errors.Error):
                await self.nc.close()

    async def publish_event(
        self, event: Event, *, expected_last_subject_seq: int | None = None
    ) -> int:
        """Append `event` to the log; return its stream sequence.

        The event id is the `Nats-Msg-Id`, so a retry after a lost ack is a no-op. With
        `expected_last_subject_seq` the write is fenced: it lands only if the subject's last
        sequence is still that one, else `ConflictError` (unless the last message is this very
        event, written by an earlier try whose ack was lost).
        """
        subject = subject_for(event)
        headers = {Header.MSG_ID.value: event.id}
        if expected_last_subject_seq is not None:
            headers[Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value] = str(expected_last_subject_seq)
        try:
            return await self._publish(subject, encode(event), headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE or expected_last_subject_seq is None:
                raise PublishError(subject, str(exc)) from exc
        last = await self.last_on_subject(subject)
        if last is not None and last[1] is not None and last[1].id == event.id:
            return last[0]
        raise ConflictError(
            subject, expected_last_subject_seq, last[0] if last is not None else None
        )

    async def publish_task(self, queue: str, message: TaskMessage, *, msg_id: str) -> int:
        subject = task_queue_subject(queue, message.job_id, level=message.level)
        return await self._publish(subject, encode(message), {Header.MSG_ID.value: msg_id})

    async def schedule_task(
        self, queue: str, message: TaskMessage, *, msg_id: str, at: datetime
    ) -> int:
        """Have the server queue `message` at `at` (a message schedule): until then it waits
        in the tasks stream, on a subject no worker takes, holding no slot of the queue's
        consumers. When it fires, the server queues a copy (without the message id) on the
        queue's due subject and removes the schedule; a newer schedule of the same task
        replaces one not yet fired."""
        level = message.level
        target = task_due_subject(queue, message.job_id)
        subject = task_schedule_subject(queue, message.job_id, message.task_id, level=level)
        headers = {
            Header.MSG_ID.value: msg_id,
            Header.SCHEDULE.value: at_pattern(at),
            Header.SCHEDULE_TARGET.value: target,
        }
        return await self._publish(subject, encode(message), headers)

    async def start_event_publish(
        self, event: Event, *, expected_last_subject_seq: int | None = None
    ) -> "asyncio.Future[PubAck]":
        """Send `event` without waiting: the future gets its ack, or the error that calls for
        `publish_event` (transient, a lost ack, or a fence to look into)."""
        headers = {Header.MSG_ID.value: event.id}
        if expected_last_subject_seq is not None:
            headers[Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value] = str(expected_last_subject_seq)
        return await self._pipeline.publish(subject_for(event), encode(event), headers)

    async def start_task_publish(
        self, queue: str, message: TaskMessage, *, msg_id: str
    ) -> "asyncio.Future[PubAck]":
        """Send a task message without waiting, as `start_event_publish`."""
        subject = task_queue_subject(queue, message.job_id, level=message.level)
        return await self._pipeline.publish(subject, encode(message), {Header.MSG_ID.value: msg_id})

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publish and wait for the ack: first pipelined, then, on a transient failure, awaited
        with retries (same `Nats-Msg-Id`, so a write that did land is not doubled)."""
        try:
            return (await (await self._pipeline.publish(subject, payload, headers))).seq
        except Exception as exc:
            if not is_transient(exc):
                raise

        async def publish() -> int:
            ack = await self.js.publish(
                subject, payload, headers=headers, timeout=PUBLISH_TIMEOUT_S
            )
            return ack.seq

        return await with_retry(publish, what=f"publish {subject}")

    async def last_on_subject(self, subject: str) -> LogPosition | None:
        """The last message published on `subject` (as the log stores it: `stored_subject`):
        its sequence and its event (None if a foreign client wrote something that is not
        one); None if the subject is empty. The sequence is the one the server compares a
        publish's `Nats-Expected-Last-Subject-Sequence` with."""
        return await self._on_subject(subject, last=True)

    async def first_on_subject(self, subject: str) -> LogPosition | None:
        """The first message on `subject` (a job's `job.submitted`), as `last_on_subject`."""
        return await self._on_subject(subject, last=False)

    async def _on_subject(self, subject: str, *, last: bool) -> LogPosition | None:
        """A task event subject is stored with its job's bucket, or as published by a
        stream made before the bucket (`ensure_streams`): both are looked up, and the later
        (or earlier) message of the two is the subject's."""
        subjects = {stored_subject(subject), subject}
        found = await asyncio.gather(*(self._direct_get(each, last=last) for each in subjects))
        positions = [position for position in found if position is not None]
        if not positions:
            return None
        pick = max if last else min
        return pick(positions, key=lambda position: position[0])

    async def event_at(self, seq: int) -> Event | None:
        """The event at sequence `seq` of the log; None if it is gone (limits, purge) or is
        not an event."""

        async def get() -> Event | None:
            try:
                raw = await self.js.get_msg(EVENTS_STREAM, seq=seq, direct=True)
            except nats.js.errors.NotFoundError:
                return None
            try:
                return decode_event(raw.data or b"")
            except DecodeError:
                return None

        return await with_retry(get, what=f"read seq {seq}")

    async def _direct_get(self, subject: str, *, last: bool) -> LogPosition | None:
        async def get() -> LogPosition | None:
            try:
                if last:
                    raw = await self.js.get_last_msg(EVENTS_STREAM, subject, direct=True)
                else:
                    raw = await self.js.get_msg(
                        EVENTS_STREAM, seq=1, subject=subject, direct=True, next=True
                    )
            except nats.js.errors.NotFoundError:
                return None
            assert raw.seq is not None
            try:
                return raw.seq, decode_event(raw.data or b"")
            except DecodeError:
                return raw.seq, None

        return await with_retry(get, what=f"read {'last' if last else 'first'} of {subject}")

    async def stream_last_seq(self, stream: str = EVENTS_STREAM) -> int:
        info = await with_retry(lambda: self.js.stream_info(stream), what=f"info {stream}")
        return info.state.last_seq


async def _close_unconnected(nc: NatsClient) -> None:
    """Release a client whose first connect failed. Closing the socket of a failed TLS
    upgrade can wait forever for the peer, so the wait is bounded."""
    try:
        await asyncio.wait_for(nc.close(), UNCONNECTED_CLOSE_TIMEOUT_S)
    except (TimeoutError, OSError, nats.errors.Error):
        log.debug("nats: the failed connection did not close in time")


def _raise_if_refused(url: str, exc: BaseException) -> None:
    """End a first connect that no retry can fix: raised from nats-py's error callback, it
    leaves `connect` at once instead of after its reconnect attempts."""
    if is_auth_refusal(exc):
        raise AuthenticationError(
            "NATS", url, "the server refused the credentials (Authorization Violation)"
        ) from exc
    reason = tls_refusal(exc)
    if reason is not None:
        raise TlsError("NATS", url, reason) from exc
