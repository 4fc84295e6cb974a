"""The worker: pulls tasks from its queue's durable consumer, runs handlers, and appends
each attempt's outcome to the log, fenced so that a stale worker cannot record a second end."""

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from jobstream.events import (
    LIVENESS_BUCKET,
    MAX_RUNNING,
    TASKS_STREAM,
    TERMINAL_TASK_EVENTS,
    Bus,
    ChunkFailure,
    ChunkResult,
    ConflictError,
    Event,
    Header,
    Liveness,
    NameKind,
    RunningTask,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskMessage,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
    WorkerStarted,
    WorkerStopped,
    backoff_s,
    decode_task_message,
    derived_id,
    encode_liveness,
    ensure_worker_consumer,
    is_transient,
    new_id,
    safe_name,
    task_event_subject,
    utc_now,
)
from jobstream.services.worker._chunk import failed_in_chunk, run_items, split
from jobstream.services.worker._handlers import (
    Defer,
    HandlerRegistry,
    Retry,
    TaskContext,
    failure_text,
    is_permanent,
)
from jobstream.services.worker._levels import DEFAULT_SHARE_EVERY, LevelFeeds
from jobstream.services.worker._progress import ProgressSender, Report

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
DEFAULT_GRACE_S = 10.0
DEFAULT_RETRY_BASE_S = 1.0
DEFAULT_RETRY_CAP_S = 60.0
DEFAULT_STARTED_EVENT_AFTER_S = 0.25
FETCH_TIMEOUT_S = 0.1
# Pull requests expire soon so that a stopping worker is not sent tasks for long.
PULL_EXPIRES_S = 1.0
PULL_HEARTBEAT_S = 0.25
# How often the liveness record is written (at most: a third of the lease if shorter).
LIVENESS_INTERVAL_S = 1.0
# Room left in a worker id for "-<pid>-<suffix>".
HOST_TOKEN_MAX = 96
# Past this many deferrals, a task's `Defer` counts as a failed attempt: a task cannot be put
# back forever.
MAX_DEFERRALS = 100
# A task that waits (deferred, or for its retry) at most this long waits in the queue, as a
# message nak'ed with a delay, holding a slot of the queue's consumer meanwhile; a longer wait
# is a message schedule, which holds none (the server fires schedules a quarter of a second
# apart at the closest, too coarse for short waits).
HOLD_IN_QUEUE_MAX_S = 1.0


def _package_version() -> str:
    try:
        return version("jobstream")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    queue: str = "default"
    concurrency: int = DEFAULT_CONCURRENCY
    lease_s: float = 30.0
    grace_s: float = DEFAULT_GRACE_S
    retry_base_s: float = DEFAULT_RETRY_BASE_S
    retry_cap_s: float = DEFAULT_RETRY_CAP_S
    started_event_after_s: float = DEFAULT_STARTED_EVENT_AFTER_S
    failure_rate: float = 0.0
    extra_duration_s: float = 0.0
    worker_id: str | None = None
    # One slot in this many goes first to each lower priority level (see `LevelFeeds`).
    share_every: int = DEFAULT_SHARE_EVERY


class SimulatedFailure(RuntimeError):
    """The `--failure-rate` option's injected failure, like the original bots' settings."""


@dataclass
class _Attempt:
    """What one worker knows about the task it holds: the last log sequence on its subject."""

    msg: Msg
    task: TaskMessage
    attempt: int
    subject: str
    expected_seq: int
    cancelled: bool = False
    # Set once a second writer to the task's subject exists (`task.started` or progress
    # reports): publishes then take turns, each fenced on the sequence the last one left.
    lock: asyncio.Lock | None = None
    progress: ProgressSender | None = None
    # Set when the attempt ends: later reports (from a task its handler left running) are
    # dropped, never published after the attempt's last event.
    progress_closed: bool = False


