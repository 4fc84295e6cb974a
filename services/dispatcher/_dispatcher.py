"""The dispatcher (process manager): expands submitted jobs into task messages, ends jobs
when all their tasks have ended, and reports workers whose liveness key went quiet."""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import nats.js.kv
from nats.js.api import PubAck

from jobstream.events import (
    DISPATCHER_BUCKET,
    LIVENESS_BUCKET,
    MAX_REASON_LENGTH,
    MAX_TASKS_PER_JOB,
    PROGRESS_KEY,
    TASKS_STREAM,
    TERMINAL_TASK_EVENTS,
    Bus,
    ConflictError,
    DecodeError,
    DispatcherProgress,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSealed,
    JobstreamError,
    JobSubmitted,
    JobTasksAdded,
    NameKind,
    SourceItem,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskExpander,
    TaskFailed,
    TaskMessage,
    TaskProgress,
    TaskRequeued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerForgotten,
    WorkerLost,
    WorkerStarted,
    WorkerStopped,
    check_name,
    chunk_id_for,
    decode_liveness,
    derived_id,
    encode,
    ensure_buckets,
    ensure_streams,
    event_batches,
    is_transient,
    job_of_subject,
    job_queue_purge_subjects,
    job_subject,
    level_of,
    quote,
    sleep_unless_stopped,
    stored_subject,
    subject_for,
    task_event_subject,
    task_id_for,
    utc_now,
    with_retry,
)
from jobstream.services.dispatcher._schedules import ScheduleFirer
from jobstream.services.dispatcher._state import (
    Cancellation,
    DispatcherState,
    LiveWorker,
    OpenJob,
    dump_state,
    load_state,
)

# Lost workers remembered, in case they are seen working again.
MAX_LOST_WORKERS = 10_000

log = logging.getLogger(__name__)

STATE_KEY = "state"
SNAPSHOT_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 1.0
CANCEL_CONCURRENCY = 64
# A cancelled job's tasks are ended in windows of this many; its progress is saved after each.
CANCEL_WINDOW = 2_000
# The events that end a job: after one, no other ending is written.
JOB_ENDINGS = (JobCompleted, JobFailed, JobCancelled, JobRejected)
# A job with more tasks than this is queued in the background, from the log, in windows of
# EXPANSION_WINDOW unacknowledged messages, EXPANSION_CONCURRENCY jobs at a time.
INLINE_EXPANSION_MAX = 10_000
EXPANSION_WINDOW = 2_000
EXPANSION_CONCURRENCY = 2
EXPANSION_RETRY_S = 5.0
TASK_BATCHES_READ_AHEAD = 4
DEFAULT_SUBMIT_TIMEOUT_S = 600.0
# Errors of an event's own data: acting on it again would fail again. A task message over the
# server's max_payload is one (a chunk of large tasks).
POISON_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError, nats.errors.MaxPayloadError)


class _Outbox:
    """Publishes sent and not yet confirmed, each with the awaited publish that replaces it
    if its ack fails. Settled once per batch of events: acks overlap instead of queueing."""

    def __init__(self) -> None:
        self._pending: list[tuple[asyncio.Future[PubAck], Callable[[], Awaitable[object]]]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, sent: "asyncio.Future[PubAck]", again: Callable[[], Awaitable[object]]) -> None:
        self._pending.append((sent, again))

    async def settle(self) -> None:
        pending, self._pending = self._pending, []
        for sent, again in pending:
            try:
                await sent
            except (nats.errors.Error, nats.js.errors.APIError, TimeoutError) as exc:
                log.debug("publish to be repeated, awaited: %r", exc)
                await again()


