"""`ctx.progress(...)`: a handler's reports, rate-limited per task and sent in the background
so that the handler never waits on NATS."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0


class Report(NamedTuple):
    fraction: float
    message: str


class ProgressLimiter:
    """At most one report per `interval_s`; a report offered meanwhile replaces the one
    waiting (the latest value wins) and is due at the next tick."""

    def __init__(
        self,
        *,
        interval_s: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._pending: Report | None = None
        self._next_at = float("-inf")

    def offer(self, report: Report) -> None:
        self._pending = report

    def wait_s(self) -> float:
        """How long until the pending report may go (0: now)."""
        return max(0.0, self._next_at - self._clock())

    def take(self) -> Report | None:
        """The pending report if it may go now; taking it starts the next interval."""
        if self._pending is None or self.wait_s() > 0:
            return None
        report, self._pending = self._pending, None
        self._next_at = self._clock() + self._interval_s
        return report


class ProgressSender:
    """One task's reports, sent by a background task through `send` (the worker's fenced
    publish). `close` drops a report still waiting and waits for a send under way, so that
    the task's last event is fenced on the sequence that send left."""

    def __init__(
        self, send: Callable[[Report], Awaitable[None]], limiter: ProgressLimiter | None = None
    ) -> None:
        self._send = send
        self._limiter = limiter or ProgressLimiter()
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._run())

    def offer(self, report: Report) -> None:
        if self._closed:
            return
        self._limiter.offer(report)
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def abandon(self) -> None:
        """Stop at once, a send under way included (no event of this task follows)."""
        self._closed = True
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay_s = self._limiter.wait_s()
            if delay_s > 0 and not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_closed(), delay_s)
            if self._closed:
                return
            report = self._limiter.take()
            if report is None:
                continue
            try:
                await self._send(report)
            except Exception as exc:  # a fence lost to another worker, NATS gone too long
                log.warning("progress report dropped, no more sent: %s", exc)
                return

    async def _wait_closed(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
