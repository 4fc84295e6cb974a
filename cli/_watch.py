"""`jobstream watch` and `submit --wait`: a job's progress live (a bar with its rate and time
left, on a terminal) until it ends, then its summary."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jobstream.cli._follow import END_STATUS, JobEnd, JobFollower
from jobstream.events import (
    Bus,
    Event,
    JobCompleted,
    JobFailed,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskSucceeded,
)


@dataclass
class JobTally:
    """A job's tasks by how they ended, and how the job ended."""

    job_id: str
    total: int | None = None
    succeeded: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    status: str = "running"
    reason: str = ""
    duration_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def ended(self) -> int:
        return self.succeeded + self.dead_lettered + self.cancelled

    @property
    def ok(self) -> bool:
        """The job completed and every task succeeded."""
        return self.status == "completed" and self.ended == self.succeeded

    def count(self, event: Event | None) -> int:
        """How many tasks `event` ended (a chunk's run ends several)."""
        match event:
            case TaskSucceeded():
                self.succeeded += 1
                return 1
            case TaskDeadLettered():
                self.dead_lettered += 1
                return 1
            case TaskCancelled():
                self.cancelled += 1
                return 1
            case TaskChunkFinished(results=results):
                self.succeeded += len(results)
                return len(results)
            case _:
                return 0

    def end(self, event: JobEnd) -> None:
        self.status = END_STATUS[type(event)]
        self.reason = getattr(event, "reason", "")
        if isinstance(event, JobCompleted | JobFailed):
            self.duration_s = event.duration_s
        else:
            self.duration_s = time.monotonic() - self.started

    def as_dict(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "tasks": self.total,
            "succeeded": self.succeeded,
            "dead_lettered": self.dead_lettered,
            "cancelled": self.cancelled,
            "duration_s": round(self.duration_s, 3),
            **({"reason": self.reason} if self.reason else {}),
        }

    def line(self) -> str:
        rate = self.ended / self.duration_s if self.duration_s > 0 else 0.0
        parts = [f"{self.succeeded:,} succeeded"]
        if self.dead_lettered:
            parts.append(f"{self.dead_lettered:,} dead-lettered")
        if self.cancelled:
            parts.append(f"{self.cancelled:,} cancelled")
        text = (
            f"job {self.job_id} {self.status}: {', '.join(parts)}"
            f" in {self.duration_s:.1f}s ({rate:,.0f} tasks/s)"
        )
        return text + (f"; {self.reason}" if self.reason else "")


async def watch_job(bus: Bus, job_id: str, *, show_progress: bool) -> JobTally:
    """Follow `job_id` until it ends; with `show_progress`, a live bar on stderr."""
    tally = JobTally(job_id)
    with _bar(show_progress) as update:

        def changed() -> None:
            update(follower.total, tally.ended)

        follower = JobFollower(bus, job_id, count=tally.count, on_change=changed)
        end = await follower.follow()
        tally.total = follower.total
        tally.end(end)
        update(follower.total, tally.ended)
    return tally


Update = Callable[[int | None, int], None]


def _no_bar(total: int | None, done: int) -> None:
    return None


@contextmanager
def _bar(shown: bool) -> Iterator[Update]:
    """A function that shows (total, done) on a live bar; one that does nothing if not
    `shown`."""
    if not shown:
        yield _no_bar
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = progress.add_task("tasks", total=None, rate="")
    started = time.monotonic()

    def update(total: int | None, done: int) -> None:
        elapsed = time.monotonic() - started
        rate = f"{done / elapsed:,.0f}/s" if elapsed > 0 and done else ""
        progress.update(task, total=total, completed=done, rate=rate)

    with progress:
        yield update
