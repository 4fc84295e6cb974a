"""`jobstream events show` and `events tail` against a real log: one job's history in order,
the live tail, the filters, and bad input said plainly."""

import asyncio
import json
import signal
import subprocess
import sys

from jobstream.events import (
    Bus,
    JobSubmitted,
    TaskFailed,
    TaskSpec,
    TaskSucceeded,
    ensure_streams,
    new_id,
)

TIMEOUT_S = 30


def _jobstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobstream.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _job(job_id: str) -> list[JobSubmitted | TaskSucceeded | TaskFailed]:
    return [
        JobSubmitted(job_id=job_id, tasks=[TaskSpec(kind="sum", args={"a": 1, "b": 2}, count=2)]),
        TaskFailed(
            job_id=job_id,
            task_id=f"{job_id}-0",
            worker_id="w1",
            attempt=1,
            error="boom",
            retryable=True,
            duration_s=0.1,
        ),
        TaskSucceeded(
            job_id=job_id,
            task_id=f"{job_id}-0",
            kind="sum",
            worker_id="w1",
            attempt=2,
            result={"sum": 3},
            duration_s=0.1,
        ),
        TaskSucceeded(
            job_id=job_id,
            task_id=f"{job_id}-1",
            kind="sum",
            worker_id="w1",
            attempt=1,
            result={"sum": 3},
            duration_s=0.1,
        ),
    ]


async def _publish_two_jobs(bus: Bus) -> tuple[str, str]:
    await ensure_streams(bus.js)
    mine, other = new_id(), new_id()
    for ours, theirs in zip(_job(mine), _job(other), strict=True):
        await bus.publish_event(ours)
        await bus.publish_event(theirs)
    return mine, other


async def test_show_prints_one_jobs_history_in_order(bus: Bus, nats_url: str) -> None:
    mine, _ = await _publish_two_jobs(bus)
    shown = await asyncio.to_thread(
        _jobstream, "events", "show", mine, "--json", "--nats-url", nats_url
    )
    assert shown.returncode == 0, shown.stderr
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [e["type"] for e in events] == [
        "job.submitted",
        "task.failed",
        "task.succeeded",
        "task.succeeded",
    ]
    assert {e["job_id"] for e in events} == {mine}

    pretty = await asyncio.to_thread(
        _jobstream, "events", "show", mine, "--type", "task.*", "--nats-url", nats_url
    )
    lines = pretty.stdout.splitlines()
    assert len(lines) == 3
    assert "task.failed" in lines[0] and '"error":"boom"' in lines[0]


async def test_tail_follows_new_events_until_interrupted(bus: Bus, nats_url: str) -> None:
    await _publish_two_jobs(bus)
    tail = _start(
        "events", "tail", "--last", "2", "--json", "--type", "task.succeeded",
        "--nats-url", nats_url,
    )  # fmt: skip
    try:
        assert tail.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(tail.stdout.readline), TIMEOUT_S)
        second = await asyncio.wait_for(asyncio.to_thread(tail.stdout.readline), TIMEOUT_S)
        assert [json.loads(line)["type"] for line in (first, second)] == ["task.succeeded"] * 2
        later = new_id()
        for event in _job(later):
            await bus.publish_event(event)
        live = [
            json.loads(await asyncio.wait_for(asyncio.to_thread(tail.stdout.readline), TIMEOUT_S))
            for _ in range(2)
        ]
        assert [(e["type"], e["job_id"]) for e in live] == [("task.succeeded", later)] * 2
    finally:
        tail.send_signal(signal.SIGINT)
        _, stderr = await asyncio.to_thread(tail.communicate, timeout=TIMEOUT_S)
    assert "Traceback" not in stderr


async def test_tail_takes_a_task_subject_as_published(bus: Bus, nats_url: str) -> None:
    """Task events are stored with their job's bucket after the subject they were published
    on; a pattern of the published subject still finds them."""
    mine, _ = await _publish_two_jobs(bus)
    for pattern, expected in (
        (f"evt.task.{mine}.{mine}-0", [f"{mine}-0"] * 2),
        (f"evt.task.{mine}.*", [f"{mine}-0", f"{mine}-0", f"{mine}-1"]),
        (f"evt.task.*.{mine}-1", [f"{mine}-1"]),
    ):
        tail = _start(
            "events", "tail", "--last", "20", "--json", "--subject", pattern,
            "--nats-url", nats_url,
        )  # fmt: skip
        try:
            assert tail.stdout is not None
            stdout = tail.stdout
            lines = [
                json.loads(await asyncio.wait_for(asyncio.to_thread(stdout.readline), TIMEOUT_S))
                for _ in expected
            ]
            assert [line["task_id"] for line in lines] == expected, pattern
        finally:
            tail.send_signal(signal.SIGINT)
            more, stderr = await asyncio.to_thread(tail.communicate, timeout=TIMEOUT_S)
        assert not more and "Traceback" not in stderr, (pattern, more, stderr)


async def test_bad_input_gets_a_clear_error(bus: Bus, nats_url: str) -> None:
    await ensure_streams(bus.js)
    unknown = await asyncio.to_thread(
        _jobstream, "events", "show", "nosuchjob", "--nats-url", nats_url
    )
    assert unknown.returncode == 1
    assert "nosuchjob" in unknown.stderr and "Traceback" not in unknown.stderr
    for args in (
        ["events", "show", "bad.id"],
        ["events", "show", "x" * 10_000],
        ["events", "tail", "--subject", "task.>"],
        ["events", "tail", "--subject", "evt.task.*.x", "--subject", "evt.task.y.*"],
        ["events", "tail", "--last", "-1"],
    ):
        result = await asyncio.to_thread(_jobstream, *args, "--nats-url", nats_url)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
