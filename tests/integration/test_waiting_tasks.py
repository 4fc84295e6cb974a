"""A task that waits (deferred by its handler, or for its retry) holds no slot of its queue's
consumer: a crawl of one slow domain, whose pages nearly all wait for their turn, leaves the
queue to the other jobs on it.

Before waiting tasks were handed to the server's message schedules, each waited as a message
nak'ed with a delay, in the consumer's ack-pending set. This test, run on that tree (commit
4bc784f), measured: 1,807 pages waiting, ack-pending at its limit (200) from the crawl's first
seconds to its end, and the noop job, queued behind the waiting pages, 27.4 s to end (each
page had to come round first). With schedules: the noop job in 0.05-0.2 s, ack-pending at
most 76 (the two workers' 64 slots, and waits under a second), the domain at 50.0 pages/s.
"""

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from jobstream.bench._sites import Site, rate_per_s, serving
from jobstream.events import (
    LEVELS_HIGH_FIRST,
    TASKS_STREAM,
    Bus,
    PriorityLevel,
    TaskMessage,
    TaskSucceeded,
    due_consumer_config,
    due_consumer_name,
    new_id,
    task_event_subject,
    task_id_for,
    task_queue_subject,
    worker_consumer_config,
    worker_consumer_name,
)
from jobstream.services.stack import NatsServer
from tests.faults._harness import Processes, wait_for, wait_for_worker_started
from tests.integration.test_warm import queue_warm_tasks, start_workers, wait_for_ends

MAX_ACK_PENDING = 200
PAGES = 2_000
RATE_PER_S = 50.0
NOOP_TASKS = 100
NOOP_WITHIN_S = 10.0


async def _queue_state(bus: Bus, last_page_seq: int, fetched: int) -> str:
    """What the queue's consumers hold, for a failure's report."""
    lines = [f"last page seq {last_page_seq}, pages fetched {fetched}"]
    for info in await bus.js.consumers_info(TASKS_STREAM):
        delivered = info.delivered.stream_seq if info.delivered else None
        lines.append(
            f"{info.name}: delivered {delivered}, ack-pending"
            f" {info.num_ack_pending}, pending {info.num_pending}, waiting {info.num_waiting},"
            f" redelivered {info.num_redelivered}"
        )
    stream = await bus.js.stream_info(TASKS_STREAM)
    lines.append(f"stream: {stream.state.messages} messages, last seq {stream.state.last_seq}")
    return "\n".join(lines)


async def limit_ack_pending(bus: Bus, queue: str, *, lease_s: float) -> None:
    """The queue's consumers as `jobstream init` makes them, but with a small ack-pending limit
    (which the workers keep)."""
    normal_first = sorted(LEVELS_HIGH_FIRST, key=lambda level: level is not PriorityLevel.NORMAL)
    for level in normal_first:
        config = worker_consumer_config(
            queue, level, lease_s=lease_s, max_ack_pending=MAX_ACK_PENDING
        )
        await bus.js.add_consumer(TASKS_STREAM, config)
    due = due_consumer_config(queue, lease_s=lease_s, max_ack_pending=MAX_ACK_PENDING)
    await bus.js.add_consumer(TASKS_STREAM, due)


async def queue_noop_job(bus: Bus) -> tuple[str, list[str]]:
    job_id = new_id()
    ids = [task_id_for(job_id, index) for index in range(NOOP_TASKS)]
    for task_id in ids:
        message = TaskMessage(job_id=job_id, task_id=task_id, kind="noop")
        await bus.publish_task("default", message, msg_id=task_id)
    return job_id, ids


async def wait_for_tasks(bus: Bus, job_id: str, task_ids: list[str], *, timeout_s: float) -> None:
    left = set(task_ids)

    async def all_succeeded() -> bool:
        for task_id in list(left):
            last = await bus.last_on_subject(task_event_subject(job_id, task_id))
            if last is not None and isinstance(last[1], TaskSucceeded):
                left.discard(task_id)
        return not left

    await wait_for(
        all_succeeded, timeout_s=timeout_s, what=f"the noop job ({len(left)} tasks left)"
    )


