"""Poison on the log: events a plain NATS client writes with oversized or wrong-typed fields,
one of every event type, and a job submitted with a 5,000-character queue. Each is set aside
(the dispatcher records `job.rejected` for a poisoned submission, the projector parks it), the
dispatcher and the projector keep their place across a SIGKILL while the poison waits, and a
normal job submitted afterwards completes within seconds."""

import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from jobstream.events import (
    Event,
    JobCompleted,
    JobRejected,
    JobSubmitted,
    TaskSpec,
    decode_event,
    encode,
)
from jobstream.services.stack import NatsServer
from tests.faults._harness import (
    Child,
    Processes,
    connected,
    events_of,
    query,
    read_log,
    submit,
    wait_for,
    wait_for_job_end,
    wait_for_worker_started,
    wait_until_projected,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

HUGE = "q" * 5000
# One valid event of every type, to be poisoned field by field.
_JOB = {"job_id": "poison", "at": "2026-12-01T00:00:00Z", "id": "E"}
_TASK = {**_JOB, "task_id": "poison-0", "worker_id": "w", "attempt": 1}
VALID_EVENTS: dict[str, dict[str, Any]] = {
    "job.submitted": {**_JOB, "tasks": [{"kind": "noop"}]},
    "job.cancelled": _JOB,
    "job.completed": {**_JOB, "succeeded": 1, "duration_s": 1.0},
    "job.failed": {**_JOB, "succeeded": 0, "dead_lettered": 1, "duration_s": 1.0},
    "job.rejected": {**_JOB, "reason": "r", "rejected_seq": 1},
    "job.tasks_added": {**_JOB, "batch": 0, "first_index": 0, "tasks": [{"kind": "noop"}]},
    "job.sealed": {**_JOB, "batches": 0, "task_count": 0},
    "task.started": {**_TASK, "lease_deadline": "2026-12-01T00:00:30Z"},
    "task.progress": {**_TASK, "fraction": 0.5},
    "task.succeeded": {**_TASK, "kind": "noop", "duration_s": 0.1},
    "task.failed": {**_TASK, "error": "e"},
    "task.dead_lettered": {**_TASK, "kind": "noop", "reason": "r", "attempts": 1},
    "task.requeued": {**_TASK, "kind": "noop"},
    "task.cancelled": _TASK,
    "task.chunk_finished": {**_TASK, "duration_s": 0.1},
    "worker.started": {
        **_JOB,
        "worker_id": "w",
        "host": "h",
        "pid": 1,
        "queues": ["default"],
        "concurrency": 1,
        "version": "0",
    },
    "worker.stopped": {**_JOB, "worker_id": "w"},
    "worker.lost": {**_JOB, "worker_id": "w"},
    "worker.forgotten": {**_JOB, "worker_id": "w"},
}


def _poisoned(event_type: str, index: int) -> list[tuple[str, bytes]]:
    """Two poisoned copies of an event type (an oversized id, a wrong-typed field), each on a
    valid subject of its own aggregate."""
    job_id = f"poison{index}"
    fields = {**VALID_EVENTS[event_type], "type": event_type, "job_id": job_id}
    if "task_id" in fields:
        fields["task_id"] = f"{job_id}-0"
    aggregate = event_type.split(".", maxsplit=1)[0]
    subject = {
        "job": f"evt.job.{job_id}",
        "task": f"evt.task.{job_id}.{job_id}-0",
        "worker": f"evt.worker.w{index}",
    }[aggregate]
    id_field = {"job": "job_id", "task": "task_id", "worker": "worker_id"}[aggregate]
    oversized = {**fields, id_field: "A" * 10_240}
    wrong_type = {**fields, "at": 12345, id_field: ["not", "a", "string"]}
    return [(subject, msgspec.json.encode(oversized)), (subject, msgspec.json.encode(wrong_type))]


async def _publish(url: str, messages: list[tuple[str, bytes]]) -> list[int]:
    """Publish as a plain NATS client would; the sequences."""
    foreign = await nats.connect(url, name="foreign")
    try:
        js = foreign.jetstream()
        return [(await js.publish(subject, payload)).seq for subject, payload in messages]
    finally:
        await foreign.close()


async def _set_aside_in(dispatcher: Child) -> set[int]:
    """The log sequences the dispatcher's log (all its runs) says it set aside."""
    return {int(seq) for seq in re.findall(r"set aside seq (\d+)", dispatcher.log_text())}


def test_every_event_type_is_covered() -> None:
    tags = {str(kind.__struct_config__.tag) for kind in typing.get_args(Event)}
    assert tags == set(VALID_EVENTS)
    for event_type, fields in VALID_EVENTS.items():
        decode_event(msgspec.json.encode({**fields, "type": event_type}))  # valid as given
        for _, payload in _poisoned(event_type, 0):
            with pytest.raises(ValueError):
                decode_event(payload)


def test_the_cli_refuses_a_5000_character_queue(nats_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobstream.cli", "submit", "--nats-url", nats_url, "--queue", HUGE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "queue" in result.stderr and "at most 64 characters" in result.stderr
    assert HUGE not in result.stderr and "Traceback" not in result.stderr


async def test_poison_is_set_aside_and_work_goes_on(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    url = nats_server.url
    data = tmp_path / "data"
    huge_queue = encode(JobSubmitted(job_id="hugequeue", queue=HUGE, tasks=[TaskSpec(kind="noop")]))
    poison = [("evt.job.hugequeue", huge_queue)]
    for index, event_type in enumerate(VALID_EVENTS):
        poison += _poisoned(event_type, index)
    with Processes(tmp_path / "logs") as procs:
        procs.watch("nats-server", nats_server.log_file)
        dispatcher = procs.dispatcher(url, data_dir=data)
        procs.worker("w1", url, data_dir=data)
        projector = procs.projector(url, database_url=database_url, data_dir=data)
        async with connected([url]) as bus:
            await wait_for_worker_started(bus, "w1")
            half = len(poison) // 2
            poison_seqs = await _publish(url, poison[:half])
            # Killed in the middle of the poison: some set aside, the rest still to come.
            await wait_for(
                lambda: _set_aside_in(dispatcher), timeout_s=10, what="the first set aside"
            )
            dispatcher.kill()
            projector.kill()
            poison_seqs += await _publish(url, poison[half:])
            dispatcher = procs.dispatcher(url, data_dir=data)
            projector = procs.projector(url, database_url=database_url, data_dir=data)

            job_id = await submit(url, data, "--kind", "sum", "--args", '{"a": 1, "b": 1}')
            ended = await wait_for_job_end(bus, job_id, timeout_s=20)
            await wait_until_projected(bus, database_url, timeout_s=30)
            procs.assert_running()
            log = await read_log(bus)

            async def all_set_aside() -> bool:
                return set(poison_seqs) <= await _set_aside_in(dispatcher)

            await wait_for(all_set_aside, timeout_s=10, what="every poison event set aside")

        assert isinstance(ended, JobCompleted) and ended.succeeded == 1, ended
        assert "maximum control line exceeded" not in nats_server.log_file.read_text()
        rejections = [e for e in events_of(log) if isinstance(e, JobRejected)]
        rejected_seqs = [e.rejected_seq for e in rejections]
        assert len(rejected_seqs) == len(set(rejected_seqs)), "a poison event rejected twice"
        # A poisoned submission that is its job's first message ends the job; a later bad
        # copy on the same subject does not.
        first_on_subject: dict[str, tuple[int, bytes]] = {}
        for seq, (subject, payload) in zip(poison_seqs, poison, strict=True):
            first_on_subject.setdefault(subject, (seq, payload))
        submissions = {
            seq
            for subject, (seq, payload) in first_on_subject.items()
            if b'"job.submitted"' in payload and subject.startswith("evt.job.")
        }
        assert set(rejected_seqs) == submissions
        assert {e.job_id for e in rejections} >= {"hugequeue", "poison0"}
        reason = next(e.reason for e in rejections if e.job_id == "hugequeue")
        assert "length <= 64" in reason and "$.queue" in reason, reason
        parked = await query(database_url, "SELECT seq FROM jobstream.rejected_events")
        assert set(poison_seqs) <= {row["seq"] for row in parked}
        statuses = await query(
            database_url,
            "SELECT job_id, status, error FROM jobstream.jobs WHERE job_id = ANY($1::text[])",
            ["hugequeue", "poison0", job_id],
        )
        by_job = {row["job_id"]: row for row in statuses}
        assert by_job[job_id]["status"] == "completed"
        assert by_job["hugequeue"]["status"] == "rejected"
        assert "queue" in by_job["hugequeue"]["error"]
        assert by_job["poison0"]["status"] == "rejected"
