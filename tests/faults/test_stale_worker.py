"""A worker frozen past its lease (SIGSTOP) loses its task to another worker; when it wakes
(SIGCONT), while the other runs the task or after it has ended it, its late result is fenced
out of the log."""

import signal
from pathlib import Path

import pytest

from jobstream.events import JobCompleted, TaskStarted, TaskSucceeded
from jobstream.services.stack import NatsServer
from tests.faults._harness import (
    LEASE_S,
    Processes,
    assert_each_task_ended_once,
    connected,
    events_of,
    log_contains,
    read_log,
    submit,
    wait_for,
    wait_for_job_end,
    wait_for_worker_started,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

TASK_S = 4.0


@pytest.mark.parametrize("wake", ["while_b_runs", "after_b_ended"])
async def test_stale_worker_result_is_dropped(
    wake: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    url = nats_server.url
    data = tmp_path / "data"
    with Processes(tmp_path / "logs") as procs:
        procs.watch("nats-server", nats_server.log_file)
        dispatcher = procs.dispatcher(url, data_dir=data)
        stale = procs.worker("A", url, data_dir=data, concurrency=1)
        async with connected([url]) as bus:

            async def started_by(worker_id: str) -> list[TaskStarted]:
                return [
                    e
                    for e in events_of(await read_log(bus))
                    if isinstance(e, TaskStarted) and e.worker_id == worker_id
                ]

            await wait_for_worker_started(bus, "A")
            job_id = await submit(
                url, data, "--kind", "sleep", "--args", f'{{"seconds": {TASK_S}}}'
            )
            await wait_for(lambda: started_by("A"), timeout_s=30, what="A to start the task")
            stale.send(signal.SIGSTOP)
            try:
                # B is started only now, so the first delivery was surely A's.
                fresh = procs.worker("B", url, data_dir=data, concurrency=1)
                taken = await wait_for(
                    lambda: started_by("B"), timeout_s=LEASE_S + 30, what="B to take the task"
                )
                assert taken[0].attempt == 2, taken
                if wake == "after_b_ended":
                    await wait_for_job_end(bus, job_id, timeout_s=TASK_S + 30)
            finally:
                stale.send(signal.SIGCONT)

            ended = await wait_for_job_end(bus, job_id, timeout_s=TASK_S + 30)
            # A woke with its handler done and its lease gone: wait until it has tried to
            # record its result and been refused.
            await wait_for(
                lambda: log_contains(stale, "stale"),
                timeout_s=10,
                what="A to report its result as stale",
            )
            procs.assert_running(dispatcher, stale, fresh)
            log = await read_log(bus)

        assert isinstance(ended, JobCompleted) and ended.succeeded == 1
        ends = assert_each_task_ended_once(log, job_id, 1)
        end = ends[f"{job_id}-0"]
        assert isinstance(end, TaskSucceeded) and end.worker_id == "B" and end.attempt == 2, end
        succeeded = [e for e in events_of(log) if isinstance(e, TaskSucceeded)]
        assert len(succeeded) == 1, succeeded
