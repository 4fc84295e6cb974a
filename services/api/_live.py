"""The API's view of the event log itself: a job's history, readiness with projector lag,
Prometheus metrics and a live server-sent event stream."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import nats.errors
import nats.js.errors
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel, JsonValue

from jobstream.events import (
    DISPATCHER_BUCKET,
    EVENT_SUBJECTS,
    EVENTS_STREAM,
    NO_SECURITY,
    POSTGRES_PROJECTION,
    PROGRESS_KEY,
    Bus,
    ConnectError,
    DispatcherProgress,
    NatsSecurity,
    SourceItem,
    combined_checkpoints,
    decode_event,
    decode_progress,
    event_batches,
    event_type,
    job_subject,
    job_task_events_subject,
)
from jobstream.services.api._cursors import EventCursor, decode_cursor, encode_cursor
from jobstream.services.api._errors import RETRY_AFTER_S, ErrorBody
from jobstream.services.api._params import (
    LOG_READS,
    RETRY_AFTER,
    JobIdPath,
    OptionalJobIdQuery,
    json_error,
)

log = logging.getLogger("jobstream.api")

HISTORY_LIMIT = 10_000
DEFAULT_HISTORY_PAGE = 1000
READY_MAX_LAG_EVENTS = 10_000
DEFAULT_READY_MAX_LAG_S = 30.0
NATS_CHECK_TIMEOUT_S = 2.0
REQUIRED_PROJECTION = POSTGRES_PROJECTION
DISPATCHER = "dispatcher"
SSE_QUEUE_SIZE = 1_000
SSE_KEEPALIVE_S = 15.0
BUS_RETRY_S = 2.0

live_router = APIRouter()


class LiveLog:
    """The API's NATS connection: opened in the background so the API starts without NATS,
    and opened anew if the server ever closes it (nats-py does not reconnect a closed one)."""

    def __init__(self, nats_urls: list[str], security: NatsSecurity = NO_SECURITY) -> None:
        self.nats_urls = nats_urls
        self.security = security
        self.bus: Bus | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self.nats_urls:
            self._reconnect()

    def _reconnect(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        while True:
            try:
                bus = await Bus.connect(
                    self.nats_urls, name="jobstream-api", security=self.security
                )
            except ConnectError as exc:
                log.warning("%s; retrying", exc)
                await asyncio.sleep(BUS_RETRY_S)
                continue
            old, self.bus = self.bus, bus
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()
            return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.bus is not None:
            await self.bus.close()

    def connected(self) -> Bus | None:
        """The connection if it is up; a closed one is replaced in the background."""
        bus = self.bus
        if bus is not None and bus.nc.is_closed:
            log.warning("the NATS connection was closed; opening a new one")
            self._reconnect()
            return None
        return bus if bus is not None and bus.nc.is_connected else None

    def require(self) -> Bus:
        bus = self.connected()
        if bus is None:
            raise HTTPException(
                503,
                "the event log (NATS) is not reachable; try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return bus


def _live(request: Request) -> LiveLog:
    live: LiveLog = request.app.state.live_log
    return live


class EventEntry(BaseModel):
    seq: int
    subject: str
    # The event as JSON; null if the message is not a jobstream event (then `error` says why).
    event: dict[str, JsonValue] | None
    error: str | None


class EventPage(BaseModel):
    job_id: str
    events: list[EventEntry]
    # Pass back as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class ConsumerProgress(BaseModel):
    applied_seq: int
    behind_events: int
    # The age of the oldest event not yet applied (0 when caught up).
    behind_s: float


class Readiness(BaseModel):
    ready: bool
    nats: bool
    postgres: bool
    log_last_seq: int | None
    # The dispatcher and each projection: how far they have applied the log.
    consumers: dict[str, ConsumerProgress]
    # Batches of job tasks whose task rows the projector's lister is still to write (they
    # follow the job's other events by design: not a problem). None: not known.
    task_batches_unlisted: int | None = None
    # Why not ready (empty when ready).
    problems: list[str]


def _entry_json(entry: SourceItem) -> dict[str, Any]:
    event = msgspec.to_builtins(entry.event) if entry.event is not None else None
    error = str(entry.error) if entry.error is not None else None
    return {"seq": entry.seq, "subject": entry.subject, "event": event, "error": error}


async def _read_subject(bus: Bus, subject: str, *, after_seq: int, count: int) -> list[SourceItem]:
    """Up to `count` messages on `subject` (a wildcard is fine) after `after_seq`, in log
    order."""
    last = await bus.last_on_subject(subject)
    if last is None or last[0] <= after_seq:
        return []
    entries: list[SourceItem] = []
    stop = asyncio.Event()
    batches = event_batches(bus, start_seq=after_seq + 1, stop=stop, filter_subject=subject)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            entries.extend(batch)
            if batch[-1].seq >= last[0] or len(entries) >= count:
                break
    return entries[:count]


@live_router.get(
    "/jobs/{job_id}/events",
    response_model=EventPage,
    responses={404: {"model": ErrorBody, "description": "No such job in the log"}, **LOG_READS},
)
async def job_events(
    request: Request,
    job_id: JobIdPath,
    limit: Annotated[
        int, Query(ge=1, le=HISTORY_LIMIT, description=f"events per page, 1..{HISTORY_LIMIT}")
    ] = DEFAULT_HISTORY_PAGE,
    cursor: Annotated[
        str | None, Query(min_length=1, max_length=100, description="next_cursor of a page")
    ] = None,
) -> JSONResponse:
    """A job's history, straight from the event log: its job events and all its task events,
    in log order, a page at a time."""
    after = decode_cursor(cursor, EventCursor)
    after_seq = after.seq if after is not None else 0
    bus = _live(request).require()
    job_entries, task_entries = await asyncio.gather(
        _read_subject(bus, job_subject(job_id), after_seq=after_seq, count=limit + 1),
        _read_subject(bus, job_task_events_subject(job_id), after_seq=after_seq, count=limit + 1),
    )
    if not job_entries and await bus.first_on_subject(job_subject(job_id)) is None:
        raise HTTPException(404, f"job {job_id} not found in the event log")
    entries = sorted([*job_entries, *task_entries], key=lambda entry: entry.seq)
    page = entries[:limit]
    next_cursor = encode_cursor(EventCursor(page[-1].seq)) if len(entries) > limit else None
    body = {"job_id": job_id, "events": [_entry_json(e) for e in page], "next_cursor": next_cursor}
    return JSONResponse(body)


async def _progress(request: Request, bus: Bus | None) -> tuple[int | None, dict[str, int]]:
    """The log's last sequence (None without NATS), and the sequence each consumer has
    applied: the Postgres projections from their checkpoints, the dispatcher from its
    progress key."""
    applied: dict[str, int] = {}
    last_seq = None
    if bus is not None:
        with contextlib.suppress(Exception):
            last_seq = await asyncio.wait_for(bus.stream_last_seq(), NATS_CHECK_TIMEOUT_S)
        with contextlib.suppress(Exception):
            progress = await asyncio.wait_for(_dispatcher_progress(bus), NATS_CHECK_TIMEOUT_S)
            if progress is not None:
                applied[DISPATCHER] = progress.last_seq
    read_models = request.app.state.read_models
    async with read_models.connection() as conn:
        rows = await conn.fetch(request.app.state.sql["list_checkpoints"])
    # A partitioned projection is as far as its slowest partition.
    applied |= combined_checkpoints({row["projection"]: row["last_seq"] for row in rows})
    return last_seq, applied


async def _dispatcher_progress(bus: Bus) -> DispatcherProgress | None:
    kv = await bus.js.key_value(DISPATCHER_BUCKET)
    try:
        entry = await kv.get(PROGRESS_KEY)
    except nats.js.errors.KeyNotFoundError:
        return None
    return decode_progress(entry.value or b"")


async def _consumers(
    bus: Bus | None, last_seq: int | None, applied: dict[str, int]
) -> dict[str, ConsumerProgress]:
    consumers: dict[str, ConsumerProgress] = {}
    if bus is None or last_seq is None:
        return consumers
    for name, seq in applied.items():
        behind = max(0, last_seq - seq)
        behind_s = await _age_of(bus, seq + 1) if behind else 0.0
        consumers[name] = ConsumerProgress(applied_seq=seq, behind_events=behind, behind_s=behind_s)
    return consumers


async def _age_of(bus: Bus, seq: int) -> float:
    """How long ago the event at `seq` was written (0 if it cannot be read)."""
    with contextlib.suppress(Exception):
        raw = await asyncio.wait_for(
            bus.js.get_msg(EVENTS_STREAM, seq=seq, direct=True), NATS_CHECK_TIMEOUT_S
        )
        if raw.time is not None:
            return max(0.0, (datetime.now(UTC) - raw.time).total_seconds())
    return 0.0


async def projection_lag(request: Request, projection: str) -> ConsumerProgress | None:
    """How far `projection` is behind the log; None if NATS or PostgreSQL cannot say."""
    bus = _live(request).connected()
    if bus is None:
        return None
    last_seq, applied = await _progress(request, bus)
    if projection not in applied:
        return None
    consumers = await _consumers(bus, last_seq, {projection: applied[projection]})
    return consumers.get(projection)


async def _readiness(request: Request) -> Readiness:
    bus = _live(request).connected()
    problems: list[str] = []
    postgres = True
    last_seq: int | None = None
    consumers: dict[str, ConsumerProgress] = {}
    try:
        last_seq, applied = await _progress(request, bus)
        consumers = await _consumers(bus, last_seq, applied)
    except Exception as exc:
        postgres = False
        problems.append(f"PostgreSQL: {exc}")
    nats_ok = last_seq is not None
    if not nats_ok:
        problems.append("NATS: the event log cannot be read")
    if postgres and nats_ok and REQUIRED_PROJECTION not in consumers:
        problems.append(f"the {REQUIRED_PROJECTION} projection has not started")
    max_lag_s: float = request.app.state.ready_max_lag_s
    for name, progress in consumers.items():
        # The dispatcher's position is a sample taken each second: at full speed it is
        # thousands of events old, so it is judged by time alone.
        if name != DISPATCHER and progress.behind_events > READY_MAX_LAG_EVENTS:
            problems.append(f"{name} is {progress.behind_events:,} events behind the log")
        elif progress.behind_s > max_lag_s:
            problems.append(f"{name} has not applied an event written {progress.behind_s:.0f}s ago")
    return Readiness(
        ready=not problems,
        nats=nats_ok,
        postgres=postgres,
        log_last_seq=last_seq,
        consumers=consumers,
        task_batches_unlisted=await _unlisted_batches(request) if postgres else None,
        problems=problems,
    )


async def _unlisted_batches(request: Request) -> int | None:
    try:
        async with request.app.state.read_models.connection() as conn:
            count = await conn.fetchval(request.app.state.sql["count_unlisted_batches"])
    except Exception:  # read models older than the table: not known
        return None
    return int(count)


@live_router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: `problems` says why"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready when NATS and PostgreSQL answer and the dispatcher and every projection keep up
    with the log: fewer than READY_MAX_LAG_EVENTS behind, and no event waiting longer than the
    API's `ready_max_lag_s`. A stuck or stopped process makes the API not ready."""
    readiness = await _readiness(request)
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)


