"""SIGKILL a worker process: its tasks come back after the lease and end exactly once, the
dispatcher reports it lost within two lease periods, and a task killed on its last allowed
delivery is dead-lettered rather than lost."""

import signal
import time
from pathlib import Path

import pytest

from jobstream.events import (
    Bus,
    JobCompleted,
    JobFailed,
    TaskDeadLettered,
    TaskStarted,
    TaskSucceeded,
    WorkerLost,
)
from jobstream.services.stack import NatsServer
from tests.faults._harness import (
    LEASE_S,
    Processes,
    assert_each_task_ended_once,
    connected,
    events_of,
    query,
    queue_settled,
    read_log,
    seconds_since,
    submit,
    wait_for,
    wait_for_job_end,
    wait_for_worker_started,
    wait_until_projected,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

TASK_S = 1.0
TASKS = 16
# Scheduling slack on a loaded 2-core machine, on top of what the design promises.
SLACK_S = 2.0


async def running_tasks(bus: Bus, worker_id: str) -> set[str]:
    """Tasks the worker has started (in the log) that have not ended yet."""
    started: set[str] = set()
    ended: set[str] = set()
    for event in events_of(await read_log(bus)):
        if isinstance(event, TaskStarted) and event.worker_id == worker_id:
            started.add(event.task_id)
        elif isinstance(event, TaskSucceeded | TaskDeadLettered):
            ended.add(event.task_id)
    return started - ended


async def test_sigkill_worker_mid_task(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    url = nats_server.url
    data = tmp_path / "data"
    with Processes(tmp_path / "logs") as procs:
        procs.watch("nats-server", nats_server.log_file)
        dispatcher = procs.dispatcher(url, data_dir=data)
        projector = procs.projector(url, database_url=database_url, data_dir=data)
        victim = procs.worker("w1", url, data_dir=data)
        survivor = procs.worker("w2", url, data_dir=data)
        async with connected([url]) as bus:
            await wait_for_worker_started(bus, "w1", "w2")
            job_id = await submit(
                url,
                data,
                "--kind",
                "sleep",
                "--args",
                f'{{"seconds": {TASK_S}}}',
                "--count",
                str(TASKS),
            )
            await wait_for(lambda: running_tasks(bus, "w1"), timeout_s=30, what="w1 busy")
            victim.send(signal.SIGKILL)
            killed_at = time.time()

            ended = await wait_for_job_end(bus, job_id, timeout_s=30)
            await wait_for(
                lambda: _lost_reported(bus, "w1"), timeout_s=4 * LEASE_S + 10, what="w1 lost"
            )
            procs.assert_running(dispatcher, projector, survivor)
            log = await read_log(bus)
            assert isinstance(ended, JobCompleted) and ended.succeeded == TASKS

            # Every task ended exactly once; w1's tasks either ended before it died or were
            # redone by w2.
            ends = assert_each_task_ended_once(log, job_id, TASKS)
            assert all(isinstance(end, TaskSucceeded) for end in ends.values())
            recovery = []
            for started in events_of(log):
                if not (isinstance(started, TaskStarted) and started.worker_id == "w1"):
                    continue
                end = ends[started.task_id]
                assert isinstance(end, TaskSucceeded)
                if end.worker_id == "w1":
                    assert seconds_since(killed_at, end) <= 0, end
                    continue
                assert end.worker_id == "w2" and end.attempt >= 2, end
                recovery.append(seconds_since(killed_at, end))
            assert recovery, "w1 held no task when it was killed"
            # Redelivered within a lease of the kill, then run to its end.
            assert max(recovery) < LEASE_S + TASK_S + SLACK_S, recovery

            # Reported lost within two lease periods; the live worker never was.
            lost = [e for e in events_of(log) if isinstance(e, WorkerLost)]
            assert [e.worker_id for e in lost] == ["w1"], lost
            detected_after_s = seconds_since(killed_at, lost[0])
            # Silence of two leases, counted from its last liveness renewal (at most a third
            # of a lease before the kill), plus one check interval.
            assert LEASE_S < detected_after_s < 2 * LEASE_S + SLACK_S, detected_after_s

            # The read model agrees: w1 lost, every task succeeded once, the job completed.
            await wait_until_projected(bus, database_url, timeout_s=30)
        workers = await query(database_url, "SELECT worker_id, state FROM jobstream.workers")
        assert {row["worker_id"]: row["state"] for row in workers} == {
            "w1": "lost",
            "w2": "active",
        }
        tasks = await query(
            database_url,
            "SELECT state, count(*) AS n FROM jobstream.tasks WHERE job_id = $1 GROUP BY 1",
            job_id,
        )
        assert {row["state"]: row["n"] for row in tasks} == {"succeeded": TASKS}
        results = await query(
            database_url, "SELECT count(*) AS n FROM jobstream.results WHERE job_id = $1", job_id
        )
        assert results[0]["n"] == TASKS
    print(
        f"redone after w1's death: {len(recovery)}; all within {max(recovery):.2f}s; "
        f"reported lost after {detected_after_s:.2f}s"
    )


async def _lost_reported(bus: Bus, worker_id: str) -> bool:
    return any(
        isinstance(e, WorkerLost) and e.worker_id == worker_id
        for e in events_of(await read_log(bus))
    )


async def test_sigkill_on_last_delivery_dead_letters(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    url = nats_server.url
    data = tmp_path / "data"
    with Processes(tmp_path / "logs") as procs:
        procs.watch("nats-server", nats_server.log_file)
        dispatcher = procs.dispatcher(url, data_dir=data)
        first = procs.worker("w1", url, data_dir=data, concurrency=1)
        async with connected([url]) as bus:
            await wait_for_worker_started(bus, "w1")
            job_id = await submit(
                url, data, "--kind", "sleep", "--args", '{"seconds": 60}', "--max-attempts", "1"
            )
            await wait_for(lambda: running_tasks(bus, "w1"), timeout_s=30, what="w1 to start")
            first.send(signal.SIGKILL)
            killed_at = time.time()
            fresh = procs.worker("w2", url, data_dir=data, concurrency=1)

            ended = await wait_for_job_end(bus, job_id, timeout_s=LEASE_S + 30)
            # The message left the queue: terminated, not left to be redelivered forever.
            await wait_for(lambda: queue_settled(bus), timeout_s=10, what="an empty queue")
            procs.assert_running(dispatcher, fresh)
            log = await read_log(bus)

        assert isinstance(ended, JobFailed) and (ended.succeeded, ended.dead_lettered) == (0, 1)
        ends = assert_each_task_ended_once(log, job_id, 1)
        dead = ends[f"{job_id}-0"]
        assert isinstance(dead, TaskDeadLettered), dead
        assert "attempts exhausted" in dead.reason and "lease" in dead.reason, dead.reason
        assert dead.worker_id == "w2", dead
        # The fresh worker did not run the handler again: the one allowed attempt was used.
        started = [e for e in events_of(log) if isinstance(e, TaskStarted)]
        assert [e.worker_id for e in started] == ["w1"]
        assert seconds_since(killed_at, dead) < LEASE_S + SLACK_S + 2.0  # + w2's start-up
