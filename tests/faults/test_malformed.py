"""A foreign client publishes garbage straight onto jobstream's subjects: the worker logs
and terminates each bad task message (it leaves the queue), the dispatcher and the projector
skip each bad event, nothing crashes, and a real job submitted afterwards completes."""

from datetime import timedelta
from pathlib import Path

import nats
import pytest

from jobstream.events import (
    Bus,
    JobCompleted,
    JobSubmitted,
    TaskDeadLettered,
    TaskSpec,
    WorkerLost,
    WorkerStarted,
    encode,
    task_event_subject,
    utc_now,
)
from jobstream.services.stack import NatsServer
from tests.faults._harness import (
    LEASE_S,
    Processes,
    assert_each_task_ended_once,
    assert_no_task_ended_twice,
    connected,
    events_of,
    log_contains,
    query,
    queue_settled,
    read_log,
    submit,
    wait_for,
    wait_for_job_end,
    wait_for_worker_started,
    wait_until_projected,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

FOREIGN_JOB = "foreign"
# Payloads that are not task messages at all: the worker must terminate them.
BAD_TASK_MESSAGES = [
    b"not json at all",
    b"",
    b"[1, 2, 3]",
    b'{"job_id": 1, "task_id": null}',
    b'{"job_id": "j", "task_id": "t", "kind": "noop", "args": "not an object"}',
    # Well-formed JSON, but the ids cannot be subject tokens.
    b'{"job_id": "j", "task_id": "a.b", "kind": "noop"}',
    b'{"job_id": "j k", "task_id": "t", "kind": "noop"}',
]
# A well-formed message of an unknown kind: a permanent failure, dead-lettered.
UNKNOWN_KIND = b'{"job_id": "foreign", "task_id": "foreign-0", "kind": "no-such-kind"}'
# Payloads on event subjects that are not events: skipped by the dispatcher, parked by the
# projector in `rejected_events`.
UNDECODABLE_EVENTS = [
    ("evt.task.x.y", b"garbage"),
    ("evt.job.x", b"{}"),
    ("evt.job.x", b'{"type": "job.exploded", "job_id": "x"}'),
    ("evt.job.x", b'{"type": "job.submitted", "job_id": "x", "tasks": "many"}'),
    ("evt.job.x", b"\xff\xfe\x00"),
]
LONG_AGO = utc_now() - timedelta(hours=1)


def _worker_started(worker_id: str) -> bytes:
    return encode(
        WorkerStarted(
            worker_id=worker_id,
            host="h",
            pid=1,
            queues=["default"],
            concurrency=1,
            version="0",
            at=LONG_AGO,
        )
    )


# Valid events whose ids or queue cannot be subject tokens, so no task, ending or report
# can be written for them: the dispatcher must skip them rather than crash on them.
UNUSABLE_EVENTS = [
    ("evt.job.x", encode(JobSubmitted(job_id="bad.id", tasks=[TaskSpec(kind="noop")]))),
    (
        "evt.job.x",
        encode(JobSubmitted(job_id="x", queue="no queue", tasks=[TaskSpec(kind="noop")])),
    ),
    ("evt.worker.x", _worker_started("bad worker")),
]


async def test_garbage_on_every_subject_harms_nothing(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    url = nats_server.url
    data = tmp_path / "data"
    with Processes(tmp_path / "logs") as procs:
        procs.watch("nats-server", nats_server.log_file)
        dispatcher = procs.dispatcher(url, data_dir=data)
        worker = procs.worker("w1", url, data_dir=data)
        projector = procs.projector(url, database_url=database_url, data_dir=data)
        async with connected([url]) as bus:
            await wait_for_worker_started(bus, "w1")
            foreign = await nats.connect(url, name="foreign")
            try:
                js = foreign.jetstream()
                for index, payload in enumerate(BAD_TASK_MESSAGES):
                    subject = f"task.default.{FOREIGN_JOB}"
                    if index % 2:
                        await foreign.publish(subject, payload)  # core NATS, no ack
                    else:
                        await js.publish(subject, payload)
                await js.publish(f"task.default.{FOREIGN_JOB}", UNKNOWN_KIND)
                undecodable = [(await js.publish(s, p)).seq for s, p in UNDECODABLE_EVENTS]
                await foreign.publish("evt.job.x", b"core garbage")
                for subject, payload in UNUSABLE_EVENTS:
                    await js.publish(subject, payload)
                # A valid worker that never shows a sign of life: reporting it lost proves
                # the dispatcher's liveness check outlived the bad worker id above.
                await js.publish("evt.worker.ghost", _worker_started("ghost"))
                await foreign.flush()
            finally:
                await foreign.close()

            job_id = await submit(
                url, data, "--kind", "sum", "--args", '{"a": 1, "b": 1}', "--count", "20"
            )
            ended = await wait_for_job_end(bus, job_id, timeout_s=30)
            await wait_for(lambda: queue_settled(bus), timeout_s=15, what="bad messages gone")
            await wait_for(
                lambda: _ghost_lost(bus), timeout_s=4 * LEASE_S + 5, what="the ghost lost"
            )
            await wait_for(
                lambda: log_contains(worker, "malformed task message", len(BAD_TASK_MESSAGES)),
                timeout_s=10,
                what="the worker to report each bad task message",
            )
            await wait_until_projected(bus, database_url, timeout_s=30)
            procs.assert_running(dispatcher, worker, projector)
            log = await read_log(bus)

        assert isinstance(ended, JobCompleted) and ended.succeeded == 20, ended
        assert_each_task_ended_once(log, job_id, 20)
        assert_no_task_ended_twice(log)
        dead = [e for e in events_of(log) if isinstance(e, TaskDeadLettered)]
        assert [(e.task_id, e.reason) for e in dead] == [("foreign-0", "permanent error")]
        assert "no-such-kind" in dead[0].last_error
        skipped = dispatcher.log_text().count("set aside seq")
        assert skipped == len(UNDECODABLE_EVENTS) + 1 + len(UNUSABLE_EVENTS), skipped
        # The projector parked what it could not read, and carried on.
        rejected = await query(database_url, "SELECT seq FROM jobstream.rejected_events")
        assert set(undecodable) <= {row["seq"] for row in rejected}
        jobs = await query(
            database_url, "SELECT status FROM jobstream.jobs WHERE job_id = $1", job_id
        )
        assert [row["status"] for row in jobs] == ["completed"]


async def _ghost_lost(bus: Bus) -> bool:
    return any(
        isinstance(e, WorkerLost) and e.worker_id == "ghost" for e in events_of(await read_log(bus))
    )


async def test_garbage_on_a_running_tasks_subject(nats_server: NatsServer, tmp_path: Path) -> None:
    url = nats_server.url
    data = tmp_path / "data"
    with Processes(tmp_path / "logs") as procs:
        procs.watch("nats-server", nats_server.log_file)
        procs.dispatcher(url, data_dir=data)
        worker = procs.worker("w1", url, data_dir=data, concurrency=1)
        async with connected([url]) as bus:
            await wait_for_worker_started(bus, "w1")
            job_id = await submit(url, data, "--kind", "sleep", "--args", '{"seconds": 2}')
            task_id = f"{job_id}-0"

            async def started() -> bool:
                return await bus.last_on_subject(task_event_subject(job_id, task_id)) is not None

            await wait_for(started, timeout_s=30, what="the task to start")
            await bus.js.publish(task_event_subject(job_id, task_id), b"garbage")
            ended = await wait_for_job_end(bus, job_id, timeout_s=3 * LEASE_S + 5)
            procs.assert_running()
            log = await read_log(bus)
        assert isinstance(ended, JobCompleted), ended
        assert_each_task_ended_once(log, job_id, 1)
        assert worker.running
