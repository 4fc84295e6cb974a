"""`ctx.progress`: its checks, and the per-task rate limit (a clock injected, no sleeps)."""

import asyncio

import pytest

from jobstream.services.worker import TaskContext
from jobstream.services.worker._progress import ProgressLimiter, ProgressSender, Report


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def context(reports: list[tuple[float, str]]) -> TaskContext:
    return TaskContext(
        job_id="j",
        task_id="j-0",
        attempt=1,
        max_attempts=3,
        worker_id="w",
        report_progress=lambda fraction, message: reports.append((fraction, message)),
    )


def test_progress_checks_the_fraction_and_cuts_the_message() -> None:
    reports: list[tuple[float, str]] = []
    ctx = context(reports)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="within"):
            ctx.progress(bad)
    ctx.progress(1, "x" * 5000)
    ctx.progress(0.0)
    assert reports == [(1.0, "x" * 1000), (0.0, "")]
    # A task of a chunk has nowhere to report to: checked, then ignored.
    chunk_item = TaskContext(job_id="j", task_id="j-1", attempt=1, max_attempts=1, worker_id="w")
    chunk_item.progress(0.5)
    with pytest.raises(ValueError):
        chunk_item.progress(2)


def test_limiter_sends_at_most_one_report_per_interval_the_latest_winning() -> None:
    clock = Clock()
    limiter = ProgressLimiter(interval_s=1.0, clock=clock)
    assert limiter.take() is None  # nothing offered
    limiter.offer(Report(0.1, "a"))
    assert limiter.wait_s() == 0
    assert limiter.take() == Report(0.1, "a")
    limiter.offer(Report(0.2, "b"))
    limiter.offer(Report(0.3, "c"))
    clock.now += 0.4
    assert limiter.wait_s() == pytest.approx(0.6)
    assert limiter.take() is None
    clock.now += 0.6
    assert limiter.take() == Report(0.3, "c")
    assert limiter.take() is None  # sent once
    clock.now += 5
    limiter.offer(Report(0.9, "d"))
    assert limiter.take() == Report(0.9, "d")


async def test_sender_sends_the_first_at_once_and_drops_a_pending_one_on_close() -> None:
    sent: list[Report] = []
    clock = Clock()

    async def send(report: Report) -> None:
        sent.append(report)

    sender = ProgressSender(send, ProgressLimiter(interval_s=3600, clock=clock))
    sender.offer(Report(0.1, "first"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == [Report(0.1, "first")]
    sender.offer(Report(0.2, "waits an hour"))
    await sender.close()
    assert sent == [Report(0.1, "first")]
    sender.offer(Report(0.3, "after close"))
    assert sent == [Report(0.1, "first")]


async def test_close_waits_for_a_send_under_way() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    sent: list[Report] = []

    async def send(report: Report) -> None:
        started.set()
        await release.wait()
        sent.append(report)

    sender = ProgressSender(send)
    sender.offer(Report(0.5, ""))
    await started.wait()
    closing = asyncio.create_task(sender.close())
    await asyncio.sleep(0)
    assert not closing.done()
    release.set()
    await closing
    assert sent == [Report(0.5, "")]