class Worker:
    def __init__(
        self, bus: Bus, *, options: WorkerOptions, handlers: HandlerRegistry | None = None
    ) -> None:
        self.bus = bus
        self.options = options
        self.handlers = handlers or HandlerRegistry.default()
        self.worker_id = options.worker_id or f"{_host_token()}-{os.getpid()}-{new_id()[-6:]}"
        self._inflight: dict[asyncio.Task[None], Msg] = {}
        # What the liveness record lists: each message being handled and when it began, by
        # handling task (turned into `RunningTask`s once a tick, not once a task).
        self._running: dict[asyncio.Task[Any], tuple[TaskMessage, float]] = {}
        self.tasks_done = 0
        # Until the tasks stream is known to have message schedules, every wait is held.
        self._hold_in_queue_max_s = math.inf

    # --- lifecycle ---------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain gracefully."""
        js = self.bus.js
        await ensure_worker_consumer(js, self.options.queue, lease_s=self.options.lease_s)
        self._hold_in_queue_max_s = await self._longest_wait_held_in_queue_s()
        await self._publish(
            WorkerStarted(
                worker_id=self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=[self.options.queue],
                concurrency=self.options.concurrency,
                version=_package_version(),
            )
        )
        log.info("worker %s started on queue %s", self.worker_id, self.options.queue)
        await self.handlers.open(js, worker_id=self.worker_id)
        liveness = asyncio.create_task(self._liveness_loop(stop))
        try:
            await self._pull_loop(stop)
        finally:
            liveness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await liveness
            await self.handlers.close()
            await self._publish(WorkerStopped(worker_id=self.worker_id))
            await self._forget_liveness()
            log.info("worker %s stopped after %d tasks", self.worker_id, self.tasks_done)

    async def _longest_wait_held_in_queue_s(self) -> float:
        """`HOLD_IN_QUEUE_MAX_S`; every wait if the tasks stream has no message schedules (a
        server before 2.12 ignores the setting, and would keep a schedule as a plain message
        that no worker ever takes)."""
        info = await self.bus.js.stream_info(TASKS_STREAM)
        if info.config.allow_msg_schedules:
            return HOLD_IN_QUEUE_MAX_S
        log.warning(
            "the tasks stream has no message schedules (nats-server 2.12 or later): a waiting"
            " task holds a slot of the queue's consumer until its time"
        )
        return math.inf

    async def _shutdown(self, feeds: LevelFeeds) -> None:
        """Ask for no more tasks, let in-flight tasks finish within the grace period, then give
        back what is left, and what still arrives for requests outstanding, with a nak so
        another worker takes it at once."""
        await feeds.offer(0)
        deadline = time.monotonic() + self.options.grace_s
        if self._inflight:
            log.info(
                "draining %d in-flight tasks (grace %.1fs)",
                len(self._inflight),
                self.options.grace_s,
            )
            _, pending = await asyncio.wait(list(self._inflight), timeout=self.options.grace_s)
            for task in pending:
                task.cancel()
            for task in pending:
                msg = self._inflight.get(task)
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if msg is not None:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.nak()
            if pending:
                log.warning("gave back %d unfinished tasks", len(pending))
        # Outstanding pull requests end within their expiry; nak what they still bring.
        settle_by = max(deadline, time.monotonic()) + PULL_EXPIRES_S
        while (feeds.requested or feeds.buffered) and time.monotonic() < settle_by:
            for delivery in await feeds.take(feeds.buffered, FETCH_TIMEOUT_S):
                with contextlib.suppress(nats.errors.Error):
                    await delivery.msg.nak()
            if not feeds.buffered:
                await asyncio.sleep(FETCH_TIMEOUT_S)
        await feeds.stop()

    async def _open_feeds(self) -> LevelFeeds:
        feeds = LevelFeeds(
            self.bus.nc,
            queue=self.options.queue,
            expires_s=PULL_EXPIRES_S,
            heartbeat_s=PULL_HEARTBEAT_S,
            share_every=self.options.share_every,
        )
        await feeds.start()
        return feeds

    async def _pull_loop(self, stop: asyncio.Event) -> None:
        feeds = await self._open_feeds()
        try:
            await self._pull_until_stopped(feeds, stop)
        finally:
            await self._shutdown(feeds)

    async def _pull_until_stopped(self, feeds: LevelFeeds, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            free = self.options.concurrency - len(self._inflight)
            if free <= 0:
                await feeds.offer(0)
                await asyncio.wait(list(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                continue
            for delivery in await feeds.take(free, FETCH_TIMEOUT_S):
                task = asyncio.create_task(self._handle(delivery.msg, delivery.num_delivered))
                self._inflight[task] = delivery.msg
                task.add_done_callback(self._finished)
            lost = feeds.lost
            if not lost:
                failures = 0
                continue
            failures += 1
            for feed in lost:
                log.warning("pulling tasks: %s; pulling again", feed.lost)
                await feed.stop()
            await asyncio.sleep(backoff_s(failures, base_s=0.1, cap_s=2.0))
            with contextlib.suppress(Exception):
                await ensure_worker_consumer(
                    self.bus.js, self.options.queue, lease_s=self.options.lease_s
                )
            for feed in lost:
                await feed.restart()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("task handling crashed", exc_info=task.exception())

    async def _liveness_loop(self, stop: asyncio.Event) -> None:
        """An ephemeral liveness key with the messages in flight, refreshed every second (or
        at a third of the lease if shorter): never log events. One put per worker per tick,
        whatever the number of tasks."""
        kv = await self.bus.js.key_value(LIVENESS_BUCKET)
        interval = min(LIVENESS_INTERVAL_S, max(0.1, self.options.lease_s / 3))
        while not stop.is_set():
            try:
                await kv.put(self.worker_id, encode_liveness(self._liveness()))
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("liveness: %s", type(exc).__name__)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def _liveness(self) -> Liveness:
        running = [
            RunningTask(
                job_id=task.job_id,
                task_id=task.task_id,
                tasks=len(task.items) or 1,
                started_at=started_at,
            )
            for task, started_at in list(self._running.values())[:MAX_RUNNING]
        ]
        return Liveness(
            at=time.time(), lease_s=self.options.lease_s, queue=self.options.queue, running=running
        )

    async def _forget_liveness(self) -> None:
        """Remove the key on a graceful stop (after `worker.stopped`: the fence on that event
        keeps the dispatcher from reporting this worker lost meanwhile)."""
        try:
            kv = await self.bus.js.key_value(LIVENESS_BUCKET)
            await kv.delete(self.worker_id)
        except Exception as exc:  # its TTL clears it anyway
            log.warning("liveness key left behind: %s", type(exc).__name__)

    # --- one task ------------------------------------------------------------

    async def _handle(self, msg: Msg, num_delivered: int) -> None:
        try:
            task = decode_task_message(msg.data)
            subject = task_event_subject(task.job_id, task.task_id)
        except ValueError as exc:  # a DecodeError, or ids that cannot be subject tokens
            log.error("malformed task message on %s, dropped: %s", msg.subject, exc)
            await msg.term()
            return
        if task.retry_at is not None and not _fired_by_schedule(msg):
            # Queued with a wait the queue holds (or by an older worker): the first delivery
            # only waits, and is not an attempt.
            wait_s = (task.retry_at - utc_now()).total_seconds()
            if wait_s > self._hold_in_queue_max_s:
                seq = msg.metadata.sequence.stream
                await self._queue_later(task, msg_id=f"{task.task_id}@later-{seq}")
                await msg.ack()
                return
            if num_delivered == 1:
                await msg.nak(delay=max(0.0, wait_s))
                return
            num_delivered -= 1
        attempt = task.attempts_before + num_delivered
        state = _Attempt(
            msg=msg,
            task=task,
            attempt=attempt,
            subject=subject,
            expected_seq=0,
        )
        current = asyncio.current_task()
        if current is not None:
            self._running[current] = (task, time.time())
        try:
            if not await self._catch_up(state):
                return
            if task.items:
                await self._run_chunk(state)
                return
            if state.attempt > task.attempts_before + task.max_attempts:
                # The last delivery's lease ran out too: every attempt it was given has started.
                attempts = task.attempts_before + task.max_attempts
                await self._dead_letter(
                    state, "attempts exhausted (lease expired)", "", attempts=attempts
                )
                return
            await self._run(state)
        except ConflictError as exc:
            await self._on_conflict(state, exc)
        finally:
            if current is not None:
                self._running.pop(current, None)

    async def _catch_up(self, state: _Attempt) -> bool:
        """On a redelivery, learn the subject's last sequence; False if the task already ended.

        A first delivery needs no look-up: its subject is empty, and the fence (expected
        sequence 0) proves it. A deferred task's may not be (its `task.started`).
        """
        if state.attempt == 1 and state.task.attempts_before == 0 and not state.task.deferrals:
            return True
        last = await self.bus.last_on_subject(state.subject)
        if last is None:
            return True
        seq, event = last
        if isinstance(event, TERMINAL_TASK_EVENTS):
            log.info("task %s already ended (%s); acking", state.task.task_id, type(event).__name__)
            if isinstance(event, TaskChunkFinished):
                await self._split(state, event.failed, event.attempt)  # again: it may not have
            await state.msg.ack()
            return False
        state.expected_seq = seq
        return True

    async def _run(self, state: _Attempt) -> None:
        task = state.task
        ctx = TaskContext(
            job_id=task.job_id,
            task_id=task.task_id,
            attempt=state.attempt,
            max_attempts=task.attempts_before + task.max_attempts,
            worker_id=self.worker_id,
            deferrals=task.deferrals,
            report_progress=functools.partial(self._report_progress, state),
        )
        started = time.monotonic()
        runner = asyncio.create_task(self._call_handler(task, ctx))
        lease: asyncio.Task[None] | None = None
        try:
            lease = await self._lease_if_slow(state, runner)
            if lease is not None:
                _shared_subject(state)
                await self._publish_task_event(
                    state,
                    TaskStarted(
                        job_id=task.job_id,
                        task_id=task.task_id,
                        worker_id=self.worker_id,
                        attempt=state.attempt,
                        lease_deadline=utc_now() + timedelta(seconds=self.options.lease_s),
                    ),
                )
            result = await runner
        except ConflictError:
            runner.cancel()
            _abandon_progress(state)
            raise
        except asyncio.CancelledError:
            runner.cancel()
            _abandon_progress(state)
            if state.cancelled and not _being_cancelled():
                log.info("task %s cancelled while running; stopped", task.task_id)
                await state.msg.ack()
                return
            raise
        except Defer as exc:
            await _close_progress(state)
            if task.deferrals < MAX_DEFERRALS:
                await self._defer(state, exc)
            else:
                failure = Retry(f"deferred {task.deferrals} times, the last: {exc}")
                await self._on_failure(state, failure, time.monotonic() - started)
            return
        except Exception as exc:
            await _close_progress(state)
            await self._on_failure(state, exc, time.monotonic() - started)
            return
        finally:
            if lease is not None:
                lease.cancel()
        await _close_progress(state)
        await self._publish_task_event(
            state,
            TaskSucceeded(
                job_id=task.job_id,
                task_id=task.task_id,
                kind=task.kind,
                args=task.args,
                worker_id=self.worker_id,
                attempt=state.attempt,
                result=result,
                duration_s=time.monotonic() - started,
            ),
        )
        await state.msg.ack()
        self.tasks_done += 1

    async def _defer(self, state: _Attempt, defer: Defer) -> None:
        """Queue a copy of the task to run after `defer.delay_s`, with this attempt not
        counted, then ack this one (as a chunk's `_split` does with its failed tasks). The
        copy's message id names the attempt and the deferral: a retried publish is not
        doubled. Should the ack be lost, both copies run; the fence on the task's subject
        keeps the second end out of the log."""
        task = state.task
        not_counted = state.attempt - 1
        copy = msgspec.structs.replace(
            task,
            attempts_before=not_counted,
            max_attempts=task.attempts_before + task.max_attempts - not_counted,
            retry_at=utc_now() + timedelta(seconds=defer.delay_s),
            deferrals=task.deferrals + 1,
        )
        msg_id = f"{task.task_id}@deferred-{state.attempt}-{copy.deferrals}"
        await self._queue_later(copy, msg_id=msg_id)
        await state.msg.ack()
        log.debug("task %s deferred %.2fs: %s", task.task_id, defer.delay_s, defer)

    async def _retry_later(self, state: _Attempt, retry_at: datetime, delay_s: float) -> None:
        """The next attempt, after `delay_s`: this delivery nak'ed with that delay if the queue
        holds such a wait, else a copy that counts this attempt queued for `retry_at` and this
        delivery acked (as `_defer` does)."""
        if delay_s <= self._hold_in_queue_max_s:
            await state.msg.nak(delay=delay_s)
            return
        task = state.task
        copy = msgspec.structs.replace(
            task,
            attempts_before=state.attempt,
            max_attempts=task.attempts_before + task.max_attempts - state.attempt,
            retry_at=retry_at,
        )
        await self._queue_later(copy, msg_id=f"{task.task_id}@retry-{state.attempt}")
        await state.msg.ack()

    async def _queue_later(self, message: TaskMessage, *, msg_id: str) -> None:
        """Queue `message` to run at its `retry_at`: as a message schedule if the wait is longer
        than the queue holds, else now (its first delivery waits the rest)."""
        assert message.retry_at is not None
        queue = self.options.queue
        if (message.retry_at - utc_now()).total_seconds() > self._hold_in_queue_max_s:
            await self.bus.schedule_task(queue, message, msg_id=msg_id, at=message.retry_at)
        else:
            await self.bus.publish_task(queue, message, msg_id=msg_id)

    async def _lease_if_slow(
        self, state: _Attempt, runner: asyncio.Task[Any]
    ) -> asyncio.Task[None] | None:
        """Wait a tick for `runner`; if it still runs, extend its lease until it ends.

        Most tasks end within the tick: they need neither lease extension nor started."""
        quick_s = min(self.options.started_event_after_s, self.options.lease_s / 3)
        done, _ = await asyncio.wait({runner}, timeout=quick_s)
        if done:
            return None
        return asyncio.create_task(self._extend_lease(state, runner))

    async def _run_chunk(self, state: _Attempt) -> None:
        """Run a chunk's tasks, record them in one `task.chunk_finished`, then queue its failed
        tasks again one by one. A chunk whose every lease ran out fails all its tasks."""
        task = state.task
        results: list[ChunkResult] = []
        started = time.monotonic()
        if state.attempt > task.attempts_before + task.max_attempts:
            failures = failed_in_chunk(task, "attempts exhausted (lease expired)")
        else:
            runner = asyncio.create_task(
                run_items(task, state.attempt, self.worker_id, self._call_handler)
            )
            lease: asyncio.Task[None] | None = None
            try:
                lease = await self._lease_if_slow(state, runner)
                results, failures = await runner
            except asyncio.CancelledError:
                runner.cancel()
                if state.cancelled and not _being_cancelled():
                    log.info("chunk %s cancelled while running; stopped", task.task_id)
                    await state.msg.ack()
                    return
                raise
            finally:
                if lease is not None:
                    lease.cancel()
        await self._publish_task_event(
            state,
            TaskChunkFinished(
                job_id=task.job_id,
                task_id=task.task_id,
                worker_id=self.worker_id,
                attempt=state.attempt,
                duration_s=time.monotonic() - started,
                results=results,
                failed=failures,
            ),
        )
        await self._split(state, failures, state.attempt)
        await state.msg.ack()
        self.tasks_done += len(results)

    async def _split(self, state: _Attempt, failures: list[ChunkFailure], attempt: int) -> None:
        """Queue the chunk's failed tasks alone (message id: the task's, so a repeat is not
        doubled); dead-letter those with no attempt left or a permanent error."""
        retry_at = utc_now() + timedelta(seconds=self._backoff_s(attempt))
        again, ended = split(state.task, failures, attempt, retry_at=retry_at)
        for message in again:
            await self._queue_later(message, msg_id=f"{message.task_id}@split")
        for failure in ended:
            dead = TaskDeadLettered(
                id=derived_id(failure.task_id, "dead-lettered-in-chunk"),
                job_id=state.task.job_id,
                task_id=failure.task_id,
                kind=failure.kind,
                args=failure.args,
                reason=f"failed {attempt} attempts" if failure.retryable else "permanent error",
                attempts=attempt,
                last_error=failure.error,
                worker_id=self.worker_id,
            )
            with contextlib.suppress(ConflictError):  # the task was ended meanwhile
                await self.bus.publish_event(dead, expected_last_subject_seq=0)

    async def _call_handler(self, task: TaskMessage, ctx: TaskContext) -> Any:
        handler = self.handlers.get(task.kind)
        if self.options.extra_duration_s:
            await asyncio.sleep(self.options.extra_duration_s)
        if self.options.failure_rate and random.random() < self.options.failure_rate:
            raise SimulatedFailure(f"simulated failure (rate {self.options.failure_rate})")
        coroutine = handler(task.args, ctx)
        if task.timeout_s is None:
            return await coroutine
        try:
            return await asyncio.wait_for(coroutine, task.timeout_s)
        except TimeoutError:
            raise TimeoutError(f"timed out after {task.timeout_s}s") from None

    async def _extend_lease(self, state: _Attempt, runner: asyncio.Task[Any]) -> None:
        """The ack deadline is the heartbeat: extend it at a third of the lease while the
        handler runs, and look for a cancel of the task at the same tick."""
        interval = max(0.1, self.options.lease_s / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error):
                await state.msg.in_progress()
            try:
                last = await self.bus.last_on_subject(state.subject)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                continue
            if last is not None and isinstance(last[1], TaskCancelled):
                state.cancelled = True
                runner.cancel()
                return

    async def _on_failure(self, state: _Attempt, exc: Exception, duration_s: float) -> None:
        error = failure_text(exc)
        permanent = is_permanent(exc)
        last_attempt = state.attempt >= state.task.attempts_before + state.task.max_attempts
        delay_s = self._retry_delay_s(state.attempt, exc)
        will_retry = not permanent and not last_attempt
        next_retry_at = utc_now() + timedelta(seconds=delay_s) if will_retry else None
        await self._publish_task_event(
            state,
            TaskFailed(
                job_id=state.task.job_id,
                task_id=state.task.task_id,
                worker_id=self.worker_id,
                attempt=state.attempt,
                error=error,
                retryable=not permanent,
                next_retry_at=next_retry_at,
                duration_s=duration_s,
            ),
        )
        if will_retry:
            log.info(
                "task %s attempt %d failed (%s); retry in %.2fs",
                state.task.task_id,
                state.attempt,
                error,
                delay_s,
            )
            assert next_retry_at is not None
            await self._retry_later(state, next_retry_at, delay_s)
            return
        reason = "permanent error" if permanent else f"failed {state.attempt} attempts"
        await self._dead_letter(state, reason, error, attempts=state.attempt)

    def _retry_delay_s(self, attempt: int, exc: Exception) -> float:
        if isinstance(exc, Retry) and exc.delay_s is not None:
            return max(0.0, exc.delay_s)
        return self._backoff_s(attempt)

    def _backoff_s(self, attempt: int) -> float:
        """How long to wait before the attempt after `attempt`."""
        return backoff_s(
            attempt - 1, base_s=self.options.retry_base_s, cap_s=self.options.retry_cap_s
        )

    async def _dead_letter(
        self, state: _Attempt, reason: str, error: str, *, attempts: int
    ) -> None:
        await self._publish_task_event(
            state,
            TaskDeadLettered(
                job_id=state.task.job_id,
                task_id=state.task.task_id,
                kind=state.task.kind,
                args=state.task.args,
                reason=reason,
                attempts=attempts,
                last_error=error,
                worker_id=self.worker_id,
            ),
        )
        log.warning("task %s dead-lettered: %s %s", state.task.task_id, reason, error)
        await state.msg.term()

    async def _publish_task_event(self, state: _Attempt, event: Event) -> int:
        if state.lock is None:  # the one writer: no turns to take
            seq = await self.bus.publish_event(event, expected_last_subject_seq=state.expected_seq)
        else:
            async with state.lock:
                seq = await self.bus.publish_event(
                    event, expected_last_subject_seq=state.expected_seq
                )
        state.expected_seq = seq
        return seq

    def _report_progress(self, state: _Attempt, fraction: float, message: str) -> None:
        """`ctx.progress`: queue the report; a sender per task publishes it."""
        if state.progress_closed:
            return
        if state.progress is None:
            _shared_subject(state)
            state.progress = ProgressSender(functools.partial(self._send_progress, state))
        state.progress.offer(Report(fraction, message))

    async def _send_progress(self, state: _Attempt, report: Report) -> None:
        progress = TaskProgress(
            job_id=state.task.job_id,
            task_id=state.task.task_id,
            worker_id=self.worker_id,
            attempt=state.attempt,
            fraction=report.fraction,
            message=report.message,
        )
        await self._publish_task_event(state, progress)

    async def _on_conflict(self, state: _Attempt, exc: ConflictError) -> None:
        """Another worker moved the task on while this one held a stale lease.

        If the task has ended, the message is acked (it is done). Otherwise the current holder
        owns it: this worker neither acks nor naks, and its late result is dropped.
        """
        last = await self.bus.last_on_subject(state.subject)
        if last is not None and isinstance(last[1], TERMINAL_TASK_EVENTS):
            log.warning(
                "stale result for task %s dropped: the task already ended", state.task.task_id
            )
            await state.msg.ack()
        else:
            log.warning("stale lease on task %s: %s; result dropped", state.task.task_id, exc)

    async def _publish(self, event: Event) -> None:
        await self.bus.publish_event(event)


def _host_token() -> str:
    """The host name as a worker-id part: a dotted name (`web1.example.com`) gets dashes."""
    return safe_name(socket.gethostname(), NameKind.WORKER_ID)[:HOST_TOKEN_MAX]


def _fired_by_schedule(msg: Msg) -> bool:
    """The message was queued by the server at its time, from a schedule (`_queue_later`)."""
    return Header.SCHEDULER.value in (msg.headers or {})


def _shared_subject(state: _Attempt) -> None:
    """From now on, publishes on the task's subject take turns (see `_Attempt.lock`)."""
    if state.lock is None:
        state.lock = asyncio.Lock()


def _abandon_progress(state: _Attempt) -> None:
    state.progress_closed = True
    if state.progress is not None:
        state.progress.abandon()


async def _close_progress(state: _Attempt) -> None:
    """Before the attempt's last event: a report still waiting is dropped, one being sent is
    awaited (the last event is fenced on its sequence)."""
    state.progress_closed = True
    if state.progress is not None:
        await state.progress.close()


def _being_cancelled() -> bool:
    """True when the current task itself is being cancelled (a shutdown), not just its handler."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0
