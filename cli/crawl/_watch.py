"""A crawl's job followed in the event log until it ends: live counts, and the pass's
summary from its tasks' own events (the log is the truth; no read model is needed)."""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from jobstream.cli._follow import END_STATUS, JobFollower
from jobstream.events import (
    Bus,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSealed,
    JobstreamError,
    JobSubmitted,
    JobTasksAdded,
    TaskCancelled,
    TaskDeadLettered,
    TaskSpec,
    TaskSucceeded,
    event_batches,
    job_subject,
)


@dataclass
class PassSummary:
    """One pass: its pages by outcome and its cache hits (of the pages answered)."""

    pass_number: int
    job_id: str
    status: str = "running"
    answered: int = 0
    failed: int = 0
    cancelled: int = 0
    broken: int = 0
    cache_hits: int = 0
    warmed: int = 0
    duration_s: float = 0.0
    reason: str = ""

    @property
    def pages(self) -> int:
        return self.answered + self.failed + self.cancelled

    @property
    def hit_ratio(self) -> float | None:
        return self.cache_hits / self.answered if self.answered else None

    @property
    def ok(self) -> bool:
        return self.status == "completed" and not self.failed and not self.cancelled

    def add(self, event: Event | None) -> bool:
        """Count a task's ending; True if it was one."""
        match event:
            case TaskSucceeded(result=result):
                self.answered += 1
                self._count_result(result)
            case TaskDeadLettered():
                self.failed += 1
            case TaskCancelled():
                self.cancelled += 1
            case _:
                return False
        return True

    def _count_result(self, result: Any) -> None:
        if not isinstance(result, dict):
            return
        status = result.get("status")
        if isinstance(status, int) and 400 <= status < 500:
            self.broken += 1
        if result.get("cache") == "HIT":
            self.cache_hits += 1
        warm = result.get("warm")
        if isinstance(warm, dict) and warm.get("cache") == "HIT":
            self.warmed += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "pass": self.pass_number,
            "job_id": self.job_id,
            "status": self.status,
            "pages": self.pages,
            "answered": self.answered,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "broken_links": self.broken,
            "cache_hits": self.cache_hits,
            "hit_ratio": None if self.hit_ratio is None else round(self.hit_ratio, 4),
            "warmed": self.warmed,
            "duration_s": round(self.duration_s, 3),
            **({"reason": self.reason} if self.reason else {}),
        }

    def line(self) -> str:
        ratio = "n/a" if self.hit_ratio is None else f"{self.hit_ratio:.1%}"
        text = (
            f"pass {self.pass_number}: {self.status}, {self.pages} pages: {self.answered}"
            f" answered ({self.broken} broken links), {self.failed} failed"
            f"{f', {self.cancelled} cancelled' if self.cancelled else ''}; cache hits {ratio}"
            f" ({self.cache_hits}/{self.answered}), warmed {self.warmed};"
            f" {self.duration_s:.1f}s (job {self.job_id})"
        )
        return text + (f"; {self.reason}" if self.reason else "")


async def watch_job(
    bus: Bus,
    summary: PassSummary,
    *,
    on_change: Callable[[PassSummary], None],
) -> PassSummary:
    """Follow the job's task events until it ends, counting into `summary`."""
    follower = JobFollower(
        bus, summary.job_id, count=summary.add, on_change=lambda: on_change(summary)
    )
    end = await follower.follow()
    summary.status = END_STATUS[type(end)]
    summary.reason = getattr(end, "reason", "")
    if isinstance(end, JobCompleted | JobFailed):
        summary.duration_s = end.duration_s
    return summary


async def _first_seq(bus: Bus, job_id: str) -> int:
    first = await bus.first_on_subject(job_subject(job_id))
    if first is None:
        raise JobstreamError(f"job {job_id} is not in the log")
    return first[0]


async def job_tasks(bus: Bus, job_id: str) -> AsyncGenerator[TaskSpec, None]:
    """The tasks of a job as it was submitted, read back from its subject in the log."""
    start_seq = await _first_seq(bus, job_id)
    stop = asyncio.Event()
    batches = event_batches(bus, start_seq=start_seq, stop=stop, filter_subject=job_subject(job_id))
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for item in batch:
                event = item.event
                if isinstance(event, JobSubmitted | JobTasksAdded):
                    for spec in event.tasks:
                        yield spec
                whole = isinstance(event, JobSubmitted) and event.sealed
                if whole or isinstance(event, JobSealed):
                    return
                if isinstance(event, JobRejected | JobCancelled):
                    raise JobstreamError(f"job {job_id} ended before it was whole")