@live_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: log length, each consumer's position and lag, events set aside,
    jobs by status."""
    registry = CollectorRegistry()
    last = Gauge("jobstream_log_last_seq", "Last sequence of the event log", registry=registry)
    applied = Gauge(
        "jobstream_consumer_applied_seq",
        "Last log sequence a consumer (dispatcher, projection) has applied",
        ["consumer"],
        registry=registry,
    )
    lag = Gauge(
        "jobstream_consumer_lag_events",
        "Events between the log's end and what a consumer has applied",
        ["consumer"],
        registry=registry,
    )
    lag_seconds = Gauge(
        "jobstream_consumer_lag_seconds",
        "Age of the oldest event a consumer has not applied (0: caught up)",
        ["consumer"],
        registry=registry,
    )
    set_aside = Gauge(
        "jobstream_events_set_aside",
        "Events set aside as unusable (poison): by the dispatcher, and parked by projections",
        ["by"],
        registry=registry,
    )
    jobs = Gauge(
        "jobstream_jobs", "Jobs in the read model by status", ["status"], registry=registry
    )
    unlisted = Gauge(
        "jobstream_task_batches_unlisted",
        "Batches of job tasks whose task rows the projector is still to write",
        registry=registry,
    )
    bus = _live(request).connected()
    with contextlib.suppress(Exception):
        if bus is not None:
            progress = await asyncio.wait_for(_dispatcher_progress(bus), NATS_CHECK_TIMEOUT_S)
            if progress is not None:
                set_aside.labels(by=DISPATCHER).set(progress.set_aside)
        last_seq, positions = await _progress(request, bus)
        if last_seq is not None:
            last.set(last_seq)
        for name, progress_of in (await _consumers(bus, last_seq, positions)).items():
            applied.labels(consumer=name).set(progress_of.applied_seq)
            lag.labels(consumer=name).set(progress_of.behind_events)
            lag_seconds.labels(consumer=name).set(progress_of.behind_s)
        async with request.app.state.read_models.connection() as conn:
            for row in await conn.fetch(request.app.state.sql["count_jobs_by_status"]):
                jobs.labels(status=row["status"]).set(row["n"])
            parked = await conn.fetchval(request.app.state.sql["count_rejected_events"])
            set_aside.labels(by="projections").set(parked)
    pending = await _unlisted_batches(request)
    if pending is not None:
        unlisted.set(pending)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


class _Viewer:
    """One client of the live stream: its frames to send, and the job it follows (None: all)."""

    def __init__(self, job_id: str | None) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(SSE_QUEUE_SIZE)
        self.job_id = job_id
        self.dropped = 0

    def wants(self, subject: str) -> bool:
        if self.job_id is None:
            return True
        tokens = subject.split(".")
        return len(tokens) >= 3 and tokens[1] in ("job", "task") and tokens[2] == self.job_id


class EventFanout:
    """One NATS subscription on every event subject, shared by all viewers of the live stream:
    each message is framed once and copied to the queue of each viewer that wants it (a full
    queue drops the frame for that viewer only). Subscribed while anyone watches, and again
    on a new connection after the old one closed."""

    def __init__(self, live_log: LiveLog) -> None:
        self._live_log = live_log
        self._viewers: set[_Viewer] = set()
        self._subscription: Subscription | None = None
        self._bus: Bus | None = None
        self._lock = asyncio.Lock()

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    @property
    def subscriptions(self) -> int:
        """NATS subscriptions held: 1 while anyone watches, else 0."""
        return 0 if self._subscription is None else 1

    async def join(self, job_id: str | None) -> _Viewer:
        viewer = _Viewer(job_id)
        self._viewers.add(viewer)
        try:
            await self.ensure_subscribed(self._live_log.require())
        except BaseException:
            self._viewers.discard(viewer)
            raise
        return viewer

    async def ensure_subscribed(self, bus: Bus) -> None:
        """Subscribe on `bus` unless already subscribed there; flushed, so the server has the
        subscription when this returns."""
        async with self._lock:
            if self._subscription is not None and self._bus is bus:
                return
            await self._unsubscribe()
            self._subscription = await bus.nc.subscribe(EVENT_SUBJECTS, cb=self._deliver)
            self._bus = bus
            await bus.nc.flush(timeout=int(NATS_CHECK_TIMEOUT_S))

    async def leave(self, viewer: _Viewer) -> None:
        self._viewers.discard(viewer)
        if not self._viewers:
            async with self._lock:
                if not self._viewers:
                    await self._unsubscribe()

    async def refresh(self) -> None:
        """Resubscribe if the connection was replaced (called on each keep-alive)."""
        bus = self._live_log.connected()
        if bus is not None and bus is not self._bus and self._viewers:
            await self.ensure_subscribed(bus)

    async def _unsubscribe(self) -> None:
        subscription, self._subscription, self._bus = self._subscription, None, None
        if subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def _deliver(self, msg: Msg) -> None:
        frame: bytes | None = None
        for viewer in self._viewers:
            if not viewer.wants(msg.subject):
                continue
            frame = frame or _sse(msg)
            try:
                viewer.queue.put_nowait(frame)
            except asyncio.QueueFull:
                viewer.dropped += 1


def _fanout(request: Request) -> EventFanout:
    fanout: EventFanout | None = getattr(request.app.state, "event_fanout", None)
    if fanout is None:
        fanout = request.app.state.event_fanout = EventFanout(_live(request))
    return fanout


@live_router.get(
    "/events/stream",
    response_class=EventStreamResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-sent events: `event: <type>`, `id:`, `data: <event JSON>`",
        },
        422: json_error("A bad query value"),
        503: json_error("The event log (NATS) is not reachable", RETRY_AFTER),
    },
)
async def event_stream(request: Request, job_id: OptionalJobIdQuery = None) -> EventStreamResponse:
    """Live events as server-sent events (`event: <type>`, `data: <json>`), optionally one
    job's only. Live only: use `/jobs/{id}/events` or a JetStream consumer for history. One
    NATS subscription serves every viewer; a viewer too slow to keep up loses events (a
    `: dropped N` comment says how many)."""
    fanout = _fanout(request)
    viewer = await fanout.join(job_id)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                try:
                    frame = await asyncio.wait_for(viewer.queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    await fanout.refresh()
                    yield b": keep-alive\n\n"
                    continue
                if viewer.dropped:
                    yield f": dropped {viewer.dropped}\n\n".encode()
                    viewer.dropped = 0
                yield frame
        finally:
            await fanout.leave(viewer)

    return EventStreamResponse(body())


def _sse(msg: Msg) -> bytes:
    try:
        name = event_type(decode_event(msg.data))
    except ValueError:
        name = "malformed"
    stamp = datetime.now(UTC).isoformat()
    return f"event: {name}\nid: {stamp}\ndata: ".encode() + msg.data.replace(b"\n", b" ") + b"\n\n"
