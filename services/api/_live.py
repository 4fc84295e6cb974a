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
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from nats.aio.msg import Msg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from events import (
    EVENT_SUBJECTS,
    EVENTS_STREAM,
    Bus,
    ConnectError,
    NameKind,
    SourceItem,
    check_name,
    decode_event,
    event_batches,
    event_type,
    job_subject,
    job_task_events_subject,
)

log = logging.getLogger("jobstream.api")

HISTORY_LIMIT = 10_000
READY_MAX_LAG_EVENTS = 10_000
REQUIRED_PROJECTION = "postgres"
SSE_QUEUE_SIZE = 1_000
SSE_KEEPALIVE_S = 15.0
BUS_RETRY_S = 2.0

live_router = APIRouter()


class LiveLog:
    """A NATS connection for the API, opened in the background so the API starts without it."""

    def __init__(self, nats_urls: list[str]) -> None:
        self.nats_urls = nats_urls
        self.bus: Bus | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self.nats_urls:
            self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        while self.bus is None:
            try:
                self.bus = await Bus.connect(self.nats_urls, name="jobstream-api")
            except ConnectError as exc:
                log.warning("%s; retrying", exc)
                await asyncio.sleep(BUS_RETRY_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.bus is not None:
            await self.bus.close()

    def require(self) -> Bus:
        if self.bus is None or not self.bus.nc.is_connected:
            raise HTTPException(503, "the event log (NATS) is not reachable; try again shortly")
        return self.bus


def _live(request: Request) -> LiveLog:
    live: LiveLog = request.app.state.live_log
    return live


def _job_id(value: str) -> str:
    try:
        return check_name(value, NameKind.JOB_ID)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _entry_json(entry: SourceItem) -> dict[str, Any]:
    event = msgspec.to_builtins(entry.event) if entry.event is not None else None
    error = str(entry.error) if entry.error is not None else None
    return {"seq": entry.seq, "subject": entry.subject, "event": event, "error": error}


async def _read_subject(bus: Bus, subject: str, limit: int) -> list[SourceItem]:
    """Every message on `subject` (a wildcard is fine), up to `limit`, in log order."""
    last = await bus.last_on_subject(subject)
    if last is None:
        return []
    entries: list[SourceItem] = []
    stop = asyncio.Event()
    batches = event_batches(bus, start_seq=1, stop=stop, filter_subject=subject)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            entries.extend(batch)
            if batch[-1].seq >= last[0] or len(entries) >= limit:
                break
    return entries[:limit]


@live_router.get("/jobs/{job_id}/events")
async def job_events(
    request: Request,
    job_id: Annotated[str, Path(min_length=1)],
    limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT)] = 1000,
) -> JSONResponse:
    """A job's history, straight from the event log: its job events and all its task events,
    in log order."""
    bus = _live(request).require()
    job_id = _job_id(job_id)
    job_entries, task_entries = await asyncio.gather(
        _read_subject(bus, job_subject(job_id), limit),
        _read_subject(bus, job_task_events_subject(job_id), limit),
    )
    if not job_entries:
        raise HTTPException(404, f"job {job_id} not found in the event log")
    entries = sorted([*job_entries, *task_entries], key=lambda entry: entry.seq)[:limit]
    return JSONResponse({"job_id": job_id, "events": [_entry_json(e) for e in entries]})


async def _lag(request: Request) -> tuple[int | None, dict[str, int], dict[str, float]]:
    """The log's last sequence, and each Postgres projection's distance from it: in events,
    and in seconds (the age of the oldest event it has not applied; 0 when caught up)."""
    live = _live(request)
    last_seq = None
    if live.bus is not None and live.bus.nc.is_connected:
        with contextlib.suppress(Exception):
            last_seq = await asyncio.wait_for(live.bus.stream_last_seq(), 2)
    read_models = request.app.state.read_models
    lags: dict[str, int] = {}
    seconds: dict[str, float] = {}
    async with read_models.connection() as conn:
        rows = await conn.fetch(request.app.state.sql["list_checkpoints"])
    for row in rows:
        if last_seq is None or live.bus is None:
            continue
        name, behind = row["projection"], max(0, last_seq - row["last_seq"])
        lags[name] = behind
        seconds[name] = await _age_of(live.bus, row["last_seq"] + 1) if behind else 0.0
    return last_seq, lags, seconds