class AckPending:
    """The most messages the queue's consumers (normal level and due tasks) had handed out and
    not had acked, sampled."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            pending = 0
            for name in (worker_consumer_name("default"), due_consumer_name("default")):
                info = await self._bus.js.consumer_info(TASKS_STREAM, name)
                pending += info.num_ack_pending or 0
            self.peak = max(self.peak, pending)
            await asyncio.sleep(0.1)

    def __enter__(self) -> "AckPending":
        self._task = asyncio.create_task(self._sample())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # its error, if sampling stopped on one
        self._task.cancel()


# In a pytest process of its own: run after the rest of the suite in one process, it timed out
# waiting for the pages to be handed out in 2 of 4 full CI runs (2026-12-02), and once alone,
# on a loaded machine. The cause was the test's: it waited for the stream's last sequence,
# which a page deferred while the pages were being queued had moved past the last page.
@pytest.mark.isolated
async def test_a_slow_domains_waiting_pages_leave_the_queue_to_other_jobs(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    site = Site()
    lease_s = 10.0
    await limit_ack_pending(bus, "default", lease_s=lease_s)
    async with serving(site):
        page = {"rate": RATE_PER_S, "concurrency": 2, "warm": False}
        tasks = [{"url": site.url(f"/p{i}"), **page} for i in range(PAGES)]
        with Processes(tmp_path / "logs") as processes, AckPending(bus) as ack_pending:
            workers = start_workers(processes, nats_server.url, tmp_path, 2)
            await wait_for_worker_started(bus, *workers)
            job_id, pages = await queue_warm_tasks(bus, tasks)
            # The last page's own sequence, not the stream's end: the workers defer pages
            # while they are queued (message schedules in the same stream), and a deferral
            # after the last page would never be handed out on the queue's subject.
            page_subject = task_queue_subject("default", job_id, level=PriorityLevel.NORMAL)
            last_page = await bus.js.get_last_msg(TASKS_STREAM, page_subject)
            assert last_page.seq is not None
            last_page_seq = last_page.seq

            async def every_page_handed_out() -> bool:
                info = await bus.js.consumer_info(TASKS_STREAM, worker_consumer_name("default"))
                handed_out: int = info.delivered.stream_seq
                return handed_out >= last_page_seq

            try:
                await wait_for(every_page_handed_out, timeout_s=120, what="every page handed out")
            except AssertionError:
                print(await _queue_state(bus, last_page_seq, len(site.requests)))
                raise
            await asyncio.sleep(1.0)  # the last ones deferred
            waiting = PAGES - len(site.requests)
            noop_job, noop_tasks = await queue_noop_job(bus)
            queued_at = time.monotonic()
            await wait_for_tasks(bus, noop_job, noop_tasks, timeout_s=NOOP_WITHIN_S)
            noop_s = time.monotonic() - queued_at
            print(f"{waiting} pages waiting; the noop job took {noop_s:.2f}s")
            print(f"ack-pending so far: at most {ack_pending.peak} (limit {MAX_ACK_PENDING})")
            assert waiting > PAGES / 2

            async def all_fetched() -> bool:
                return len(site.requests) >= PAGES

            await wait_for(all_fetched, timeout_s=PAGES / RATE_PER_S + 30, what="every page")
            ends = await wait_for_ends(bus, pages, timeout_s=30)
            print(f"ack-pending over the whole crawl: at most {ack_pending.peak}")
            print(f"the domain served {rate_per_s(site.times()):.2f} pages/s (asked {RATE_PER_S})")
            assert ack_pending.peak < waiting / 10
    assert all(isinstance(end, TaskSucceeded) for end in ends.values())
    assert set(Counter(request.path for request in site.requests).values()) == {1}
