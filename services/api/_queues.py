"""`GET /queues`: each queue's depth per priority level, from JetStream's consumer info.

One listing of the task stream's consumers answers for every queue; it is kept for
`QUEUES_CACHE_S`, and concurrent requests share one call, so N viewers cost one request to
the server every few seconds.
"""

import asyncio
import time
from datetime import UTC, datetime
from typing import Literal

import nats.errors
import nats.js.errors
from fastapi import APIRouter, HTTPException, Request
from nats.js.api import ConsumerInfo
from pydantic import BaseModel, ConfigDict, Field

from jobstream.events import TASKS_STREAM, Bus
from jobstream.services.api._errors import RETRY_AFTER_S
from jobstream.services.api._params import LOG_READS

QUEUES_CACHE_S = 3.0
LIST_TIMEOUT_S = 5.0
# The server lists at most this many consumers per request.
_LIST_PAGE = 256
_LEVEL_PREFIXES: tuple[tuple[str, "Level"], ...] = (
    ("high-workers-", "high"),
    ("low-workers-", "low"),
    ("due-workers-", "due"),
    ("workers-", "normal"),
)
_LEVEL_ORDER = {"high": 0, "normal": 1, "low": 2, "due": 3}

Level = Literal["high", "normal", "low", "due"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class LevelDepth(_Model):
    """One priority level of a queue: its durable pull consumer's counters."""

    # high | normal | low: a priority level; due: the queue's deferred tasks that came due.
    level: Level
    consumer: str
    # Messages in the stream for this level that no worker has been handed yet.
    pending: int = Field(ge=0)
    # Handed to a worker and not acknowledged yet: in flight.
    ack_pending: int = Field(ge=0)
    # Pull requests waiting for a message (idle fetches of the queue's workers).
    waiting: int = Field(ge=0)
    # Messages handed out more than once (lease expired, retried) and not acknowledged yet.
    redelivered: int = Field(ge=0)


class QueueDepth(_Model):
    queue: str
    # Sums over the levels.
    pending: int = Field(ge=0)
    ack_pending: int = Field(ge=0)
    waiting: int = Field(ge=0)
    redelivered: int = Field(ge=0)
    # The queue's durable consumers (one per level, and one of its due tasks).
    consumers: int = Field(ge=0)
    levels: list[LevelDepth]


class QueueList(_Model):
    queues: list[QueueDepth]
    # When JetStream was asked (the answer is kept for a few seconds).
    as_of: datetime


def level_of_consumer(name: str) -> tuple[str, Level] | None:
    """The queue and level a worker consumer's name stands for (`events.worker_consumer_name`,
    `events.due_consumer_name`); None for a consumer of anything else."""
    for prefix, level in _LEVEL_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name.removeprefix(prefix), level
    return None


def queue_depths(infos: list[ConsumerInfo], as_of: datetime) -> QueueList:
    levels: dict[str, list[LevelDepth]] = {}
    for info in infos:
        named = level_of_consumer(info.name)
        if named is None:
            continue
        queue, level = named
        levels.setdefault(queue, []).append(
            LevelDepth(
                level=level,
                consumer=info.name,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                waiting=info.num_waiting or 0,
                redelivered=info.num_redelivered or 0,
            )
        )
    queues = []
    for queue in sorted(levels):
        rows = sorted(levels[queue], key=lambda row: _LEVEL_ORDER[row.level])
        queues.append(
            QueueDepth(
                queue=queue,
                pending=sum(row.pending for row in rows),
                ack_pending=sum(row.ack_pending for row in rows),
                waiting=sum(row.waiting for row in rows),
                redelivered=sum(row.redelivered for row in rows),
                consumers=len(rows),
                levels=rows,
            )
        )
    return QueueList(queues=queues, as_of=as_of)


async def _list_consumers(bus: Bus) -> list[ConsumerInfo]:
    infos: list[ConsumerInfo] = []
    while True:
        page = await bus.js.consumers_info(TASKS_STREAM, offset=len(infos))
        infos.extend(page)
        if len(page) < _LIST_PAGE:
            return infos


class QueueDepthCache:
    """The last listing, or the last failure to list, kept `ttl_s`; one call in flight at a
    time (so an unreachable server costs one timeout per `ttl_s`, not one per viewer)."""

    def __init__(self, ttl_s: float = QUEUES_CACHE_S) -> None:
        self.ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._value: QueueList | BaseException | None = None
        self._taken = 0.0

    async def get(self, bus: Bus) -> QueueList:
        async with self._lock:
            if self._value is None or time.monotonic() - self._taken >= self.ttl_s:
                try:
                    infos = await asyncio.wait_for(_list_consumers(bus), LIST_TIMEOUT_S)
                    self._value = queue_depths(infos, datetime.now(UTC))
                except (TimeoutError, nats.errors.Error) as exc:
                    self._value = exc
                self._taken = time.monotonic()
            if isinstance(self._value, BaseException):
                raise self._value.with_traceback(None)
            return self._value


queues_router = APIRouter()


@queues_router.get("/queues", responses=LOG_READS)
async def list_queues(request: Request) -> QueueList:
    """Every queue with its depth per priority level, from JetStream (kept a few seconds)."""
    bus = request.app.state.live_log.require()
    cache: QueueDepthCache = request.app.state.queue_depths
    try:
        return await cache.get(bus)
    except nats.js.errors.NotFoundError:
        return QueueList(queues=[], as_of=datetime.now(UTC))  # no task stream yet: no queues
    except (TimeoutError, nats.errors.Error) as exc:
        raise HTTPException(
            503,
            f"JetStream did not list the queues: {type(exc).__name__}; try again shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from exc
