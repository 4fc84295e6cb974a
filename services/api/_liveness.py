"""The workers' liveness records laid over the read model: tasks in flight show as running
within a second, whatever their length, and a live worker's "last seen" is its last record.

The read model only knows a task runs from a `task.started` (sent for slow tasks only) or a
`task.progress`; the liveness bucket knows every message in flight. One background task
keeps the bucket in memory (`LivenessWatch`); requests read that copy, never NATS.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from jobstream.events import (
    LIVENESS_BUCKET,
    Bus,
    DecodeError,
    Liveness,
    RunningTask,
    chunk_index_of,
    decode_liveness,
    task_id_for,
)

log = logging.getLogger("jobstream.api")

WATCH_RETRY_S = 2.0
# How long the watch waits for an update before checking that its connection is the same.
WATCH_POLL_S = 5.0
WORK_MAX_AGE_S = 0.5
CLOSE_POLL_S = 0.5


# Read-model task states that a task in flight may still have: not taken yet as far as the
# log says, or between a failed attempt and its retry.
WAITING_STATES = ("queued", "failed")


@dataclass(frozen=True)
class LiveWork:
    """What the fresh liveness records say, at one moment: the tasks in flight (a chunk's
    tasks each), by job, with the worker holding each, and when each worker was seen."""

    tasks_by_job: dict[str, list[str]] = field(default_factory=dict)
    worker_by_task: dict[str, str] = field(default_factory=dict)
    seen_at: dict[str, datetime] = field(default_factory=dict)

    def tasks_of(self, job_id: str) -> list[str]:
        return self.tasks_by_job.get(job_id, [])

    def live_task_ids(self, job_ids: Iterable[str]) -> list[str]:
        return [task_id for job_id in job_ids for task_id in self.tasks_of(job_id)]


def _task_ids(running: RunningTask) -> list[str]:
    """The tasks a message in flight carries: itself, or a chunk's consecutive tasks."""
    first = chunk_index_of(running.job_id, running.task_id)
    if first is None:  # a task, or not one of our chunk ids (a foreign record's)
        return [running.task_id]
    return [task_id_for(running.job_id, first + index) for index in range(running.tasks)]


def live_work(records: Mapping[str, Liveness], now: float) -> LiveWork:
    """The work in flight of the fresh records; records older than two of their leases do
    not count."""
    work = LiveWork()
    for worker_id, record in records.items():
        if not record.is_fresh(now):
            continue
        work.seen_at[worker_id] = datetime.fromtimestamp(record.at, tz=UTC)
        for running in record.running:
            task_ids = _task_ids(running)
            work.tasks_by_job.setdefault(running.job_id, []).extend(task_ids)
            for task_id in task_ids:
                work.worker_by_task[task_id] = worker_id
    return work


def overlay_counts(counts: Mapping[str, int], waiting_live: Mapping[str, int]) -> dict[str, int]:
    """A job's task counts by state, with its tasks in flight that the read model still has
    as queued or failed (`waiting_live`, by state) counted as running."""
    moved = {
        state: min(waiting_live.get(state, 0), counts.get(state, 0)) for state in WAITING_STATES
    }
    overlaid = {**counts, "running": counts.get("running", 0) + sum(moved.values())}
    for state, n in moved.items():
        overlaid[state] = counts.get(state, 0) - n
    return overlaid


def overlay_status(status: str, running: int) -> str:
    """A queued job with a task running is running."""
    return "running" if status == "queued" and running > 0 else status


def overlay_task(
    state: str, worker_id: str | None, live_worker: str | None
) -> tuple[str, str | None]:
    """A task that the read model has as queued or failed but that a live worker holds is
    running on it."""
    if state in WAITING_STATES and live_worker is not None:
        return "running", live_worker
    return state, worker_id


def overlay_last_seen(read_model: datetime | None, live: datetime | None) -> datetime | None:
    """A live worker was last seen at its last record; any other, at its last event."""
    return live if live is not None else read_model


class LivenessWatch:
    """The liveness bucket in memory, kept by one background task that watches it; it waits
    for the NATS connection that `get_bus` gives, and watches again after a reconnect."""

    def __init__(self, get_bus: Callable[[], Bus | None]) -> None:
        self._get_bus = get_bus
        self.records: dict[str, Liveness] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # `work()` is computed at most once per WORK_MAX_AGE_S while no record changes.
        self._work: tuple[float, LiveWork] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop watching, for sure: a cancel alone is not enough, as nats-py's watcher may
        swallow one (a message landing as the wait is cancelled)."""
        self._closing = True
        task = self._task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_POLL_S)

    def work(self, now: float | None = None) -> LiveWork:
        now = time.time() if now is None else now
        if self._work is None or not 0 <= now - self._work[0] < WORK_MAX_AGE_S:
            self._work = now, live_work(self.records, now)
        return self._work[1]

    async def _run(self) -> None:
        while not self._closing:
            bus = self._get_bus()
            if bus is None or not bus.nc.is_connected:
                await asyncio.sleep(WATCH_RETRY_S / 4)
                continue
            try:
                await self._watch(bus)
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
                log.warning("liveness watch: %s; watching again", type(exc).__name__)
                await asyncio.sleep(WATCH_RETRY_S)

    async def _watch(self, bus: Bus) -> None:
        """Follow the bucket until the connection changes (a new one, or a reconnect, after
        which the watch's consumer may be gone)."""
        reconnects = bus.nc.stats["reconnects"]
        kv = await bus.js.key_value(LIVENESS_BUCKET)
        watcher = await kv.watchall()
        try:
            while (
                not self._closing
                and self._get_bus() is bus
                and bus.nc.stats["reconnects"] == reconnects
            ):
                try:
                    entry = await watcher.updates(timeout=WATCH_POLL_S)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if entry is not None:  # None: the initial values are all in
                    self._apply(entry)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, entry: KeyValue.Entry) -> None:
        self._work = None
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self.records.pop(entry.key, None)
            return
        try:
            self.records[entry.key] = decode_liveness(entry.value)
        except DecodeError as exc:
            log.warning("liveness record of %r ignored: %s", entry.key[:40], exc)
            self.records.pop(entry.key, None)


async def read_liveness(bus: Bus) -> dict[str, Liveness]:
    """Every liveness record, read once (for a one-shot command, not a server)."""
    kv = await bus.js.key_value(LIVENESS_BUCKET)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    records: dict[str, Liveness] = {}
    for key in keys:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, DecodeError):
            entry = await kv.get(key)
            if entry.value:
                records[key] = decode_liveness(entry.value)
    return records