async def _age_of(bus: Bus, seq: int) -> float:
    """How long ago the event at `seq` was written (0 if it cannot be read)."""
    with contextlib.suppress(Exception):
        raw = await asyncio.wait_for(bus.js.get_msg(EVENTS_STREAM, seq=seq, direct=True), 2)
        if raw.time is not None:
            return max(0.0, (datetime.now(UTC) - raw.time).total_seconds())
    return 0.0


@live_router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when NATS and PostgreSQL answer and the Postgres projection exists and is close
    to the log's end (within READY_MAX_LAG_EVENTS)."""
    checks: dict[str, Any] = {"nats": False, "postgres": False, "projector_lag": None}
    try:
        last_seq, lags, seconds = await _lag(request)
        checks["postgres"] = True
        checks["nats"] = last_seq is not None
        checks["projector_lag"] = lags
        checks["projector_lag_seconds"] = seconds
        checks["log_last_seq"] = last_seq
    except Exception as exc:
        checks["error"] = str(exc)
    lags = checks["projector_lag"]
    lag_ok = (
        lags is not None
        and REQUIRED_PROJECTION in lags
        and all(lag <= READY_MAX_LAG_EVENTS for lag in lags.values())
    )
    ready = bool(checks["nats"] and checks["postgres"] and lag_ok)
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


@live_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: log length, projector lag, jobs by status."""
    registry = CollectorRegistry()
    last = Gauge("jobstream_log_last_seq", "Last sequence of the event log", registry=registry)
    lag = Gauge(
        "jobstream_projector_lag_events",
        "Events between the log's end and a projection's checkpoint",
        ["projection"],
        registry=registry,
    )
    lag_seconds = Gauge(
        "jobstream_projector_lag_seconds",
        "Age of the oldest event a projection has not applied (0: caught up)",
        ["projection"],
        registry=registry,
    )
    jobs = Gauge(
        "jobstream_jobs", "Jobs in the read model by status", ["status"], registry=registry
    )
    with contextlib.suppress(Exception):
        last_seq, lags, seconds = await _lag(request)
        if last_seq is not None:
            last.set(last_seq)
        for name, value in lags.items():
            lag.labels(projection=name).set(value)
            lag_seconds.labels(projection=name).set(seconds[name])
        async with request.app.state.read_models.connection() as conn:
            for row in await conn.fetch(request.app.state.sql["count_jobs_by_status"]):
                jobs.labels(status=row["status"]).set(row["n"])
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@live_router.get("/events/stream")
async def event_stream(
    request: Request, job_id: Annotated[str | None, Query(min_length=1)] = None
) -> StreamingResponse:
    """Live events as server-sent events (`event: <type>`, `data: <json>`), optionally one
    job's only. Live only: use `/jobs/{id}/events` or a JetStream consumer for history."""
    bus = _live(request).require()
    subjects = [EVENT_SUBJECTS]
    if job_id is not None:
        job_id = _job_id(job_id)
        subjects = [job_subject(job_id), job_task_events_subject(job_id)]
    queue: asyncio.Queue[Msg] = asyncio.Queue(SSE_QUEUE_SIZE)

    async def enqueue(msg: Msg) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(msg)

    subscriptions = [await bus.nc.subscribe(subject, cb=enqueue) for subject in subjects]

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                try:
                    msg = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield _sse(msg)
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()

    return StreamingResponse(body(), media_type="text/event-stream")


def _sse(msg: Msg) -> bytes:
    try:
        name = event_type(decode_event(msg.data))
    except ValueError:
        name = "malformed"
    stamp = datetime.now(UTC).isoformat()
    return f"event: {name}\nid: {stamp}\ndata: ".encode() + msg.data.replace(b"\n", b" ") + b"\n\n"
