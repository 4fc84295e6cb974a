"""`jobstream worker --processes 2`: a child SIGKILLed mid-job is restarted and its tasks come
back and end once; SIGTERM to the supervisor drains every child, and all exit 0."""

import os
import signal
from pathlib import Path

import pytest

from jobstream.events import Bus, JobCompleted, WorkerStarted, WorkerStopped, worker_subject
from jobstream.services.stack import NatsServer, RestartPolicy
from tests.faults._harness import (
    Processes,
    assert_each_task_ended_once,
    connected,
    read_log,
    submit,
    wait_for,
    wait_for_job_end,
)

pytestmark = pytest.mark.timeout(120)

TASKS = 12
TASK_S = 0.5
DRAIN_TIMEOUT_S = 30.0


async def started(bus: Bus, worker_id: str) -> WorkerStarted | None:
    last = await bus.last_on_subject(worker_subject(worker_id))
    return last[1] if last is not None and isinstance(last[1], WorkerStarted) else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_backoff_grows_and_is_capped() -> None:
    policy = RestartPolicy(backoff_base_s=0.5, backoff_cap_s=4.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


async def test_a_killed_child_is_restarted_and_sigterm_drains_all(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    url = nats_server.url
    with Processes(tmp_path / "logs") as processes:
        processes.dispatcher(url, data_dir=tmp_path)
        supervisor = processes.worker(
            "pool", url, data_dir=tmp_path, concurrency=2, extra=["--processes", "2"]
        )
        async with connected([url]) as watcher:
            first = {
                worker_id: await wait_for(
                    lambda worker_id=worker_id: started(watcher, worker_id),  # type: ignore[misc]
                    timeout_s=30,
                    what=f"{worker_id} to start",
                )
                for worker_id in ("pool-1", "pool-2")
            }
            job_id = await submit(
                url, tmp_path, "--kind", "sleep", "--args", f'{{"seconds": {TASK_S}}}',
                "--count", str(TASKS),
            )  # fmt: skip
            os.kill(first["pool-1"].pid, signal.SIGKILL)

            async def restarted() -> WorkerStarted | None:
                again = await started(watcher, "pool-1")
                return again if again is not None and again.pid != first["pool-1"].pid else None

            second = await wait_for(restarted, timeout_s=30, what="pool-1 to be restarted")
            end = await wait_for_job_end(watcher, job_id, timeout_s=60)
            assert isinstance(end, JobCompleted)
            assert_each_task_ended_once(await read_log(bus), job_id, TASKS)

            supervisor.send(signal.SIGTERM)
            assert supervisor.process.wait(DRAIN_TIMEOUT_S) == 0, supervisor.log_text()
            for pid in (second.pid, first["pool-2"].pid):
                assert not alive(pid)
            for worker_id in ("pool-1", "pool-2"):
                last = await watcher.last_on_subject(worker_subject(worker_id))
                assert last is not None and isinstance(last[1], WorkerStopped)