class Dispatcher:
    def __init__(
        self,
        bus: Bus,
        *,
        lease_s: float = 30.0,
        submit_timeout_s: float = DEFAULT_SUBMIT_TIMEOUT_S,
    ) -> None:
        self.bus = bus
        self.lease_s = lease_s
        self.submit_timeout_s = submit_timeout_s
        self.state = DispatcherState()
        self._dirty = False
        self._outbox = _Outbox()
        # Held while a batch of the log is applied: a snapshot is never taken halfway.
        self._applying = asyncio.Lock()
        self._expansions: dict[str, asyncio.Task[None]] = {}
        self._cancelling: dict[str, asyncio.Task[None]] = {}
        self._expansion_slots = asyncio.Semaphore(EXPANSION_CONCURRENCY)
        # Set by the first background task (queueing, cancelling, the loops) that ends on an
        # error it could not handle: `run` stops on it and raises it, rather than leave a
        # job's queueing stalled with no sign. A restart resumes from the snapshot.
        self._background_failed: asyncio.Future[BaseException] | None = None

    def _background(self, work: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        task = asyncio.create_task(work)
        task.add_done_callback(self._note_background_end)
        return task

    def _note_background_end(self, task: "asyncio.Task[None]") -> None:
        if task.cancelled() or task.exception() is None:
            return
        failed = self._background_failed
        if failed is not None and not failed.done():
            failed.set_result(task.exception())  # type: ignore[arg-type]

    async def run(self, stop: asyncio.Event) -> None:
        failed = self._background_failed = asyncio.get_running_loop().create_future()
        await ensure_streams(self.bus.js)
        await ensure_buckets(self.bus.js)
        snapshots = await self.bus.js.key_value(DISPATCHER_BUCKET)
        await self._load(snapshots)
        for job in list(self.state.jobs.values()):
            if job.expanding:  # a big job's queueing, cut short by the last stop
                self._start_expansion(job)
        for cancellation in list(self.state.cancellations.values()):  # cut short likewise
            self._start_cancellation(cancellation)
        batches = event_batches(self.bus, start_seq=self.state.last_seq + 1, stop=stop)
        lost_check = self._background(self._lost_worker_loop(stop))
        progress = self._background(self._progress_loop(snapshots, stop))
        schedules = ScheduleFirer(self.bus, on_set_aside=self._count_set_aside)
        firing = self._background(schedules.run(stop))
        log.info("dispatcher started at log sequence %d", self.state.last_seq + 1)
        applying = asyncio.create_task(self._apply_log(batches))
        try:
            await asyncio.wait({applying, failed}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                log.error("dispatcher stopping: a background task failed: %r", failed.result())
                raise failed.result()
            await applying
        finally:
            applying.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await applying
            background = [*self._expansions.values(), *self._cancelling.values()]
            for helper in (lost_check, progress, firing, *background):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await helper
            if self._dirty:
                with contextlib.suppress(Exception):
                    await self._outbox.settle()
                    await self._save(snapshots)

    async def _apply_log(self, batches: AsyncGenerator[list[SourceItem], None]) -> None:
        async with contextlib.aclosing(batches):
            async for batch in batches:
                async with self._applying:
                    for entry in batch:
                        await self._apply(entry)
                    await self._outbox.settle()

    async def _load(self, snapshots: "nats.js.kv.KeyValue") -> None:
        try:
            entry = await snapshots.get(STATE_KEY)
        except nats.js.errors.KeyNotFoundError:
            return
        if entry.value:
            self.state = load_state(entry.value)

    async def _save(self, snapshots: "nats.js.kv.KeyValue") -> None:
        """A snapshot only shortens the replay after a restart: one that fails in a server
        restart or a leader change is tried again at the next interval, not fatal."""
        try:
            await snapshots.put(STATE_KEY, dump_state(self.state))
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("snapshot: %s; trying again later", type(exc).__name__)
            return
        self._dirty = False

    async def _progress_loop(self, snapshots: "nats.js.kv.KeyValue", stop: asyncio.Event) -> None:
        """Publish how far the dispatcher has read (for `/readyz` and `/metrics`), each second
        it moved: a dispatcher that is stuck or stopped shows as behind the log. A failed
        write is only a stale reading: it is tried again, never the dispatcher's end."""
        saved: tuple[int, int] | None = None
        while not stop.is_set():
            if self._dirty:
                async with self._applying:
                    await self._save(snapshots)
            now = (self.state.last_seq, self.state.set_aside)
            if now != saved:
                progress = DispatcherProgress(last_seq=now[0], set_aside=now[1])
                try:
                    await snapshots.put(PROGRESS_KEY, encode(progress))
                    saved = now
                except Exception as exc:
                    log.warning("progress record: %s; trying again", type(exc).__name__)
            await sleep_unless_stopped(stop, PROGRESS_INTERVAL_S)

    async def _apply(self, entry: SourceItem) -> None:
        self.state.last_seq = entry.seq
        self._dirty = True
        self._follow_job_subject(entry)
        event = entry.event
        reason = str(entry.error) if event is None else _unusable(event, entry.subject)
        if event is None or reason is not None:
            await self._set_aside(entry, reason or "unusable", only_if_first=True)
            return
        try:
            await self._on_event(entry.seq, event)
        except POISON_ERRORS as exc:
            reason = f"cannot be acted on: {type(exc).__name__}: {exc}"
            await self._set_aside(entry, reason, only_if_first=False)

    def _count_set_aside(self) -> None:
        self.state.set_aside += 1
        self._dirty = True

    def _follow_job_subject(self, entry: SourceItem) -> None:
        """Whatever lands on an open job's subject (a foreign client's message too) moves the
        sequence its ending is fenced on, or the ending would lose to the fence forever."""
        job_id = job_of_subject(entry.subject)
        job = self.state.jobs.get(job_id) if job_id is not None else None
        if job is not None:
            job.job_seq = entry.seq

    async def _set_aside(self, entry: SourceItem, reason: str, *, only_if_first: bool) -> None:
        """Record an event that cannot be acted on, and move on. A job submission (one that
        names a valid job subject) is ended as `job.rejected`, so nothing waits for it; with
        `only_if_first`, only if it is the first message of its job: a bad copy of a known
        job's submission does not end that job."""
        self.state.set_aside += 1
        reason = reason[:MAX_REASON_LENGTH]
        log.warning("set aside seq %d on %s: %s", entry.seq, quote(entry.subject), reason)
        job_id = _job_of_submission(entry)
        if job_id is None:
            return
        if only_if_first:
            first = await self.bus.first_on_subject(entry.subject)
            if first is not None and first[0] != entry.seq:
                return
        await self._reject(job_id, entry.seq, reason)

    async def _on_event(self, seq: int, event: Event) -> None:
        self._track_workers(seq, event)
        # The most frequent first: a case whose class the event is not of costs ~0.1 µs.
        match event:
            case TaskSucceeded() | TaskChunkFinished() | TaskDeadLettered() | TaskCancelled():
                finished = self.state.on_task_ended(event)
                if finished is not None:
                    await self._end_job(finished)
            case TaskStarted() | TaskProgress() | TaskFailed():
                pass  # no change to a job
            case JobSubmitted() | JobTasksAdded() | JobSealed():
                await self._on_submission(seq, event)
            case TaskRequeued():
                await self._outbox.settle()
                await self._requeue(seq, event)
            case JobCancelled():
                await self._stop_expansion(event.job_id)
                await self._outbox.settle()
                await self._cancel_job(event)
                self.state.on_job_ended(event)
            case JobRejected():
                await self._stop_expansion(event.job_id)
                if event.job_id in self.state.jobs:
                    await self._purge_queued(event.job_id)
                self.state.on_job_ended(event)
            case JobCompleted() | JobFailed():
                self.state.on_job_ended(event)
            case _:
                pass

    async def _on_submission(
        self, seq: int, event: JobSubmitted | JobTasksAdded | JobSealed
    ) -> None:
        """A job, whole in its `job.submitted`, or streamed: header, batches, seal."""
        match event:
            case JobSubmitted():
                job = self.state.on_job_submitted(seq, event)
                if job is not None and job.sealed:
                    await self._queue_job(job, event)
            case JobTasksAdded():
                problem = self.state.on_tasks_added(event)
                if problem is not None:
                    await self._reject(event.job_id, seq, problem)
            case JobSealed():
                job = self.state.jobs.get(event.job_id)
                if job is None or job.sealed:
                    return  # an ended job's, or a repeat
                problem = self.state.on_sealed(event)
                if problem is not None:
                    await self._reject(event.job_id, seq, problem)
                else:
                    await self._queue_job(job, None)

    def _track_workers(self, seq: int, event: Event) -> None:
        """The workers watched for silence: those started, and those reported lost that are
        seen working again (so they can be reported lost again)."""
        workers, lost = self.state.workers, self.state.lost_workers
        # The most frequent first: a case whose class the event is not of costs ~0.1 µs.
        match event:
            case (
                TaskSucceeded()
                | TaskStarted()
                | TaskChunkFinished()
                | TaskFailed()
                | TaskProgress()
            ):
                if event.worker_id in lost:
                    log.info("worker %s, reported lost, is working again", event.worker_id)
                    workers[event.worker_id] = LiveWorker(
                        worker_id=event.worker_id,
                        worker_seq=lost.pop(event.worker_id),
                        started_at=event.at,
                    )
            case WorkerStarted():
                workers[event.worker_id] = _live_worker(seq, event)
                lost.pop(event.worker_id, None)
            case WorkerStopped() | WorkerForgotten():
                workers.pop(event.worker_id, None)
                lost.pop(event.worker_id, None)
            case WorkerLost():
                workers.pop(event.worker_id, None)
                lost[event.worker_id] = seq
                if len(lost) > MAX_LOST_WORKERS:  # the oldest reports are forgotten
                    del lost[next(iter(lost))]

    async def _queue_job(self, job: OpenJob, submitted: JobSubmitted | None) -> None:
        """Queue a sealed job's tasks: a small one's at once, from its `job.submitted`; a big
        or streamed one's in the background, read back from the log a batch at a time."""
        if submitted is not None and job.total <= INLINE_EXPANSION_MAX:
            expander = _expander(job)
            for message in [*expander.feed(0, submitted.tasks), *expander.finish()]:
                await self._send(self._outbox, job.queue, message)
            log.info("job %s: %d tasks queued on %s", job.job_id, job.total, job.queue)
        elif job.total > 0:
            job.expanding = True
            self._start_expansion(job)
        if job.done:
            await self._end_job(job)

    async def _send(self, outbox: _Outbox, queue: str, message: TaskMessage) -> None:
        """Send a task message; the task id is the message id, so a repeat inside the
        duplicate window is a no-op (and after it, fencing drops the rerun)."""
        sent = await self.bus.start_task_publish(queue, message, msg_id=message.task_id)
        again = functools.partial(self.bus.publish_task, queue, message, msg_id=message.task_id)
        outbox.add(sent, again)

    def _start_expansion(self, job: OpenJob) -> None:
        running = self._expansions.get(job.job_id)
        if running is None or running.done():
            self._expansions[job.job_id] = self._background(self._expand_from_log(job))

    async def _stop_expansion(self, job_id: str) -> None:
        expansion = self._expansions.pop(job_id, None)
        if expansion is not None and expansion is not asyncio.current_task():
            expansion.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expansion

    async def _expand_from_log(self, job: OpenJob) -> None:
        """Queue a job's tasks from `job.expanded` on, with at most EXPANSION_WINDOW messages
        unacknowledged: memory stays flat whatever the job's size. A failure is retried."""
        async with self._expansion_slots:
            try:
                await self._expand_window_by_window(job)
            except ValueError as exc:  # the job's own tasks cannot be queued
                await self._reject(job.job_id, job.submitted_seq, f"cannot queue its tasks: {exc}")
                return
            except Exception as exc:
                if not is_transient(exc) and not isinstance(exc, JobstreamError):
                    raise
                log.warning("job %s: queueing stopped (%s); trying again", job.job_id, exc)
                await asyncio.sleep(EXPANSION_RETRY_S)
                self._expansions.pop(job.job_id, None)
                if self.state.jobs.get(job.job_id) is job:  # not ended meanwhile
                    self._start_expansion(job)
                return
        self._expansions.pop(job.job_id, None)

    async def _expand_window_by_window(self, job: OpenJob) -> None:
        expander = _expander(job, start=job.expanded)
        window = _Outbox()
        started = job.expanded
        async for first_index, specs in self._tasks_in_log(job):
            for message in expander.feed(first_index, specs):
                await self._send(window, job.queue, message)
                if len(window) >= EXPANSION_WINDOW:
                    await window.settle()
                    job.expanded = expander.next_index
                    self._dirty = True
        for message in expander.finish():
            await self._send(window, job.queue, message)
        await window.settle()
        job.expanded, job.expanding = job.total, False
        self._dirty = True
        log.info("job %s: %d tasks queued on %s", job.job_id, job.total - started, job.queue)

    async def _tasks_in_log(self, job: OpenJob) -> AsyncIterator[tuple[int, list[TaskSpec]]]:
        """The job's tasks as the log holds them, with the index of each group's first: those
        of its `job.submitted`, then of each `job.tasks_added` up to `job.sealed`."""
        stop = asyncio.Event()
        batches = event_batches(
            self.bus,
            start_seq=job.submitted_seq,
            stop=stop,
            filter_subject=job_subject(job.job_id),
            # Batches of tasks are up to half a max_payload each: read few at a time.
            batch_max=TASK_BATCHES_READ_AHEAD,
        )
        submitted = False
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for item in batch:
                    match item.event:
                        case JobSubmitted() if not submitted:
                            submitted = True
                            yield 0, item.event.tasks
                            if item.event.sealed:
                                return
                        case JobTasksAdded() if submitted:
                            yield item.event.first_index, item.event.tasks
                        case JobSealed() | JobCancelled() | JobRejected() if submitted:
                            return
                        case _:
                            pass

    async def _reject(self, job_id: str, seq: int, reason: str) -> None:
        """End a job that cannot run, as `job.rejected`, and forget it."""
        log.warning("job %s rejected: %s", job_id, reason)
        job = self.state.jobs.pop(job_id, None)
        await self._stop_expansion(job_id)
        if job is not None:
            await self._purge_queued(job_id)
        rejected = JobRejected(
            id=derived_id("rejected", str(seq)),
            job_id=job_id,
            reason=reason[:MAX_REASON_LENGTH],
            rejected_seq=seq,
        )
        await self.bus.publish_event(rejected)

    async def _end_job(self, job: OpenJob) -> None:
        duration_s = (utc_now() - job.submitted_at).total_seconds()
        event: JobCompleted | JobFailed
        if job.dead_lettered:
            event = JobFailed(
                id=derived_id(job.job_id, "ended", str(job.job_seq)),
                job_id=job.job_id,
                succeeded=job.succeeded,
                dead_lettered=job.dead_lettered,
                cancelled=job.cancelled,
                duration_s=duration_s,
                reason=f"{job.dead_lettered} task(s) dead-lettered",
            )
        else:
            event = JobCompleted(
                id=derived_id(job.job_id, "ended", str(job.job_seq)),
                job_id=job.job_id,
                succeeded=job.succeeded,
                dead_lettered=job.dead_lettered,
                cancelled=job.cancelled,
                duration_s=duration_s,
            )
        sent = await self.bus.start_event_publish(event, expected_last_subject_seq=job.job_seq)
        self._outbox.add(sent, functools.partial(self._publish_job_end, event, job.job_seq))
        self.state.jobs.pop(job.job_id, None)
        log.info("job %s ended: %s", job.job_id, type(event).__name__)

    async def _publish_job_end(self, event: JobCompleted | JobFailed, job_seq: int) -> None:
        """Publish the ending fenced on the job subject's last sequence as this dispatcher read
        it. A message that landed there since (a foreign client's) moves the fence on; an
        ending already there (another dispatcher's, a cancel) stops it."""
        expected = job_seq
        while True:
            try:
                await self.bus.publish_event(event, expected_last_subject_seq=expected)
                return
            except ConflictError as exc:
                last = await self.bus.last_on_subject(job_subject(event.job_id))
                if last is None or isinstance(last[1], JOB_ENDINGS):
                    log.info("job %s was already ended", event.job_id)
                    return
                log.info("job %s: %s; fencing on the new last message", event.job_id, exc)
                expected = last[0]

    # --- dead letters given another round ---------------------------------------

    async def _requeue(self, seq: int, event: TaskRequeued) -> None:
        """Count the task as open again (re-opening its job if the job had ended) and queue it.

        The message id carries the requeue's log sequence: each requeue is queued once.
        """
        job = self.state.jobs.get(event.job_id)
        if job is None:
            job = await self._reopen(event)
            if job is None:
                log.warning("requeue of %s ignored: its job is not open", event.task_id)
                return
        else:
            job.dead_lettered = max(0, job.dead_lettered - 1)
        message = TaskMessage(
            job_id=event.job_id,
            task_id=event.task_id,
            kind=event.kind,
            args=event.args,
            max_attempts=event.max_attempts,
            timeout_s=event.timeout_s,
            attempts_before=event.attempts_before,
            level=level_of(event.priority),
        )
        await self.bus.publish_task(event.queue, message, msg_id=f"{event.task_id}@{seq}")
        log.info("task %s requeued", event.task_id)

    async def _reopen(self, event: TaskRequeued) -> OpenJob | None:
        """An ended job whose dead-lettered task was requeued is tracked again, from the
        counts its ending recorded."""
        last = await self.bus.last_on_subject(job_subject(event.job_id))
        if last is None:
            return None
        job_seq, ended = last
        if not isinstance(ended, JobFailed | JobCompleted):
            return None
        job = OpenJob(
            job_id=event.job_id,
            queue=event.queue,
            total=ended.succeeded + ended.dead_lettered + ended.cancelled,
            submitted_at=ended.at - timedelta(seconds=ended.duration_s),
            job_seq=job_seq,
            succeeded=ended.succeeded,
            dead_lettered=max(0, ended.dead_lettered - 1),
            cancelled=ended.cancelled,
        )
        self.state.jobs[event.job_id] = job
        return job

    # --- cancellation --------------------------------------------------------------

    async def _cancel_job(self, event: JobCancelled) -> None:
        """Purge the job's queued task messages now, then end every task that has not ended,
        in the background (the log goes on meanwhile).

        Each `task.cancelled` is fenced on the task's subject, so it never lands after a
        worker's ending; running tasks see it at their next lease tick and stop.
        """
        job = self.state.jobs.get(event.job_id)
        if job is None:
            return
        await self._purge_queued(job.job_id)
        cancellation = Cancellation(
            job_id=job.job_id, total=job.total, chunk_size=job.chunk_size, reason=event.reason
        )
        self.state.cancellations[job.job_id] = cancellation
        self._dirty = True
        self._start_cancellation(cancellation)

    def _start_cancellation(self, cancellation: Cancellation) -> None:
        running = self._cancelling.get(cancellation.job_id)
        if running is None or running.done():
            self._cancelling[cancellation.job_id] = self._background(
                self._end_cancelled_tasks(cancellation)
            )

    async def _end_cancelled_tasks(self, cancellation: Cancellation) -> None:
        """End a cancelled job's tasks window by window, saving how far it got; a failure
        is tried again from there."""
        job_id, size = cancellation.job_id, cancellation.chunk_size
        window = size * max(1, CANCEL_WINDOW // size)
        try:
            while cancellation.done < cancellation.total:
                end = min(cancellation.total, cancellation.done + window)
                if size > 1:
                    await self._cancel_chunks(
                        job_id, size, cancellation.done, end, cancellation.reason
                    )
                else:
                    indexes = range(cancellation.done, end)
                    await self._cancel_tasks(job_id, indexes, cancellation.reason)
                cancellation.done = end
                self._dirty = True
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("job %s: cancelling stopped (%s); trying again", job_id, exc)
            await asyncio.sleep(EXPANSION_RETRY_S)
            self._cancelling.pop(job_id, None)
            self._start_cancellation(cancellation)
            return
        self.state.cancellations.pop(job_id, None)
        self._cancelling.pop(job_id, None)
        self._dirty = True
        log.info("job %s cancelled: its %d tasks ended", job_id, cancellation.total)

    async def _purge_queued(self, job_id: str) -> None:
        """Remove the job's task messages that no worker has taken."""
        await self._outbox.settle()
        for subject in job_queue_purge_subjects(job_id):
            await with_retry(
                functools.partial(self.bus.js.purge_stream, TASKS_STREAM, subject=subject),
                what="purge",
            )

    async def _cancel_tasks(self, job_id: str, indexes: range, reason: str) -> None:
        task_ids = [task_id_for(job_id, index) for index in indexes]
        await self._cancel_task_ids(job_id, task_ids, reason)

    async def _cancel_task_ids(self, job_id: str, task_ids: list[str], reason: str) -> None:
        for start in range(0, len(task_ids), CANCEL_CONCURRENCY):
            chunk = task_ids[start : start + CANCEL_CONCURRENCY]
            await asyncio.gather(*(self._cancel_task(job_id, t, reason) for t in chunk))

    async def _cancel_chunks(
        self, job_id: str, chunk_size: int, start: int, end: int, reason: str
    ) -> None:
        """Cancel each chunk from task `start` to `end` on its own subject (fenced, so never
        after its run recorded an end), then its tasks; of a chunk that ran, only the failed
        tasks (they went on alone)."""
        for first in range(start, end, chunk_size):
            indexes = range(first, min(first + chunk_size, end))
            chunk_id = chunk_id_for(job_id, first)
            ran = await self._cancel_chunk(job_id, chunk_id, reason)
            if ran is None:
                await self._cancel_tasks(job_id, indexes, reason)
            else:
                await self._cancel_task_ids(job_id, [f.task_id for f in ran.failed], reason)

    async def _cancel_chunk(
        self, job_id: str, chunk_id: str, reason: str
    ) -> TaskChunkFinished | None:
        """Record the chunk cancelled, unless it ran: then return its run."""
        subject = task_event_subject(job_id, chunk_id)
        while True:
            last = await self.bus.last_on_subject(subject)
            if last is not None and isinstance(last[1], TaskChunkFinished):
                return last[1]
            if last is not None and isinstance(last[1], TaskCancelled):
                return None
            cancelled = TaskCancelled(
                id=derived_id(chunk_id, "cancelled"), job_id=job_id, task_id=chunk_id, reason=reason
            )
            try:
                await self.bus.publish_event(
                    cancelled, expected_last_subject_seq=last[0] if last is not None else 0
                )
                return None
            except ConflictError:
                continue  # a worker wrote meanwhile: look again

    async def _cancel_task(self, job_id: str, task_id: str, reason: str) -> None:
        subject = task_event_subject(job_id, task_id)
        while True:
            last = await self.bus.last_on_subject(subject)
            if last is not None and isinstance(last[1], TERMINAL_TASK_EVENTS):
                return
            cancelled = TaskCancelled(
                id=derived_id(task_id, "cancelled"), job_id=job_id, task_id=task_id, reason=reason
            )
            try:
                await self.bus.publish_event(
                    cancelled, expected_last_subject_seq=last[0] if last is not None else 0
                )
                return
            except ConflictError:
                continue  # a worker wrote meanwhile: look again

    # --- worker liveness --------------------------------------------------------

    async def _lost_worker_loop(self, stop: asyncio.Event) -> None:
        liveness = await self.bus.js.key_value(LIVENESS_BUCKET)
        interval = max(0.2, self.lease_s / 3)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            try:
                await self._check_workers(liveness)
                await self._abort_stale_submissions()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("liveness check: %s", type(exc).__name__)

    async def _abort_stale_submissions(self) -> None:
        """End as rejected a streamed job not sealed within the submit timeout (its submitter
        died, or gave up). Fenced: a batch or seal that lands first wins, and the job is
        looked at again next time."""
        now = utc_now()
        for job in list(self.state.jobs.values()):
            if job.sealed or (now - job.submitted_at).total_seconds() <= self.submit_timeout_s:
                continue
            aborted = JobRejected(
                id=derived_id(job.job_id, "aborted", str(job.job_seq)),
                job_id=job.job_id,
                reason=f"submission not sealed within {self.submit_timeout_s:g} s",
                rejected_seq=job.submitted_seq,
            )
            try:
                await self.bus.publish_event(aborted, expected_last_subject_seq=job.job_seq)
                log.warning("job %s aborted: %s", job.job_id, aborted.reason)
            except ConflictError:
                pass

    async def _check_workers(self, liveness: "nats.js.kv.KeyValue") -> None:
        now = time.time()
        for worker in list(self.state.workers.values()):
            last_seen, lease_s = await self._last_seen(liveness, worker)
            if now - last_seen <= 2 * lease_s:
                continue
            event = WorkerLost(
                id=derived_id(worker.worker_id, "lost", str(worker.worker_seq)),
                worker_id=worker.worker_id,
                last_seen=datetime.fromtimestamp(last_seen, tz=utc_now().tzinfo),
            )
            try:
                await self.bus.publish_event(event, expected_last_subject_seq=worker.worker_seq)
                log.warning("worker %s lost: silent for %.1fs", worker.worker_id, now - last_seen)
            except ConflictError:
                pass
            # Its own event, read back from the log, removes it from the live set; until then
            # the fence keeps a second report out.

    async def _last_seen(
        self, liveness: "nats.js.kv.KeyValue", worker: LiveWorker
    ) -> tuple[float, float]:
        """When the worker last renewed its liveness key, and the lease it runs with."""
        fallback = worker.started_at.timestamp(), self.lease_s
        try:
            entry = await liveness.get(worker.worker_id)
        except nats.js.errors.KeyNotFoundError:
            return fallback
        if not entry.value:
            return fallback
        try:
            record = decode_liveness(entry.value)
        except DecodeError:
            return fallback
        return record.at, record.lease_s


def _expander(job: OpenJob, *, start: int = 0) -> TaskExpander:
    return TaskExpander(
        job_id=job.job_id,
        max_attempts=job.max_attempts,
        timeout_s=job.timeout_s,
        chunk_size=job.chunk_size,
        start=start,
        level=job.level,
    )


def _job_of_submission(entry: SourceItem) -> str | None:
    """The job id of a set-aside event that is (or claims to be) a job submission on a
    valid job subject; None for anything else (a foreign message, an unknown event type)."""
    job_id = job_of_subject(entry.subject)
    if job_id is None:
        return None
    if isinstance(entry.event, JobSubmitted):
        return job_id
    try:
        claimed = msgspec.json.decode(entry.data, type=_Tagged)
    except msgspec.DecodeError:
        return None
    return job_id if claimed.type == JobSubmitted.__struct_config__.tag else None


class _Tagged(msgspec.Struct):
    type: object = None


def _unusable(event: Event, subject: str) -> str | None:
    """Why a decoded event cannot be acted on, if it cannot: ids or a queue name that are not
    subject tokens (a foreign writer's), for which no task, ending or report can be written,
    or a subject other than its ids' (its fences would be on the wrong subject)."""
    try:
        own_subject = subject_for(event)
        # As stored (a task event's with its job's bucket), or as published before the
        # events stream had its subject transform.
        if subject not in (stored_subject(own_subject), own_subject):
            return f"on {quote(subject)}, but its ids belong on {quote(own_subject)}"
        queue = getattr(event, "queue", None)
        if queue is not None:
            check_name(queue, NameKind.QUEUE)
    except ValueError as exc:
        return str(exc)
    if type(event) is JobSubmitted and event.task_count > MAX_TASKS_PER_JOB:
        return f"{event.task_count:,} tasks, over the limit of {MAX_TASKS_PER_JOB:,} per job"
    return None


def _live_worker(seq: int, event: WorkerStarted) -> LiveWorker:
    return LiveWorker(worker_id=event.worker_id, worker_seq=seq, started_at=event.at)
