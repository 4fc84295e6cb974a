"""Jobs of any size on a stock nats-server (1 MB max_payload): a tasks file streamed in
batches, all or nothing, idempotent by key, and a submission that stops halfway never runs."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from jobstream.cli._idempotency import idempotency_bucket_key
from jobstream.events import (
    IDEMPOTENCY_BUCKET,
    TASKS_STREAM,
    Bus,
    JobCompleted,
    JobRejected,
    JobSealed,
    JobSubmitted,
    JobTasksAdded,
    TaskSucceeded,
    job_subject,
)
from jobstream.services.api import create_app
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import Worker, WorkerOptions
from tests._serving import serving
from tests.faults._harness import (
    Processes,
    ndjson_task_counts,
    query,
    wait_for_job_end,
    wait_until_projected,
)
from tests.integration.test_worker_dispatcher import read_log, running

JOBSTREAM = [sys.executable, "-m", "jobstream.cli"]
FAST = WorkerOptions(concurrency=64)


def write_tasks(path: Path, count: int, *, bad_line: int | None = None) -> None:
    """`count` noop tasks with distinct args (no two lines alike: nothing merges)."""
    with path.open("w") as out:
        for index in range(count):
            if index + 1 == bad_line:
                out.write('{"kind": "noop", "args": {"i": oops}}\n')
                continue
            out.write(f'{{"kind": "noop", "args": {{"i": {index}, "pad": "{index:08d}"}}}}\n')


def submit(nats_url: str, cwd: Path, *args: str, stdin: bytes | None = None) -> "Submitted":
    result = subprocess.run(
        [*JOBSTREAM, "submit", "--nats-url", nats_url, "--json", *args],
        capture_output=True,
        timeout=300,
        cwd=cwd,
        input=stdin,
        check=False,
    )
    return Submitted(result.returncode, result.stdout.decode(), result.stderr.decode())


class Submitted:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def job_id(self) -> str:
        assert self.code == 0, self.stderr
        job_id: str = json.loads(self.stdout)["job_id"]
        return job_id

    @property
    def duplicate(self) -> bool:
        return bool(json.loads(self.stdout)["duplicate"])


async def tasks_queued(bus: Bus) -> int:
    info = await bus.js.stream_info(TASKS_STREAM)
    return info.state.messages


def assert_each_task_succeeded_once(log: Sequence[object], job_id: str, count: int) -> None:
    done = Counter(e.task_id for e in log if isinstance(e, TaskSucceeded) and e.job_id == job_id)
    assert len(done) == count, f"{len(done)} of {count} tasks succeeded"
    assert set(done.values()) == {1}, "a task succeeded twice"


@pytest.mark.timeout(600)
async def test_a_200000_task_file_streams_and_log_read_models_files_and_api_agree(
    bus: Bus, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.ndjson"
    write_tasks(tasks, 200_000)
    data = tmp_path / "data"
    assert bus.nc.max_payload == 1024 * 1024, "the test server must keep the stock limit"
    with Processes(tmp_path / "logs") as procs:
        procs.dispatcher(nats_url, data_dir=data)
        procs.worker("w1", nats_url, data_dir=data, concurrency=64)
        procs.worker("w2", nats_url, data_dir=data, concurrency=64)
        procs.projector(nats_url, database_url=database_url, data_dir=data)
        submitted = await asyncio.to_thread(submit, nats_url, tmp_path, "--tasks-file", str(tasks))
        job_id = submitted.job_id
        ended = await wait_for_job_end(bus, job_id, timeout_s=240)
        await wait_until_projected(bus, database_url, timeout_s=120)
        procs.assert_running()
    assert isinstance(ended, JobCompleted) and ended.succeeded == 200_000, ended
    log = await read_log(bus)
    batches = [e for e in log if isinstance(e, JobTasksAdded)]
    assert len(batches) > 5, "a job this size must travel in several batches"
    sealed = [e for e in log if isinstance(e, JobSealed)]
    assert [(s.task_count, s.batches) for s in sealed] == [(200_000, len(batches))]
    assert_each_task_succeeded_once(log, job_id, 200_000)
    results = await query(
        database_url,
        "SELECT count(*) AS n, count(DISTINCT task_id) AS tasks FROM jobstream.results"
        " WHERE job_id = $1 AND status = 'succeeded'",
        job_id,
    )
    assert (results[0]["n"], results[0]["tasks"]) == (200_000, 200_000)
    lines = ndjson_task_counts(data / "results", job_id)
    assert len(lines) == 200_000 and set(lines.values()) == {1}
    async with serving(create_app(database_url=database_url)) as api:
        shown = (await api.get(f"/jobs/{job_id}")).json()
    assert (shown["status"], shown["total_tasks"]) == ("completed", 200_000)
    assert shown["tasks"]["succeeded"] == 200_000


async def test_a_bad_line_rejects_the_whole_file_and_publishes_nothing(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.ndjson"
    write_tasks(tasks, 50_000, bad_line=30_001)
    before = await bus.stream_last_seq()
    result = await asyncio.to_thread(submit, nats_url, tmp_path, "--tasks-file", str(tasks))
    assert result.code == 2, result.stderr
    assert f"{tasks}:30001:" in result.stderr and "Traceback" not in result.stderr
    assert await bus.stream_last_seq() == before


async def test_a_bad_line_on_stdin_leaves_the_job_rejected_and_nothing_runnable(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.ndjson"
    write_tasks(tasks, 50_000, bad_line=40_001)
    async with running(Dispatcher(bus, lease_s=10).run):
        result = await asyncio.to_thread(
            submit, nats_url, tmp_path, "--tasks-file", "-", stdin=tasks.read_bytes()
        )
        assert result.code == 2, result.stderr
        assert "-:40001:" in result.stderr
        log = await read_log(bus)
        submitted = next(e for e in log if isinstance(e, JobSubmitted))
        assert not submitted.sealed
        last = await bus.last_on_subject(job_subject(submitted.job_id))
        assert last is not None and isinstance(last[1], JobRejected), last
        assert "40001" in last[1].reason
        await asyncio.sleep(1)
        assert await tasks_queued(bus) == 0


@pytest.mark.timeout(600)
async def test_a_submit_killed_halfway_runs_nothing_and_its_retry_finishes_once(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.ndjson"
    write_tasks(tasks, 100_000)
    key = "import-2026-12-01"
    command = [*JOBSTREAM, "submit", "--nats-url", nats_url, "--tasks-file", str(tasks)]
    process = await asyncio.create_subprocess_exec(
        *command,
        "--idempotency-key",
        key,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    job_id = await _job_of_key(bus, key)
    await _until_batches(bus, job_id, 2)
    os.kill(process.pid, signal.SIGKILL)
    await asyncio.wait_for(process.wait(), 10)
    async with running(Dispatcher(bus, lease_s=10).run, Worker(bus, options=FAST).run):
        await asyncio.sleep(1.5)
        last = await bus.last_on_subject(job_subject(job_id))
        assert last is not None and isinstance(last[1], JobTasksAdded), last
        assert await tasks_queued(bus) == 0, "a half-submitted job must not run"
        retried = await asyncio.to_thread(
            submit, nats_url, tmp_path, "--tasks-file", str(tasks), "--idempotency-key", key
        )
        assert retried.job_id == job_id and not retried.duplicate
        ended = await wait_for_job_end(bus, job_id, timeout_s=240)
        again = await asyncio.to_thread(
            submit, nats_url, tmp_path, "--tasks-file", str(tasks), "--idempotency-key", key
        )
    assert again.job_id == job_id and again.duplicate
    assert "already submitted" in again.stderr
    assert isinstance(ended, JobCompleted) and ended.succeeded == 100_000, ended
    log = await read_log(bus)
    assert_each_task_succeeded_once(log, job_id, 100_000)
    assert len([e for e in log if isinstance(e, JobSubmitted) and e.job_id == job_id]) == 1


async def test_two_concurrent_submits_with_one_key_give_one_job(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.ndjson"
    write_tasks(tasks, 30_000)
    args = ("--tasks-file", str(tasks), "--idempotency-key", "same")
    first, second = await asyncio.gather(
        asyncio.to_thread(submit, nats_url, tmp_path, *args),
        asyncio.to_thread(submit, nats_url, tmp_path, *args),
    )
    assert first.code == 0 and second.code == 0, (first.stderr, second.stderr)
    assert first.job_id == second.job_id
    log = await read_log(bus)
    assert len([e for e in log if isinstance(e, JobSubmitted)]) == 1
    assert len([e for e in log if isinstance(e, JobSealed)]) == 1


async def test_a_submission_never_sealed_is_aborted_after_the_timeout(bus: Bus) -> None:
    header = JobSubmitted(job_id="stale", tasks=[], sealed=False)
    seq = await bus.publish_event(header, expected_last_subject_seq=0)
    batch = JobTasksAdded(job_id="stale", batch=0, first_index=0, tasks=header.tasks)
    await bus.publish_event(batch, expected_last_subject_seq=seq)
    async with running(Dispatcher(bus, lease_s=0.6, submit_timeout_s=1).run):
        for _ in range(100):
            last = await bus.last_on_subject(job_subject("stale"))
            if last is not None and isinstance(last[1], JobRejected):
                break
            await asyncio.sleep(0.1)
    assert last is not None and isinstance(last[1], JobRejected), last
    assert "not sealed within 1 s" in last[1].reason
    assert await tasks_queued(bus) == 0


async def _job_of_key(bus: Bus, key: str) -> str:
    kv = await bus.js.key_value(IDEMPOTENCY_BUCKET)
    for _ in range(300):
        try:
            entry = await kv.get(idempotency_bucket_key(key))
            if entry.value:
                return entry.value.decode()
        except Exception:  # not created yet
            pass
        await asyncio.sleep(0.05)
    pytest.fail("the submit never claimed its key")


async def _until_batches(bus: Bus, job_id: str, batches: int) -> None:
    for _ in range(600):
        last = await bus.last_on_subject(job_subject(job_id))
        if last is not None and isinstance(last[1], JobTasksAdded) and last[1].batch >= batches - 1:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"no batch {batches - 1} of job {job_id}")


@pytest.mark.timeout(400)
async def test_a_dispatcher_killed_while_queueing_a_big_job_goes_on_without_doubles(
    bus: Bus, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with Processes(tmp_path / "logs") as procs:
        dispatcher = procs.dispatcher(nats_url, data_dir=data)
        submitted = await asyncio.to_thread(
            submit, nats_url, tmp_path, "--kind", "noop", "--count", "100000"
        )
        for _ in range(400):  # the background queueing has begun
            if await tasks_queued(bus) > 0:
                break
            await asyncio.sleep(0.02)
        dispatcher.kill()
        queued_at_kill = await tasks_queued(bus)
        assert 0 < queued_at_kill < 100_000, queued_at_kill
        procs.dispatcher(nats_url, data_dir=data)
        procs.worker("w1", nats_url, data_dir=data, concurrency=64)
        procs.worker("w2", nats_url, data_dir=data, concurrency=64)
        ended = await wait_for_job_end(bus, submitted.job_id, timeout_s=300)
        procs.assert_running()
    assert isinstance(ended, JobCompleted) and ended.succeeded == 100_000, ended
    assert_each_task_succeeded_once(await read_log(bus), submitted.job_id, 100_000)
    assert await tasks_queued(bus) == 0
