"""`submit --wait` and `watch` as a person sees them: in a terminal (a pty, through pexpect),
the live bar reaches the job's size, then the summary; the exit code says whether every task
succeeded."""

import asyncio
import json
import sys
from typing import Any

import pexpect

from jobstream.events import Bus, ensure_streams
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import running

TIMEOUT_S = 60


def _jobstream(*args: str) -> "pexpect.spawn[str]":
    # A wide terminal, as a person's: the bar and its columns on one line.
    return pexpect.spawn(
        sys.executable,
        ["-m", "jobstream.cli", *args],
        encoding="utf-8",
        timeout=TIMEOUT_S,
        dimensions=(40, 160),
    )


async def _ended(child: "pexpect.spawn[str]") -> tuple[str, int]:
    """All the child printed, and its exit status."""
    output = await asyncio.to_thread(child.read)
    await asyncio.to_thread(child.wait)
    child.close()
    assert child.exitstatus is not None
    return output, child.exitstatus


def _last_json(output: str) -> dict[str, Any]:
    """The JSON object on the last line (after the terminal's cursor codes, if any)."""
    last = output.strip().splitlines()[-1]
    value = json.loads(last[last.index("{") :])
    assert isinstance(value, dict)
    return value


async def test_submit_wait_shows_the_bar_to_the_end_then_the_summary(
    bus: Bus, nats_url: str
) -> None:
    await ensure_streams(bus.js)
    worker = Worker(bus, options=WorkerOptions(lease_s=10, concurrency=16))
    async with running(Dispatcher(bus, lease_s=10).run, worker.run):
        child = _jobstream(
            "submit", "--kind", "sleep", "--args", '{"seconds": 0.02}', "--count", "300",
            "--wait", "--nats-url", nats_url,
        )  # fmt: skip
        output, status = await _ended(child)
    assert status == 0, output
    assert "300/300" in output  # the bar's last state: every task
    assert "100%" in output
    assert "completed: 300 succeeded in" in output


async def test_a_job_with_dead_letters_ends_the_wait_with_exit_1(bus: Bus, nats_url: str) -> None:
    await ensure_streams(bus.js)
    worker = Worker(bus, options=WorkerOptions(lease_s=10, concurrency=4))
    async with running(Dispatcher(bus, lease_s=10).run, worker.run):
        child = _jobstream(
            "submit", "--kind", "fail", "--count", "3", "--max-attempts", "1", "--wait",
            "--json", "--nats-url", nats_url,
        )  # fmt: skip
        output, status = await _ended(child)
        summary = _last_json(output)
        assert status == 1, output
        assert (summary["status"], summary["dead_lettered"], summary["succeeded"]) == (
            "failed",
            3,
            0,
        )
        # `watch` on the ended job: the same summary at once, the same exit code.
        child = _jobstream("watch", summary["job_id"], "--json", "--nats-url", nats_url)
        output, status = await _ended(child)
    assert status == 1, output
    again = _last_json(output)
    assert again["dead_lettered"] == 3


async def test_watch_of_an_unknown_job_says_so(bus: Bus, nats_url: str) -> None:
    await ensure_streams(bus.js)
    child = _jobstream("watch", "nosuchjob", "--nats-url", nats_url)
    output, status = await _ended(child)
    assert status != 0
    assert "nosuchjob" in output
    assert "Traceback" not in output
